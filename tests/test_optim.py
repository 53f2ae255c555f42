"""AdamW, the schedule, clipping and accumulation against independent references.

References: a plain NumPy AdamW written here from the paper's equations (textbook form,
not the folded scalars optim.py uses), torch.optim.AdamW and torch.nn.utils.clip_grad_norm_
when torch is installed, and hand-computed schedule values.
"""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_batch, tiny_config
from minibert import backend
from minibert.model import BertForPreTraining
from minibert.optim import AdamW, accumulate, clip_grad_norm, lr_at

SHAPES = {"w_qkv": (6, 18), "b_qkv": (18,), "ln_w": (6,), "emb": (11, 6), "scalar": ()}


def make_params(seed, shapes=SHAPES, dtype=np.float64):
    """Host params and a list of host grads for many steps (random, never ones)."""
    r = np.random.default_rng(seed)
    params = {k: r.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    return params


def make_grads(seed, n_steps, shapes=SHAPES, dtype=np.float64):
    r = np.random.default_rng(seed)
    # vary the scale per step so that v does not settle and the bias corrections matter
    return [{k: (r.standard_normal(s) * r.uniform(0.01, 3.0)).astype(dtype) for k, s in shapes.items()}
            for _ in range(n_steps)]


def to_dev(d):
    return {k: backend.to_device(v.copy()) for k, v in d.items()}


def to_host(d):
    return {k: np.asarray(backend.to_host(v)) for k, v in d.items()}


def clip(grads, max_norm):
    """clip_grad_norm's norm as a float, after checking its documented type: a Python float
    on the host, a 0-d device array on CuPy (so that clipping never waits for the device)."""
    norm = clip_grad_norm(grads, max_norm)
    if backend.name == "numpy":
        assert type(norm) is float
    else:
        assert isinstance(norm, backend.xp.ndarray) and norm.shape == ()
    return float(norm)


def reference_adamw(params, grads_seq, lrs, b1, b2, eps, wd, decay):
    """Textbook AdamW in float64, one parameter at a time, written from the equations."""
    p = {k: v.astype(np.float64).copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v_ = {k: np.zeros_like(v) for k, v in p.items()}
    for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
        for k in p:
            g = grads[k].astype(np.float64)
            if decay[k]:
                p[k] = p[k] - lr * wd * p[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v_[k] = b2 * v_[k] + (1 - b2) * g * g
            m_hat = m[k] / (1 - b1 ** t)
            v_hat = v_[k] / (1 - b2 ** t)
            p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def run_ours(params, grads_seq, lrs, **kw):
    dev = to_dev(params)
    opt = AdamW(dev, **kw)
    for grads, lr in zip(grads_seq, lrs):
        opt.step(to_dev(grads), lr=lr)
    return to_host(dev), opt


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_matches_reference_formula_float64(wd):
    params = make_params(0)
    grads_seq = make_grads(1, 60)
    lrs = [lr_at(i, 3e-2, 10, 60) for i in range(60)]
    ours, _ = run_ours(params, grads_seq, lrs, lr=1.0, betas=(0.9, 0.98), eps=1e-6, weight_decay=wd)
    decay = {k: len(s) >= 2 for k, s in SHAPES.items()}  # the 1-D (and 0-D) no-decay rule
    ref = reference_adamw(params, grads_seq, lrs, 0.9, 0.98, 1e-6, wd, decay)
    for k in params:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)
        assert not np.allclose(ours[k], params[k])  # the parameters did move


def test_no_decay_rule_is_visible():
    """Decaying the 1-D params too gives a measurably different result: the test can fail."""
    params = make_params(2)
    grads_seq = make_grads(3, 20)
    lrs = [1e-2] * 20
    ours, _ = run_ours(params, grads_seq, lrs, weight_decay=0.5)
    all_decay = reference_adamw(params, grads_seq, lrs, 0.9, 0.999, 1e-6, 0.5, {k: True for k in SHAPES})
    assert not np.allclose(ours["b_qkv"], all_decay["b_qkv"], rtol=1e-9, atol=0)
    np.testing.assert_allclose(ours["w_qkv"], all_decay["w_qkv"], rtol=1e-12)
    # and the override predicate is honoured
    ours_all, _ = run_ours(params, grads_seq, lrs, weight_decay=0.5, no_decay=lambda name, a: False)
    for k in params:
        np.testing.assert_allclose(ours_all[k], all_decay[k], rtol=1e-12, atol=1e-14, err_msg=k)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple),
    b1=st.floats(0.0, 0.99), b2=st.floats(0.5, 0.9999),
    eps=st.sampled_from([1e-8, 1e-6, 1e-3]), wd=st.floats(0.0, 0.3),
    lr=st.floats(1e-5, 1e-1), seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference_formula_drawn(shape, b1, b2, eps, wd, lr, seed):
    shapes = {"a": shape, "b": (3,)}
    params = make_params(seed, shapes)
    grads_seq = make_grads(seed + 1, 8, shapes)
    lrs = [lr] * 8
    ours, _ = run_ours(params, grads_seq, lrs, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    ref = reference_adamw(params, grads_seq, lrs, b1, b2, eps, wd, {"a": len(shape) >= 2, "b": False})
    for k in params:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-11, atol=1e-13, err_msg=k)


def test_float32_params_stay_float32_and_in_place():
    params = make_params(4, dtype=np.float32)
    grads_seq = make_grads(5, 30, dtype=np.float32)
    dev = to_dev(params)
    ids = {k: id(v) for k, v in dev.items()}
    opt = AdamW(dev, lr=1e-2)
    for grads in grads_seq:
        opt.step(to_dev(grads))
    assert {k: id(v) for k, v in dev.items()} == ids  # same array objects, updated in place
    ref = reference_adamw(params, grads_seq, [1e-2] * 30, 0.9, 0.999, 1e-6, 0.01,
                          {k: len(s) >= 2 for k, s in SHAPES.items()})
    for k, v in to_host(dev).items():
        assert v.dtype == np.float32 and opt.m[k].dtype == np.float32
        np.testing.assert_allclose(v, ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_matches_torch_adamw():
    torch = pytest.importorskip("torch")
    params = make_params(6)
    grads_seq = make_grads(7, 50)
    lrs = [lr_at(i, 5e-3, 5, 50, min_lr=1e-4) for i in range(50)]
    b1, b2, eps, wd = 0.9, 0.999, 1e-6, 0.05
    ours, _ = run_ours(params, grads_seq, lrs, lr=5e-3, betas=(b1, b2), eps=eps, weight_decay=wd)

    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    groups = [
        {"params": [tp[k] for k in params if tp[k].ndim >= 2], "weight_decay": wd},
        {"params": [tp[k] for k in params if tp[k].ndim < 2], "weight_decay": 0.0},
    ]
    topt = torch.optim.AdamW(groups, lr=5e-3, betas=(b1, b2), eps=eps, foreach=False)
    for grads, lr in zip(grads_seq, lrs):
        for g in topt.param_groups:
            g["lr"] = lr
        for k, t in tp.items():
            t.grad = torch.tensor(grads[k], dtype=torch.float64)
        topt.step()
    for k in params:
        np.testing.assert_allclose(ours[k], tp[k].detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=k)


def test_state_roundtrip_continues_bitwise():
    params = make_params(8)
    grads_seq = make_grads(9, 20)
    lrs = [lr_at(i, 1e-2, 4, 20) for i in range(20)]
    kw = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1)

    full, _ = run_ours(params, grads_seq, lrs, **kw)

    half, opt = run_ours(params, grads_seq[:10], lrs[:10], **kw)
    tensors, meta = opt.state_dict()
    meta = json.loads(json.dumps(meta))  # it must survive JSON, as in a checkpoint
    tensors = {k: v.copy() for k, v in tensors.items()}
    assert all(isinstance(v, np.ndarray) for v in tensors.values())
    dev = to_dev(half)
    opt2 = AdamW(dev)  # default hyperparameters: load_state_dict must restore them all
    opt2.load_state_dict(tensors, meta)
    assert opt2.t == 10 and opt2.betas == (0.8, 0.95) and opt2.eps == 1e-7
    for grads, lr in zip(grads_seq[10:], lrs[10:]):
        opt2.step(to_dev(grads), lr=lr)
    for k in params:
        np.testing.assert_array_equal(to_host(dev)[k], full[k], err_msg=k)


def test_state_dict_is_a_copy():
    dev = to_dev(make_params(10))
    opt = AdamW(dev)
    opt.step(to_dev(make_grads(11, 1)[0]))
    tensors, _ = opt.state_dict()
    before = tensors["m.w_qkv"].copy()
    opt.step(to_dev(make_grads(12, 1)[0]))
    np.testing.assert_array_equal(tensors["m.w_qkv"], before)


def test_step_rejects_mismatched_grads():
    dev = to_dev(make_params(13))
    opt = AdamW(dev)
    grads = to_dev(make_grads(14, 1)[0])
    missing = dict(grads)
    del missing["ln_w"]
    with pytest.raises(ValueError, match="missing \\['ln_w'\\]"):
        opt.step(missing)
    with pytest.raises(ValueError, match="unexpected \\['extra'\\]"):
        opt.step({**grads, "extra": grads["ln_w"]})
    with pytest.raises(ValueError, match="w_qkv"):
        opt.step({**grads, "w_qkv": grads["w_qkv"].T})
    assert opt.t == 0  # nothing happened
    np.testing.assert_array_equal(to_host(dev)["w_qkv"], make_params(13)["w_qkv"])


def test_load_state_dict_rejects_mismatches():
    dev = to_dev(make_params(15))
    opt = AdamW(dev)
    tensors, meta = opt.state_dict()
    with pytest.raises(ValueError, match="missing \\['v.emb'\\]"):
        opt.load_state_dict({k: v for k, v in tensors.items() if k != "v.emb"}, meta)
    with pytest.raises(ValueError, match="m.emb"):
        opt.load_state_dict({**tensors, "m.emb": np.zeros((6, 11))}, meta)
    with pytest.raises(ValueError, match="m.emb"):
        opt.load_state_dict({**tensors, "m.emb": tensors["m.emb"].astype(np.float32)}, meta)
    with pytest.raises(ValueError, match="'t'"):
        opt.load_state_dict(tensors, {k: v for k, v in meta.items() if k != "t"})
    with pytest.raises(ValueError, match="no-decay"):
        opt.load_state_dict(tensors, {**meta, "no_decay": []})


def test_schedule_values():
    # warmup 4, total 10: (step + 1) / 4 of the peak, then a line from the peak to 0 at step 10
    expect = [0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 5 / 6 * 1e-3, 4 / 6 * 1e-3, 0.5e-3, 2 / 6 * 1e-3,
              1 / 6 * 1e-3, 0.0, 0.0]
    got = [lr_at(s, 1e-3, 4, 10) for s in range(12)]
    np.testing.assert_allclose(got, expect, rtol=1e-15, atol=0)
    assert all(isinstance(x, float) for x in got)
    assert max(got) == 1e-3
    # a floor, and no warmup at all
    assert lr_at(10, 1e-3, 4, 10, min_lr=1e-5) == 1e-5
    assert lr_at(7, 1e-3, 4, 10, min_lr=1e-4) == pytest.approx(1e-4 + 0.9e-3 * 0.5, rel=1e-15)
    assert lr_at(0, 2e-3, 0, 5) == 2e-3
    assert lr_at(4, 2e-3, 0, 5) == pytest.approx(2e-3 / 5, rel=1e-15)
    assert lr_at(3, 1e-3, 3, 3) == 0.0  # total == warmup: straight to the floor
    with pytest.raises(ValueError):
        lr_at(0, 1e-3, 5, 4)


def test_cosine_and_one_cycle_schedules():
    # cosine, warmup 2, total 6: the same warmup, then max_lr * (1 - cos(pi * (6 - s) / 4)) / 2
    got = [lr_at(s, 1e-3, 2, 6, schedule="cosine") for s in range(7)]
    half = (1 - np.cos(np.pi * np.array([4, 3, 2, 1]) / 4)) / 2  # 1, 0.854, 0.5, 0.146
    np.testing.assert_allclose(got, [0.5e-3, 1e-3, *(1e-3 * half), 0.0], rtol=1e-14, atol=1e-18)
    # cosine lies above the line in the first half of the decay, below it in the second, and meets it at the ends
    lin = [lr_at(s, 1e-3, 2, 6) for s in range(7)]
    assert got[3] > lin[3] and got[5] < lin[5] and got[2] == lin[2] and got[6] == lin[6]
    # a floor under cosine
    assert lr_at(4, 1e-3, 2, 6, min_lr=1e-4, schedule="cosine") == pytest.approx(1e-4 + 0.9e-3 * 0.5, rel=1e-14)
    # one-cycle through train.lr_for: up over the first peak_at of the steps, then down to 0
    from minibert.train import TrainConfig, lr_for
    tc = TrainConfig(steps=10, lr=2e-3, schedule="one-cycle", peak_at=0.3, warmup=999)  # warmup is not read
    np.testing.assert_allclose([lr_for(tc, s) for s in range(11)],
                               [lr_at(s, 2e-3, 3, 10) for s in range(11)], rtol=0, atol=0)
    assert max(lr_for(tc, s) for s in range(10)) == lr_for(tc, 2) == 2e-3
    assert lr_for(TrainConfig(steps=10, warmup=4, lr=1e-3), 3) == lr_at(3, 1e-3, 4, 10)  # linear: BERT's
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 1e-3, 1, 5, schedule="triangle")


