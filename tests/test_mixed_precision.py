"""Mixed precision (backend.gemm_precision, mixed_precision.LossScaler, AdamW.step(apply=...),
--precision): the 16-bit rounding against a reference built from frexp in float64, each
layer's bf16 / fp16 forward and backward against float32 within a stated bound, the layers
that must not change at all (no GEMM in them), dropout masks the same in every precision,
dynamic loss scaling (growth, back-off, a skipped AdamW or LAMB step leaving every bit alone), an fp16
gradient underflowing without scaling and surviving with it. Resume and
N processes = 1 under --precision are in test_recipe.py and test_distributed.py.
"""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import make_batch, tiny_config
from minibert import backend, layers, philox, train
from minibert.checkpoint import load_checkpoint
from minibert.classifier import BertForSequenceClassification
from minibert.mixed_precision import LossScaler
from minibert.model import BertForPreTraining
from minibert.optim import LAMB, AdamW
from minibert.train import TrainConfig, check_config, pretrain
from test_train import SMALL, small_tc, write_corpus

# unit roundoff (half the gap between 1 and the next value) and the format's limits
FORMATS = {"bf16": dict(bits=8, u=2.0 ** -8, tiny=2.0 ** -133, max=(2 - 2 ** -7) * 2.0 ** 127),
           "fp16": dict(bits=11, u=2.0 ** -11, tiny=2.0 ** -24, max=65504.0)}
ROUND = {"bf16": backend.round_bf16, "fp16": backend.round_fp16}


def host(a):
    return np.asarray(backend.to_host(a))


def reference_round(x, fmt):
    """x (float32, host) to the nearest value of the format, ties to even, by arithmetic in
    float64: the quantum at x is 2^(e - bits) for |x| in [2^(e-1), 2^e), never below the
    format's smallest subnormal; past max plus half a quantum, inf."""
    f = FORMATS[fmt]
    with np.errstate(invalid="ignore"):  # NaN payloads
        x = x.astype(np.float64)
    out = np.empty_like(x)
    finite = np.isfinite(x)
    _, e = np.frexp(np.where(finite, x, 1.0))
    q = np.maximum(np.ldexp(1.0, e - f["bits"]), f["tiny"])  # the quantum at x
    r = np.rint(x / q) * q  # np.rint rounds half to even
    half_over = f["max"] + np.ldexp(1.0, int(np.frexp(f["max"])[1]) - f["bits"]) / 2  # max + half its quantum
    r = np.where(np.abs(x) >= half_over, np.copysign(np.inf, x), r)
    out[finite] = r[finite]
    out[~finite] = x[~finite]
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2 ** 32 - 1), min_size=1, max_size=64), st.sampled_from(["bf16", "fp16"]))
def test_rounding_matches_the_reference_on_any_bit_pattern(words, fmt):
    bits = np.array(words + [0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x477FF000, 0x33000000, 0x7F800001],
                    dtype=np.uint32)  # ties to even both ways, the largest float, 65,520, 2^-25, a NaN
    x = bits.view(np.float32)  # (n,) every kind of float32: subnormal, inf, NaN
    with np.errstate(invalid="ignore"):
        got = host(ROUND[fmt](backend.to_device(x))).astype(np.float64)
    want = reference_round(x, fmt)
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all(), "a NaN must stay a NaN"
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.array_equal(np.signbit(got[~nan]), np.signbit(want[~nan]))  # -0 stays -0
    # the GEMMs' operand rounding (on the host: cpu_kernels' compiled pass) gives the plain
    # array code's bits, NaN payloads included, in C and F order
    plain = host(ROUND[fmt](backend.to_device(x))).view(np.uint32)
    with backend.gemm_precision(fmt):
        fast = host(backend.low(backend.to_device(x))).view(np.uint32)
        n = x.size - x.size % 2
        fast_t = host(backend.low(backend.to_device(x[:n].reshape(2, -1)).T)).T.reshape(-1).view(np.uint32)
    np.testing.assert_array_equal(fast, plain)
    np.testing.assert_array_equal(fast_t, plain[:n])


