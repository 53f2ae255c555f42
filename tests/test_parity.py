"""Parity with Hugging Face transformers: same weights, same batch, same numbers.

The reference is transformers' BertForPreTraining (eager attention, dropout off) with
torch autograd for the gradients; minibert's hand-written backward is compared with it
tensor by tensor, as max|a - b| / max|b| <= 1e-9 in float64 and 1e-4 in float32.

Two known differences are kept out of the batches on purpose (make_batch(..., hf=True)):
- HF masks padded keys with the dtype's minimum, minibert with -10000: only a row whose
  keys are all padding differs, so every row has at least one real token.
- HF's word embedding has padding_idx = pad_token_id (0), whose row gets no gradient from
  the input lookup; so id 0 appears only at padded positions, where the lookup gradient
  is exactly zero on both sides (no real query attends to a padded key).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hypothesis import given, settings, strategies as st  # noqa: E402

from conftest import make_batch  # noqa: E402
from minibert import backend, hf_state, interop  # noqa: E402
from minibert.model import BertForPreTraining  # noqa: E402

TOL = {"float64": 1e-9, "float32": 1e-4}
TORCH_DTYPE = {"float64": torch.float64, "float32": torch.float32}


def rel_err(a, b):
    """max|a - b| / max|b|, the per-tensor error measure (0 when both are all zero)."""
    a, b = np.asarray(backend.to_host(a), dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.abs(b).max()
    diff = np.abs(a - b).max()
    return diff / scale if scale > 0 else diff


def hf_model(seed, dtype, hidden_act="gelu", V=41, H=16, L=2, A=4, I=24, max_pos=24, types=2):
    """A small transformers BertForPreTraining with every parameter random (biases and
    LayerNorm weights too, so that none is a trivial 0 or 1)."""
    cfg = transformers.BertConfig(
        vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=A, intermediate_size=I,
        max_position_embeddings=max_pos, type_vocab_size=types, hidden_act=hidden_act,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
        attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.BertForPreTraining(cfg)
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    model.to(TORCH_DTYPE[dtype]).eval()
    return model


def minibert_from_hf(hf, dtype):
    """minibert model from the HF module's state dict (tied decoder copies included)."""
    state = {k: v.detach().cpu().numpy() for k, v in hf.state_dict().items()}
    config = interop.config_from_hf(hf.config.to_dict(), dtype)
    return BertForPreTraining(config, params=hf_state.from_hf_state_dict(state, config))


def exactly_zero_grads(hf_grads, batch):
    """Gradients that are zero in exact arithmetic, so relative error means nothing there.

    The key bias adds q . b_k to every score of a query row alike, and softmax is invariant
    to a shift along the key axis. With one real token per row, each softmax has a single
    unmasked entry, so its probabilities are constant and the query and key projections
    receive no gradient at all."""
    zero = {k for k in hf_grads if k.endswith("attention.self.key.bias")}
    if batch["attention_mask"].sum(axis=1).max() == 1:
        zero |= {k for k in hf_grads if ".attention.self.query." in k or ".attention.self.key." in k}
    return zero


def compare(hf, batch, dtype, model=None):
    """Errors of minibert vs HF for the loss, MLM and NSP logits and every gradient.

    model: the minibert model to test (default: converted from hf)."""
    model = minibert_from_hf(hf, dtype) if model is None else model
    out, cache = model.forward(batch, train=False)
    grads = model.backward(cache)

    hf.zero_grad()
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    ref = hf(**t)
    ref.loss.backward()

    pos = backend.to_host(out["mlm_positions"])
    V = model.config.vocab_size
    errs = {
        "loss": rel_err(out["loss"], ref.loss.item()),
        "mlm_logits": rel_err(out["mlm_logits"], ref.prediction_logits.detach().reshape(-1, V).numpy()[pos]),
        "nsp_logits": rel_err(out["nsp_logits"], ref.seq_relationship_logits.detach().numpy()),
    }
    hf_grads = {k: p.grad.numpy() for k, p in hf.named_parameters()}  # tied weights listed once
    mb_grads = hf_state.to_hf_state_dict(model, grads)
    assert mb_grads.keys() == hf_grads.keys(), sorted(set(mb_grads) ^ set(hf_grads))
    zero = exactly_zero_grads(hf_grads, batch)
    for k in hf_grads:
        if k in zero:
            # both sides hold only rounding noise: measure it against the gradient of the
            # same layer's value weight rather than against each other
            scale = np.abs(hf_grads[k.split("attention.self.")[0] + "attention.self.value.weight"]).max()
            errs["grad " + k] = max(np.abs(mb_grads[k]).max(), np.abs(hf_grads[k]).max()) / scale
        else:
            errs["grad " + k] = rel_err(mb_grads[k], hf_grads[k])
    return errs