def _plain_clip(grads, max_norm):
    flat = np.concatenate([g.ravel() for g in grads.values()])
    norm = float(np.sqrt(np.sum(flat * flat)))
    coef = max_norm / (norm + 1e-6)
    return norm, {k: g * coef if coef < 1 else g.copy() for k, g in grads.items()}


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_matches_plain_formula(max_norm):
    grads = make_grads(16, 1)[0]
    dev = to_dev(grads)
    norm = clip(dev, max_norm)
    ref_norm, ref = _plain_clip(grads, max_norm)
    assert norm == pytest.approx(ref_norm, rel=1e-13)
    for k, v in to_host(dev).items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-13, atol=0, err_msg=k)
    if max_norm == 0.5:
        total = np.sqrt(sum(np.sum(v * v) for v in to_host(dev).values()))
        assert total == pytest.approx(0.5, rel=1e-5)
    else:
        for k, v in to_host(dev).items():
            np.testing.assert_array_equal(v, grads[k])  # untouched


@pytest.mark.parametrize("max_norm", [None, 0, -1.0])
def test_clip_measure_only(max_norm):
    grads = make_grads(17, 1)[0]
    dev = to_dev(grads)
    norm = clip(dev, max_norm)
    assert norm == pytest.approx(_plain_clip(grads, 1.0)[0], rel=1e-13)
    for k, v in to_host(dev).items():
        np.testing.assert_array_equal(v, grads[k])


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_clip_reports_non_finite():
    grads = make_grads(18, 1)[0]
    grads["ln_w"][2] = np.inf
    assert clip(to_dev(grads), 1.0) == np.inf
    grads["ln_w"][2] = np.nan
    assert np.isnan(clip(to_dev(grads), 1.0))