def gemm_bound(a, b, u):
    """Elementwise bound on |a~ @ b~ (float32 sums) - a @ b (exact)| for operands rounded with
    unit roundoff u: (2u + u^2) |a| @ |b| from the rounding, plus float32's summation error
    gamma_K (1 + u)^2 |a| @ |b| (K the inner size; Higham, Accuracy and Stability, 3.5)."""
    K = a.shape[-1]
    g = K * 2.0 ** -24 / (1 - K * 2.0 ** -24)
    return (2 * u + u * u + g * (1 + u) ** 2) * (np.abs(a) @ np.abs(b))


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "fp16"])
def test_linear_forward_and_backward_within_the_rounding_bound(fmt):
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (3, 5, 24)).astype(np.float32)  # (B, T, IN), normal range for fp16
    w = rng.uniform(-2, 2, (24, 16)).astype(np.float32)  # (IN, OUT)
    b = rng.uniform(-1, 1, 16).astype(np.float32)
    dout = rng.uniform(-2, 2, (3, 5, 16)).astype(np.float32)
    u = 0.0 if fmt == "fp32" else FORMATS[fmt]["u"]
    with backend.gemm_precision(fmt):
        y, cache = layers.linear_forward(*(backend.to_device(a) for a in (x, w, b)))
        dx, dw, db = (host(a) for a in layers.linear_backward(backend.to_device(dout), cache))
    x64, w64, d64 = (a.astype(np.float64).reshape(-1, a.shape[-1]) for a in (x, w, dout))
    err = np.abs(host(y).reshape(-1, 16) - (x64 @ w64 + b))
    assert (err <= gemm_bound(x64, w64, u) + 2.0 ** -24 * np.abs(x64 @ w64 + b)).all()  # + the bias add
    assert (np.abs(dx.reshape(-1, 24) - d64 @ w64.T) <= gemm_bound(d64, w64.T, u)).all()
    assert (np.abs(dw - x64.T @ d64) <= gemm_bound(x64.T, d64, u)).all()
    np.testing.assert_array_equal(db, host(layers.linear_backward(backend.to_device(dout), cache)[2]))  # float32 sum
    if fmt != "fp32":  # the bound is not loose enough to pass float32 off as 16-bit: it did round
        with backend.gemm_precision("fp32"):
            y32, _ = layers.linear_forward(*(backend.to_device(a) for a in (x, w, b)))
        assert np.abs(host(y32) - host(y)).max() > 10 * 2.0 ** -24 * np.abs(host(y32)).max()


def rel(a, b):
    a, b = host(a).astype(np.float64), host(b).astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def model_grads(model, batch, fmt, seed=5):
    with backend.gemm_precision(fmt):
        out, cache = model.forward(batch, train=True, rng=philox.rng(seed))
        g = model.backward(cache)
    return out, cache, {k: host(v) for k, v in g.items()}


# Relative error (Frobenius, over each output or gradient tensor) against float32 that each
# precision must stay within: C * u with u its unit roundoff. One rounding of each operand
# gives about sqrt(2) u per GEMM; the backward's chains through layer norm and softmax add a
# few more, and the ratio is over whole tensors (a tensor with a near-zero true gradient,
# such as attention's key bias, is compared on the absolute scale of the largest gradient).
LAYER_C = 4.0  # measured: logits 0.8 u, the loss 0.01 u
GRAD_C = 8.0  # measured: 2 u at worst (the pooler's bias)