def assert_close(errs, dtype):
    bad = {k: e for k, e in errs.items() if not e <= TOL[dtype]}
    assert not bad, f"{dtype}: relative errors above {TOL[dtype]}: {bad}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_loss_logits_and_every_gradient_match(dtype, hidden_act):
    hf = hf_model(seed=0, dtype=dtype, hidden_act=hidden_act)
    rng = np.random.default_rng(0)
    batch = make_batch(rng, B=4, T=12, V=41, types=2, lengths=[12, 9, 3, 7], hf=True)
    assert_close(compare(hf, batch, dtype), dtype)


@pytest.mark.parametrize("corruption", ["swap q and k", "untransposed w_o", "no type embedding"])
def test_parity_check_catches_a_wrong_mapping(corruption):
    """The comparison must fail for the classic conversion mistakes."""
    hf = hf_model(seed=1, dtype="float64")
    model = minibert_from_hf(hf, "float64")
    p, H = model.params, model.config.hidden_size
    if corruption == "swap q and k":
        w = p["layers.1.attn.w_qkv"]
        p["layers.1.attn.w_qkv"] = backend.xp.concatenate([w[:, H:2 * H], w[:, :H], w[:, 2 * H:]], axis=1)
    elif corruption == "untransposed w_o":
        p["layers.0.attn.w_o"] = backend.xp.ascontiguousarray(p["layers.0.attn.w_o"].T)
    else:
        p["emb.type"] = backend.xp.zeros_like(p["emb.type"])
    batch = make_batch(np.random.default_rng(3), B=3, T=8, V=41, types=2, lengths=[8, 5, 6], hf=True)
    errs = compare(hf, batch, "float64", model=model)
    assert errs["mlm_logits"] > 1e-3 and errs["nsp_logits"] > 1e-3
    with pytest.raises(AssertionError, match="relative errors above"):
        assert_close(errs, "float64")


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_parity_drawn_shapes(data):
    dtype = data.draw(st.sampled_from(["float64", "float32"]), "dtype")
    # (heads, head size); H >= 3 because layer norm over 2 features is degenerate: its
    # output is +-1 whatever the input, its gradient ~ eps, and relative error meaningless
    A, D = data.draw(st.sampled_from([(1, 3), (1, 4), (2, 2), (2, 3), (4, 2), (3, 4)]), "heads, head size")
    L = data.draw(st.integers(1, 2), "layers")
    B = data.draw(st.integers(1, 4), "B")
    T = data.draw(st.integers(1, 10), "T")
    act = data.draw(st.sampled_from(["gelu", "gelu_new", "gelu_pytorch_tanh"]), "hidden_act")
    seed = data.draw(st.integers(0, 2**16), "seed")
    shape = dict(V=23, H=A * D, L=L, A=A, I=12, max_pos=10, types=3)
    hf = hf_model(seed, dtype, act, **shape)
    batch = make_batch(np.random.default_rng(seed), B, T, V=23, types=3, hf=True)
    errs = compare(hf, batch, dtype)
    if dtype == "float32":
        # Some drawn shapes are ill-conditioned (layer norm over 3 features of one token, say):
        # there float32 itself cannot reach 1e-4. Measure that with PyTorch's own float32
        # error against float64 on the same weights, and hold minibert to 4x it: both sides
        # err by about that much, and their difference is what compare() sees.
        own = torch_float32_errors(hf, hf_model(seed, "float64", act, **shape), batch)
        errs = {k: e if e <= TOL[dtype] else e * TOL[dtype] / max(4 * own[k], TOL[dtype]) for k, e in errs.items()}
    assert_close(errs, dtype)