@pytest.mark.parametrize("max_norm", [0.3, 2.0, 1e3])
def test_clip_matches_torch(max_norm):
    torch = pytest.importorskip("torch")
    grads = make_grads(19, 1)[0]
    dev = to_dev(grads)
    norm = clip(dev, max_norm)
    tp = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(tp, grads.values()):
        t.grad = torch.tensor(g)
    tnorm = torch.nn.utils.clip_grad_norm_(tp, max_norm)
    assert norm == pytest.approx(float(tnorm), rel=1e-13)
    for t, v in zip(tp, to_host(dev).values()):
        np.testing.assert_allclose(v, t.grad.numpy(), rtol=1e-13, atol=0)


def test_clip_float32_norm_accumulates_in_float():
    grads = {k: v.astype(np.float32) for k, v in make_grads(20, 1)[0].items()}
    norm = clip(to_dev(grads), None)
    ref = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    assert norm == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_accumulate(scale):
    micro = make_grads(21, 3)
    total = to_dev({k: np.zeros(s) for k, s in SHAPES.items()})
    for g in micro:
        dev_g = to_dev(g)
        accumulate(total, dev_g, scale)
        for k, v in to_host(dev_g).items():
            np.testing.assert_array_equal(v, g[k])  # the micro-batch grads are not touched
    for k, v in to_host(total).items():
        np.testing.assert_allclose(v, scale * (micro[0][k] + micro[1][k] + micro[2][k]), rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="missing"):
        accumulate(total, {k: v for k, v in to_dev(micro[0]).items() if k != "emb"})