def layer_cases(rng):
    """name -> (forward(*inputs) -> (out, cache), backward(dout, cache) -> grads, inputs):
    each layer with a GEMM, on float32 inputs of BERT-like scale."""
    B, T, H, A, I = 3, 10, 32, 4, 64
    f = lambda *shape, s=1.0: (s * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    bias = np.zeros((B, 1, 1, T), np.float32)
    bias[0, ..., 7:] = layers.MASK_VALUE
    lp = {"attn.w_qkv": f(H, 3 * H, s=0.2), "attn.b_qkv": f(3 * H, s=0.1), "attn.w_o": f(H, H, s=0.2),
          "attn.b_o": f(H, s=0.1), "ln1.w": 1 + f(H, s=0.1), "ln1.b": f(H, s=0.1), "ffn.w_fc": f(H, I, s=0.2),
          "ffn.b_fc": f(I, s=0.1), "ffn.w_proj": f(I, H, s=0.2), "ffn.b_proj": f(H, s=0.1),
          "ln2.w": 1 + f(H, s=0.1), "ln2.b": f(H, s=0.1)}
    x = f(B, T, H)
    return {
        "attention": (lambda x, b: layers.attention_forward(x, b, lp["attn.w_qkv"], lp["attn.b_qkv"], lp["attn.w_o"],
                                                            lp["attn.b_o"], A),
                      layers.attention_backward, (x, bias)),
        "ffn": (lambda x: layers.ffn_forward(x, lp["ffn.w_fc"], lp["ffn.b_fc"], lp["ffn.w_proj"], lp["ffn.b_proj"]),
                layers.ffn_backward, (x,)),
        "post-LN layer": (lambda x, b: layers.encoder_layer_forward(x, b, lp, A, 1e-12),
                          lambda d, c: layers.encoder_layer_backward(d, c), (x, bias)),
        "pre-LN layer": (lambda x, b: layers.pre_ln_encoder_layer_forward(x, b, lp, A, 1e-12),
                         lambda d, c: layers.pre_ln_encoder_layer_backward(d, c), (x, bias)),
        "pooler": (lambda x: layers.pooler_forward(x, lp["attn.w_o"], lp["attn.b_o"]), layers.pooler_backward, (x,)),
    }


def flat_arrays(o):
    """Every float array in a (nested) tuple / dict of layer outputs, in order."""
    if isinstance(o, dict):
        return [a for k in sorted(o) for a in flat_arrays(o[k])]
    if isinstance(o, (tuple, list)):
        return [a for x in o for a in flat_arrays(x)]
    return [o] if hasattr(o, "dtype") and o.dtype == np.float32 else []


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["attention", "ffn", "post-LN layer", "pre-LN layer", "pooler"])
def test_each_layer_within_the_stated_bound(fmt, name):
    """Each layer with a GEMM alone: its output and every gradient (inputs and weights) within
    LAYER_C u and GRAD_C u of float32, relative (Frobenius, per tensor)."""
    u = FORMATS[fmt]["u"]
    rng = np.random.default_rng(7)
    forward, backward, inputs = layer_cases(rng)[name]
    inputs = tuple(backend.to_device(a) for a in inputs)

    def run(p):
        with backend.gemm_precision(p):
            out, cache = forward(*inputs)
            dout = backend.to_device(np.random.default_rng(8).standard_normal(out.shape).astype(np.float32))
            return out, flat_arrays(backward(dout, cache))
    out32, g32 = run("fp32")
    out16, g16 = run(fmt)
    assert len(g16) == len(g32) >= 2
    assert 0.01 * u < rel(out16, out32) <= LAYER_C * u  # it rounded, and stayed within the bound
    for a, b in zip(g16, g32):
        assert rel(a, b) <= GRAD_C * u


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_every_layer_and_the_model_within_the_stated_bound(fmt, norm):
    u = FORMATS[fmt]["u"]
    c = tiny_config(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, vocab_size=97,
                    max_position=32, dtype="float32", norm=norm)
    model = BertForPreTraining(c, seed=3)
    batch = make_batch(np.random.default_rng(2), 4, 16, c.vocab_size, n_masked=4)
    out32, cache32, g32 = model_grads(model, batch, "fp32")
    out16, cache16, g16 = model_grads(model, batch, fmt)
    assert abs(float(out16["loss"]) - float(out32["loss"])) <= LAYER_C * u * abs(float(out32["loss"]))
    assert rel(out16["mlm_logits"], out32["mlm_logits"]) <= LAYER_C * u
    for a, b in zip(cache16.c_enc.c_layers, cache32.c_enc.c_layers):  # each encoder layer's attention probs
        pa, pb = (getattr(x, "c_attn", None) for x in (a, b))
        if pa is not None:
            assert rel(pa.probs, pb.probs) <= LAYER_C * u
    scale = max(np.linalg.norm(g) for g in g32.values())
    worst = {k: float(np.linalg.norm(g16[k] - g32[k]) / max(np.linalg.norm(g32[k]), 1e-3 * scale)) for k in g32}
    assert max(worst.values()) <= GRAD_C * u, sorted(worst.items(), key=lambda kv: -kv[1])[:3]
    assert max(worst.values()) > 0.01 * u  # it did round


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_layers_without_a_gemm_are_bitwise_unchanged(fmt):
    rng = np.random.default_rng(1)
    x = backend.to_device(rng.standard_normal((2, 5, 8)).astype(np.float32))
    w, b = (backend.to_device(rng.standard_normal(8).astype(np.float32)) for _ in range(2))
    d = backend.to_device(rng.standard_normal((2, 5, 8)).astype(np.float32))

    def run():
        y1, c1 = layers.layernorm_forward(x, w, b, 1e-5)
        y2, c2 = layers.gelu_forward(x)
        y3, c3 = layers.softmax_forward(x, 0.5)
        y4, c4 = layers.dropout_forward(x, 0.3, philox.rng(9))
        return [y1, *layers.layernorm_backward(d, c1), y2, *layers.gelu_backward(d, c2), y3,
                *layers.softmax_backward(d, c3), y4, c4[0], *layers.dropout_backward(d, c4)]
    with backend.gemm_precision("fp32"):
        want = [host(a) for a in run()]
    with backend.gemm_precision(fmt):
        got = [host(a) for a in run()]
    assert all(np.array_equal(g, w_) for g, w_ in zip(got, want))