def torch_float32_errors(hf32, hf64, batch):
    """PyTorch float32 against float64 on the same weights, keyed as compare() keys its errors."""
    outs = {}
    for name, hf in (("32", hf32), ("64", hf64)):
        hf.zero_grad()
        ref = hf(**{k: torch.from_numpy(v) for k, v in batch.items()})
        ref.loss.backward()
        outs[name] = {"loss": ref.loss.item(), "mlm_logits": ref.prediction_logits.detach().numpy(),
                      "nsp_logits": ref.seq_relationship_logits.detach().numpy(),
                      **{"grad " + k: p.grad.numpy() for k, p in hf.named_parameters()}}
    return {k: rel_err(outs["32"][k], outs["64"][k]) for k in outs["64"]}


def test_ill_conditioned_float32_is_judged_against_torch_float32():
    """The drawn case Hypothesis found (H = 3, one row of 6 tokens): PyTorch float32 is itself
    about 1e-4 off float64 there, and minibert stays within 4x of it; a real error (a
    bias off by 1%) is still far outside."""
    shape = dict(V=23, H=3, L=1, A=1, I=12, max_pos=10, types=3)
    hf32, hf64 = hf_model(1196, "float32", "gelu", **shape), hf_model(1196, "float64", "gelu", **shape)
    batch = make_batch(np.random.default_rng(1196), 1, 6, V=23, types=3, hf=True)
    own = torch_float32_errors(hf32, hf64, batch)
    errs = compare(hf32, batch, "float32")
    assert max(own.values()) > TOL["float32"] / 10  # the case is ill-conditioned for torch too
    assert all(errs[k] <= max(TOL["float32"], 4 * own[k]) for k in errs), errs
    model = minibert_from_hf(hf32, "float32")
    model.params["mlm.b"] = model.params["mlm.b"] * 1.01
    wrong = compare(hf32, batch, "float32", model=model)
    assert any(wrong[k] > max(TOL["float32"], 4 * own[k]) for k in wrong)


# ----------------------------------------------------------------------------------------
# checkpoints across the boundary, both directions


def hf_outputs(hf, batch):
    with torch.no_grad():
        ref = hf(**{k: torch.from_numpy(v) for k, v in batch.items() if k not in ("labels", "next_sentence_label")})
    return ref.prediction_logits.numpy(), ref.seq_relationship_logits.numpy()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_minibert_checkpoint_loads_in_transformers(tmp_path, dtype):
    model = minibert_from_hf(hf_model(seed=5, dtype="float64", hidden_act="gelu_new"), dtype)
    interop.save_hf(model, tmp_path)
    hf, info = transformers.BertForPreTraining.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager", dtype=TORCH_DTYPE[dtype])
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not info["error_msgs"], info
    assert hf.config.hidden_act == "gelu_new"
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight
    hf.eval()

    batch = make_batch(np.random.default_rng(1), B=3, T=8, V=41, types=2, lengths=[8, 5, 2], hf=True)
    out = model.predict(batch)
    mlm, nsp = hf_outputs(hf, batch)
    assert rel_err(out["mlm_logits"], mlm.reshape(-1, 41)[backend.to_host(out["mlm_positions"])]) <= TOL[dtype]
    assert rel_err(out["nsp_logits"], nsp) <= TOL[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_transformers_checkpoint_loads_in_minibert(tmp_path, dtype):
    hf = hf_model(seed=6, dtype=dtype, hidden_act="gelu")
    hf.save_pretrained(tmp_path)
    model = interop.load_hf(tmp_path, dtype=dtype)
    assert model.config.num_heads == 4 and model.config.hidden_act == "gelu"

    batch = make_batch(np.random.default_rng(2), B=3, T=8, V=41, types=2, lengths=[8, 6, 1], hf=True)
    out = model.predict(batch)
    mlm, nsp = hf_outputs(hf, batch)
    assert rel_err(out["mlm_logits"], mlm.reshape(-1, 41)[backend.to_host(out["mlm_positions"])]) <= TOL[dtype]
    assert rel_err(out["nsp_logits"], nsp) <= TOL[dtype]

    # the same directory read as an encoder only, and a BertModel directory
    config, params = interop.load_hf_encoder_params(tmp_path, dtype=dtype)
    for k, v in params.items():
        assert np.array_equal(backend.to_host(v), backend.to_host(model.params[k])), k
    hf.bert.save_pretrained(tmp_path / "encoder")
    config2, params2 = interop.load_hf_encoder_params(tmp_path / "encoder", dtype=dtype)
    assert config2 == config
    for k, v in params2.items():
        assert np.array_equal(backend.to_host(v), backend.to_host(params[k])), k