def test_accumulate_starts_the_sum_from_none():
    g = to_dev(make_grads(22, 1)[0])
    assert accumulate(None, g) is g  # one micro-batch: no copy
    half = accumulate(None, g, 0.5)
    for k, v in to_host(half).items():
        np.testing.assert_array_equal(v, 0.5 * to_host(g)[k])


# ----------------------------------------------------------------------------------------
# gradient accumulation through the model, as minibert.train does it


def accumulated_grads(model, micro_batches):
    """The training loop's contract (minibert/train.py): grads = accumulate(grads, g, 1 / accum)
    over the micro-batches, dropout off here so that every forward is deterministic."""
    grads = None
    for batch in micro_batches:
        _, g = model.loss_and_grads(batch, train=True)
        grads = accumulate(grads, g, 1.0 / len(micro_batches))
    return grads


def halves(batch, B):
    return [{k: v[:B] for k, v in batch.items()}, {k: v[B:] for k, v in batch.items()}]


def max_rel_err(a, b):
    a, b = to_host(a), to_host(b)
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-300)) for k in b)


def test_accumulation_over_two_halves_equals_one_step_over_the_batch():
    """accum=2 over two half-batches gives the gradients and the AdamW update of one step
    over the combined batch. Both losses are means (MLM over labelled positions, NSP over
    pairs), so this holds when the halves hold equally many labelled positions, as here
    (3 per row); the test also shows the micro-batches' own gradients are far from the
    combined one, so keeping only the last one, or summing instead of averaging, fails."""
    c = tiny_config()  # dropout off
    model = BertForPreTraining(c, seed=1)
    B = 3
    batch = make_batch(np.random.default_rng(7), 2 * B, 6, c.vocab_size, n_masked=3)
    _, full = model.loss_and_grads(batch, train=True)
    micro = [model.loss_and_grads(b, train=True)[1] for b in halves(batch, B)]
    acc = accumulated_grads(model, halves(batch, B))
    assert acc.keys() == full.keys()
    assert max_rel_err(acc, full) < 1e-10
    # what a broken loop would produce is measurably different
    assert max_rel_err(micro[1], full) > 1e-2  # only the last micro-batch kept
    assert max_rel_err({k: 0.5 * g for k, g in micro[1].items()}, full) > 1e-2  # ... and halved
    assert max_rel_err({k: micro[0][k] + micro[1][k] for k in full}, full) > 0.5  # summed, not averaged

    # the same AdamW update from either gradient
    updated = []
    for grads in (acc, full):
        params = {k: v.copy() for k, v in model.params.items()}
        opt = AdamW(params, lr=1e-2, weight_decay=0.01)
        opt.step(grads)
        updated.append(params)
    assert max_rel_err(updated[0], updated[1]) < 1e-10
    assert max_rel_err(updated[0], model.params) > 1e-3  # the step did move the parameters