def test_dropout_masks_are_the_same_bits_in_every_precision():
    c = tiny_config(hidden_size=16, num_heads=2, intermediate_size=32, vocab_size=61, max_position=32,
                    dtype="float32", dropout=0.2, attention_dropout=0.2)
    model = BertForPreTraining(c, seed=1)
    batch = make_batch(np.random.default_rng(3), 3, 12, c.vocab_size, n_masked=3)

    def masks(fmt):
        with backend.gemm_precision(fmt):
            _, cache = model.forward(batch, train=True, rng=philox.rng(4))
        found = []

        def walk(o):
            if isinstance(o, (tuple, list)):
                for x in o:
                    walk(x)
            elif hasattr(o, "dtype") and o.dtype == bool:
                found.append(host(o))
        walk(cache)
        return found
    m32 = masks("fp32")
    assert len(m32) >= 4  # attention and hidden dropout of both layers
    for fmt in ("bf16", "fp16"):
        m16 = masks(fmt)
        assert len(m16) == len(m32) and all(np.array_equal(a, b) for a, b in zip(m16, m32))


def test_fp16_gradient_underflows_without_scaling_and_survives_with_it():
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.uniform(0.5, 1.0, (64, 16)).astype(np.float32))  # (N, IN)
    w = backend.to_device(rng.uniform(-1, 1, (16, 8)).astype(np.float32))  # (IN, OUT)
    dout = backend.to_device(np.full((64, 8), 2e-8, np.float32))  # (N, OUT): below fp16's smallest subnormal / 2
    _, cache = layers.linear_forward(x, w, backend.xp.zeros(8, np.float32))
    with backend.gemm_precision("fp32"):
        dw32 = host(layers.linear_backward(dout, cache)[1])
    with backend.gemm_precision("fp16"):
        dw16 = host(layers.linear_backward(dout, cache)[1])
        S = np.float32(2.0 ** 16)
        dw_scaled = host(layers.linear_backward(dout * S, cache)[1]) / S
    assert (dw32 > 0).all()
    assert (dw16 == 0).all(), "an fp16 gradient of 2e-8 rounds to 0"
    np.testing.assert_allclose(dw_scaled, dw32, rtol=4 * FORMATS["fp16"]["u"])