def test_accumulation_weights_micro_batches_equally():
    """The contract when the halves hold different numbers of labelled positions: each
    micro-batch's mean counts once (train.py does not re-weight by labelled positions), so
    the result is the mean of the two micro-batch gradients, not the combined batch's."""
    c = tiny_config()
    model = BertForPreTraining(c, seed=2)
    B = 2
    rng = np.random.default_rng(8)
    batch = {k: np.concatenate([a, b]) for (k, a), b in zip(
        make_batch(rng, B, 6, c.vocab_size, n_masked=1).items(),
        make_batch(rng, B, 6, c.vocab_size, n_masked=5).values())}
    g0, g1 = (model.loss_and_grads(b, train=True)[1] for b in halves(batch, B))
    acc = accumulated_grads(model, halves(batch, B))
    assert max_rel_err(acc, {k: 0.5 * (g0[k] + g1[k]) for k in g0}) < 1e-12
    _, full = model.loss_and_grads(batch, train=True)
    assert max_rel_err(acc, full) > 1e-3


# ----------------------------------------------------------------------------------------
# edges found by mutation testing (docs/testing.md): each test below failed against a
# surviving mutant of minibert/optim.py


def test_state_dict_copies_both_moments_and_names_the_no_decay_params():
    dev = to_dev(make_params(30))
    opt = AdamW(dev)
    opt.step(to_dev(make_grads(31, 1)[0]))
    tensors, meta = opt.state_dict()
    before = {k: v.copy() for k, v in tensors.items()}
    opt.step(to_dev(make_grads(32, 1)[0]))  # moves m and v in place
    for k, v in tensors.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    # the 1-D and 0-D parameters (by the shapes in SHAPES), written out by hand
    assert meta["no_decay"] == ["b_qkv", "ln_w", "scalar"]