def test_loss_scaler_grows_backs_off_and_counts_skips():
    s = LossScaler(init_scale=8.0, growth_interval=3)
    seen = []
    for finite in [True, True, True, True, False, True, True, True]:
        s.update(backend.xp.asarray(finite))
        seen.append((float(s.scale), int(s.growth_tracker)))
    assert seen == [(8, 1), (8, 2), (16, 0), (16, 1), (8, 0), (8, 1), (8, 2), (16, 0)]
    assert int(s.skipped) == 1
    t = LossScaler()
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict()
    grads = {"a": backend.to_device(np.array([2.0, -4.0], np.float32))}
    s.unscale(grads)
    np.testing.assert_array_equal(host(grads["a"]), [0.125, -0.25])
    with pytest.raises(ValueError, match="growth_factor"):
        LossScaler(growth_factor=1.0)
    assert float(LossScaler().scale) == 2.0 ** 16  # GradScaler's defaults
    assert LossScaler().growth_interval == 2000 and LossScaler().backoff_factor == 0.5


def params_and_grads(seed):
    rng = np.random.default_rng(seed)
    p = {"w": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    return ({k: backend.to_device(v) for k, v in p.items()},
            [{k: backend.to_device(rng.standard_normal(v.shape).astype(np.float32)) for k, v in p.items()}
             for _ in range(4)])


def snapshot(opt):
    return [host(a).copy() for d in (opt.params, opt.m, opt.v) for a in d.values()]


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_a_skipped_step_leaves_every_bit_and_the_bias_correction_alone(kind):
    xp = backend.xp
    make = (lambda p: AdamW(p, lr=1e-2, betas=(0.9, 0.98))) if kind == "adamw" else \
        (lambda p: LAMB(p, lr=1e-2, betas=(0.9, 0.98)))
    p1, g1 = params_and_grads(0)
    p2, g2 = params_and_grads(0)
    plain, skippy = make(p1), make(p2)
    plain.step(g1[0])
    skippy.step(g2[0], apply=xp.asarray(True))
    # applied: the same step (AdamW's host loop takes the constants as float32 either way: bitwise;
    # LAMB's array ops then compute in float64 before rounding: to float32's last bits)
    for a, b in zip(snapshot(plain), snapshot(skippy)):
        np.testing.assert_allclose(b, a, rtol=0 if kind == "adamw" else 1e-6, atol=0)
    before = snapshot(skippy)
    bad = {k: v.copy() for k, v in g2[1].items()}
    bad["w"][1, 2] = np.inf
    bad["b"][0] = np.nan
    skippy.step(bad, apply=xp.asarray(False))
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(skippy)))  # skipped: nothing moved
    assert int(skippy.skipped) == 1 and skippy.state_dict()[1]["t"] == 1
    plain.step(g1[2])
    skippy.step(g2[2], apply=xp.asarray(True))  # its second step taken: t = 2 in the bias corrections, as plain's
    np.testing.assert_allclose(snapshot(skippy)[0], snapshot(plain)[0], rtol=1e-6)
    assert skippy.state_dict()[1]["t"] == plain.state_dict()[1]["t"] == 2


def test_a_skip_before_any_step_stays_finite():
    p, g = params_and_grads(1)
    opt = AdamW(p, lr=1e-2)
    before = snapshot(opt)
    opt.step(g[0], apply=backend.xp.asarray(False))  # t - skipped = 0: no 0/0 in the unused constants
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(opt)))


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        check_config(TrainConfig(precision="fp8"))
    for kw in (dict(precision="fp16", optimizer="lamb"), dict(precision="fp16", zero=1)):
        check_config(TrainConfig(**kw))
    with pytest.raises(ValueError, match="unknown precision"):
        with backend.gemm_precision("fp8"):
            pass
    assert backend.precision == "fp32"


def test_an_fp16_run_skips_overflowing_steps_and_goes_on(tmp_path, monkeypatch):
    """A scale far too large (2^60): the scaled gradients overflow fp16, so the first steps are
    skipped on the device, parameters untouched, the scale halving each time, until it fits
    and the run trains. The probe that stops a run on a non-finite grad norm must not fire."""
    corpus = str(write_corpus(tmp_path / "corpus.txt"))
    monkeypatch.setattr(train, "scaler_for", lambda precision: LossScaler(init_scale=2.0 ** 60))
    pretrain(small_tc(tmp_path / "all_skipped", corpus, steps=3, log_every=1, precision="fp16"), dict(SMALL))
    # the same 3 steps with lr 0 change nothing either: the initial parameters
    pretrain(small_tc(tmp_path / "lr0", corpus, steps=3, lr=0.0, warmup=0), dict(SMALL))
    a, b = load_checkpoint(str(tmp_path / "all_skipped"), "last")[0], load_checkpoint(str(tmp_path / "lr0"), "last")[0]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    recs = [r for r in map(json.loads, open(tmp_path / "all_skipped" / "metrics.jsonl")) if "loss_scale" in r]
    assert [(r["loss_scale"], r["skipped_steps"]) for r in recs] == [(2.0 ** 59, 1), (2.0 ** 58, 2), (2.0 ** 57, 3)]
    pretrain(small_tc(tmp_path / "recovers", corpus, steps=60, log_every=10, precision="fp16"), dict(SMALL))
    recs = [r for r in map(json.loads, open(tmp_path / "recovers" / "metrics.jsonl")) if "loss_scale" in r]
    assert 0 < recs[-1]["skipped_steps"] < 60 and recs[-1]["loss_scale"] <= 2.0 ** 60 / 2 ** recs[-1]["skipped_steps"]
    assert recs[-1]["mlm_loss"] < recs[0]["mlm_loss"]


def test_every_model_scales_its_gradients_by_dloss():
    """backward(cache, dloss=S) is S times backward(cache), bit for bit for S a power of 2, in
    every model class: the loss scale enters at the loss and nowhere else."""
    from test_recompute import task_models
    c = tiny_config(num_layers=1)
    cases = [(BertForPreTraining(c, seed=1), make_batch(np.random.default_rng(5), 3, 8, c.vocab_size, n_masked=2)),
             *task_models(c)]
    regression = BertForSequenceClassification(c, 1, seed=1)  # C = 1: mean squared error
    cases.append((regression, dict(make_batch(np.random.default_rng(6), 3, 8, c.vocab_size, num_labels=2),
                                   labels=np.array([0.5, -1.0, 2.0]))))
    for model, batch in cases:
        _, cache = model.forward(batch, train=False)
        g1 = {k: host(v) for k, v in model.backward(cache).items()}
        g4 = {k: host(v) for k, v in model.backward(cache, dloss=backend.xp.asarray(4.0)).items()}
        assert all(np.array_equal(g4[k], 4 * g1[k]) for k in g1), type(model).__name__
        assert any(np.abs(g1[k]).max() > 0 for k in g1)


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_the_device_gemms_16_bit_operands_hold_the_values_low_rounds_to(fmt, order):
    """backend.device_operand, the 16-bit arrays cuBLAS multiplies on the GPU (float16, or bf16
    bits as uint16), widened back to float32: the values low() rounds to, bit for bit, with
    infinities and NaN; a transpose stays a transpose. Runs on NumPy here and on CuPy in
    scripts/gpu_check.sh's suite (where backend.device_gemm's product is checked, test_gpu_path.py)."""
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((37, 29)) * np.exp2(rng.integers(-30, 20, (37, 29)))).astype(np.float32)  # (37, 29)
    a[0, :4] = [np.inf, -np.inf, np.nan, 7e4]  # 7e4: past fp16's 65,504
    a = np.asfortranarray(a) if order == "F" else a
    with backend.gemm_precision(fmt), np.errstate(over="ignore"):  # NumPy warns of the 7e4 -> inf cast
        d = host(backend.device_operand(backend.to_device(a)))  # (37, 29) float16 / uint16
        want = host(backend.low(backend.to_device(a)))  # (37, 29) float32
    assert d.dtype == (np.float16 if fmt == "fp16" else np.uint16)
    assert d.flags.f_contiguous == (order == "F")
    wide = d.astype(np.float32) if fmt == "fp16" else (d.astype(np.uint32) << 16).view(np.float32)  # (37, 29)
    assert np.array_equal(wide, want, equal_nan=True)