def test_load_state_dict_restores_the_base_lr_and_refuses_bad_meta():
    params, grads = make_params(33), make_grads(34, 3)
    full, _ = run_ours(params, grads, [None] * 3, lr=3e-3, weight_decay=0.1)  # lr=None: the base lr
    half, opt = run_ours(params, grads[:1], [None], lr=3e-3, weight_decay=0.1)
    tensors, meta = opt.state_dict()
    dev = to_dev(half)
    opt2 = AdamW(dev)  # base lr 1e-4 until load_state_dict restores 3e-3
    opt2.load_state_dict(tensors, meta)
    assert opt2.lr == 3e-3 and opt2.weight_decay == 0.1
    for g in grads[1:]:
        opt2.step(to_dev(g))
    for k in params:
        np.testing.assert_array_equal(to_host(dev)[k], full[k], err_msg=k)
    for bad_t in (-1, 1.5, True):
        with pytest.raises(ValueError, match="'t' must be an int"):
            opt2.load_state_dict(tensors, {**meta, "t": bad_t})
    with pytest.raises(ValueError, match="'betas' must have two values"):
        opt2.load_state_dict(tensors, {**meta, "betas": [0.9, 0.99, 0.5]})


def test_clip_edges():
    assert clip({}, 1.0) == 0.0  # no gradients: norm 0
    grads = make_grads(35, 1)[0]
    norm = float(np.sqrt(sum(np.sum(g * g) for g in grads.values())))
    dev = to_dev(grads)
    assert clip(dev, 1.5 * norm) == pytest.approx(norm, rel=1e-13)
    for k, v in to_host(dev).items():  # under the limit: untouched, never scaled up
        np.testing.assert_array_equal(v, grads[k], err_msg=k)


def test_accumulate_with_scale_two():
    a, b = make_grads(36, 2)
    total = accumulate(to_dev(a), to_dev(b), 2.0)
    for k, v in to_host(total).items():
        np.testing.assert_allclose(v, a[k] + 2.0 * b[k], rtol=1e-14, atol=1e-15, err_msg=k)


def test_constructor_defaults_and_refusals():
    dev = to_dev(make_params(37))
    opt = AdamW(dev)  # BERT's defaults, documented in the signature
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay) == (1e-4, (0.9, 0.999), 1e-6, 0.01)
    AdamW(dev, lr=0.0, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0)  # every boundary value is allowed
    for kw in (dict(betas=(1.0, 0.999)), dict(betas=(1.5, 0.999)), dict(betas=(0.9, 1.0)), dict(betas=(0.9, 1.5)),
               dict(betas=(-0.1, 0.999)), dict(betas=(0.9, -0.1)),
               dict(lr=-1e-3), dict(eps=-1e-8), dict(weight_decay=-0.1)):
        with pytest.raises(ValueError):
            AdamW(dev, **kw)


def test_no_decay_predicate_sees_the_name():
    dev = to_dev(make_params(38))
    opt = AdamW(dev, no_decay=lambda name, p: name == "emb")
    assert opt.state_dict()[1]["no_decay"] == ["emb"]


def test_clip_float32_uses_the_coefficient_rounded_to_float32():
    """float32 grads are multiplied by the coefficient rounded to float32, as torch does
    (not by the float64 coefficient, which rounds differently in the last bit); on the host
    the norm comes back as a Python float. Found by mutation testing."""
    grads = {k: v.astype(np.float32) for k, v in make_grads(36, 1)[0].items()}
    norm64 = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    dev = to_dev(grads)
    norm = clip(dev, 0.3 * norm64)
    coef = np.float32(min(0.3 * norm64 / (float(norm) + 1e-6), 1.0))
    for k, v in to_host(dev).items():
        np.testing.assert_array_equal(v, grads[k] * coef, err_msg=k)
