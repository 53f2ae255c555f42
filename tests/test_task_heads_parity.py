"""Parity of the task heads with transformers' BertForTokenClassification,
BertForQuestionAnswering and BertForMultipleChoice: same weights, same batch, dropout off:
logits, loss and every gradient to relative 1e-9 in float64 and 1e-4 in float32, for the
loss's gradient and for a random upstream gradient on the logits, on fixed shapes and (float64)
on drawn ones. Then each kind crosses
the boundary both ways: transformers saves, minibert.interop loads (telling the kind from
the files), minibert saves, and the same transformers class loads it with no missing,
unexpected or mismatched weights.

The batches follow tests/test_parity.py's rules with one change: these heads send gradient
to every position (a token label or a softmax over positions can sit on padding), so the
pad id 0, whose embedding row transformers keeps out of the lookup gradient (padding_idx),
appears nowhere; padding is the attention mask alone. Every row keeps a real token (a row
of padding only is masked with another constant there).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hypothesis import given, settings, strategies as st  # noqa: E402

from conftest import make_batch, random_hf_model  # noqa: E402
from test_parity import exactly_zero_grads, rel_err  # noqa: E402
from minibert import hf_state, interop  # noqa: E402
from minibert.classifier import BertForSequenceClassification  # noqa: E402
from minibert.multiple_choice import BertForMultipleChoice  # noqa: E402
from minibert.question_answering import BertForQuestionAnswering  # noqa: E402
from minibert.token_classifier import BertForTokenClassification  # noqa: E402

V, H, L, A, I, MAXPOS = 41, 16, 2, 4, 24, 24
TOL = {"float64": 1e-9, "float32": 1e-4}
TORCH_DTYPE = {"float64": torch.float64, "float32": torch.float32}
KINDS = ["BertForTokenClassification", "BertForQuestionAnswering", "BertForMultipleChoice"]
MINIBERT_CLASS = {"BertForTokenClassification": BertForTokenClassification,
                  "BertForQuestionAnswering": BertForQuestionAnswering, "BertForMultipleChoice": BertForMultipleChoice}
NUM_LABELS = {"BertForTokenClassification": 5, "BertForQuestionAnswering": 2, "BertForMultipleChoice": 2}
# the logits each kind returns, under the same names on both sides
LOGITS = {"BertForTokenClassification": ("logits",), "BertForQuestionAnswering": ("start_logits", "end_logits"),
          "BertForMultipleChoice": ("logits",)}
UPSTREAM = {"logits": "dlogits", "start_logits": "dstart_logits", "end_logits": "dend_logits"}
# biases whose loss gradient is 0 in exact arithmetic: each shifts every position's (every
# choice's) logit alike, which the softmax ignores: the head's bias, and for question
# answering the last LayerNorm's bias too (it adds b @ qa.w to every position)
def shift_biases(kind, layers):
    if kind == "BertForQuestionAnswering":
        return {"qa_outputs.bias", f"bert.encoder.layer.{layers - 1}.output.LayerNorm.bias"}
    return {"classifier.bias"} if kind == "BertForMultipleChoice" else set()


def hf_head(kind, dtype="float64", seed=0, num_labels=None, hidden=H, heads=A, layers=L):
    """A transformers model of class KIND, every parameter random, dropout off."""
    cfg = transformers.BertConfig(
        vocab_size=V, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=I,
        max_position_embeddings=MAXPOS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=0, num_labels=num_labels or NUM_LABELS[kind], attn_implementation="eager")
    return random_hf_model(getattr(transformers, kind), cfg, seed).to(TORCH_DTYPE[dtype])


def minibert_of(hf, kind, dtype):
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    config = interop.config_from_hf(hf.config.to_dict(), dtype)
    num_labels = hf.config.num_labels if kind == "BertForTokenClassification" else None
    params = hf_state.from_hf_state_dict(state, config, kind=kind, num_labels=num_labels)
    cls = MINIBERT_CLASS[kind]
    return cls(config, num_labels, params=params) if num_labels else cls(config, params=params)


def no_pad_id(batch, rng):
    """Padded positions hold ordinary ids (1..V-1): the mask alone says they are padding."""
    batch["input_ids"] = np.where(batch["input_ids"] == 0, rng.integers(1, V, batch["input_ids"].shape),
                                  batch["input_ids"])
    return batch


def drawn_batch(kind, rng, B, T, C):
    """A batch of B rows (B questions of C choices) of T tokens; token labels in [0, C) at
    about half the positions; start and end positions drawn from -2 to T + 2."""
    if kind == "BertForMultipleChoice":
        flat = no_pad_id(make_batch(rng, B * C, T, V, lengths=rng.integers(1, T + 1, B * C), hf=True), rng)
        batch = {k: flat[k].reshape(B, C, T) for k in ("input_ids", "token_type_ids", "attention_mask")}
        batch["labels"] = rng.integers(0, C, B)
        return batch
    batch = no_pad_id(make_batch(rng, B, T, V, lengths=rng.integers(1, T + 1, B), num_labels=2, hf=True), rng)
    del batch["labels"]
    if kind == "BertForTokenClassification":
        batch["labels"] = np.where(rng.random((B, T)) < 0.5, rng.integers(0, C, (B, T)), -100)
    else:
        batch["start_positions"], batch["end_positions"] = rng.integers(-2, T + 3, B), rng.integers(-2, T + 3, B)
    return batch


def batch_for(kind, rng, case="mixed"):
    """case "mixed": labels at some real and some padded positions, answers inside, before
    (clamped to [CLS]) and past the window (ignored); "none": no token labelled, every start
    outside the window (every end inside)."""
    if kind == "BertForMultipleChoice":
        return drawn_batch(kind, rng, 3, 7, 4)
    B, T = 5, 9
    batch = no_pad_id(make_batch(rng, B, T, V, lengths=[9, 6, 2, 7, 4], num_labels=2, hf=True), rng)
    del batch["labels"]
    if kind == "BertForTokenClassification":
        labelled = rng.random((B, T)) < (0.0 if case == "none" else 0.6)
        batch["labels"] = np.where(labelled, rng.integers(0, NUM_LABELS[kind], (B, T)), -100)
    elif case == "none":
        batch["start_positions"], batch["end_positions"] = np.array([9, 10, 30, 9, 11]), np.array([3, 0, 1, 8, 2])
    else:
        batch["start_positions"], batch["end_positions"] = np.array([2, -1, 9, 3, 12]), np.array([4, 0, 5, 20, -7])
    return batch


def run_both(kind, hf, model, batch, upstream=False, seed=5):
    """Errors of minibert against transformers: each output and every gradient."""
    out, cache = model.forward(batch, train=False)
    hf.zero_grad()
    ref = hf(**{k: torch.from_numpy(v) for k, v in batch.items()})
    if upstream:
        rng = np.random.default_rng(seed)
        R = {k: rng.standard_normal(getattr(ref, k).shape) for k in LOGITS[kind]}
        sum(((getattr(ref, k) * torch.from_numpy(r).to(getattr(ref, k).dtype)).sum() for k, r in R.items())).backward()
        grads = model.backward(cache, **{UPSTREAM[k]: r.astype(model.config.dtype) for k, r in R.items()})
    else:
        ref.loss.backward()
        grads = model.backward(cache)
    errs = {k: rel_err(out[k], getattr(ref, k).detach().numpy()) for k in LOGITS[kind]}
    if not upstream:
        errs["loss"] = rel_err(out["loss"], ref.loss.item())
    hf_grads = {k: p.grad.numpy() for k, p in hf.named_parameters()}
    mb = hf_state.to_hf_state_dict(model, grads)
    assert mb.keys() == hf_grads.keys(), sorted(set(mb) ^ set(hf_grads))
    mask = batch["attention_mask"]
    zero = exactly_zero_grads(hf_grads, {"attention_mask": mask.reshape(-1, mask.shape[-1])})  # (B*C, T) for choices
    if not upstream:
        zero |= shift_biases(kind, hf.config.num_hidden_layers)
    for k in hf_grads:
        if k in zero:  # rounding noise on both sides, measured against a weight gradient beside it
            w = k.replace("key.bias", "value.weight") if "key.bias" in k else k.replace("bias", "weight")
            noise, scale = max(np.abs(mb[k]).max(), np.abs(hf_grads[k]).max()), np.abs(hf_grads[w]).max()
            errs["grad " + k] = noise / scale if scale > 0 else noise  # no gradient at all: both exactly 0
        else:
            errs["grad " + k] = rel_err(mb[k], hf_grads[k])
    return errs, out, ref


@pytest.mark.parametrize("upstream", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_logits_loss_and_every_gradient_match(kind, dtype, upstream):
    hf = hf_head(kind, dtype)
    model = minibert_of(hf, kind, dtype)
    errs, _, _ = run_both(kind, hf, model, batch_for(kind, np.random.default_rng(0)), upstream)
    bad = {k: e for k, e in errs.items() if not e <= TOL[dtype]}
    assert not bad, f"{kind} {dtype}: relative errors above {TOL[dtype]}: {bad}"
    print(f"{kind} {dtype} upstream={upstream}: max relative error {max(errs.values()):.2e} over {len(errs)}")


@settings(max_examples=9, deadline=None)
@given(kind=st.sampled_from(KINDS), B=st.integers(1, 3), T=st.integers(1, 8), C=st.integers(1, 4),
       shape=st.sampled_from([(3, 1, 1), (4, 2, 2), (6, 3, 1), (8, 4, 2)]), upstream=st.booleans(),
       seed=st.integers(0, 10**6))
def test_drawn_shapes_match_in_float64(kind, B, T, C, shape, upstream, seed):
    """Drawn batch, sequence and label (or choice) counts and model shapes (hidden, heads, layers)."""
    hidden, heads, layers = shape
    hf = hf_head(kind, seed=seed % 1000, num_labels=C if kind == "BertForTokenClassification" else None,
                 hidden=hidden, heads=heads, layers=layers)
    model = minibert_of(hf, kind, "float64")
    errs, _, _ = run_both(kind, hf, model, drawn_batch(kind, np.random.default_rng(seed), B, T, C), upstream)
    if np.isnan(errs.get("loss", 0.0)):  # nothing kept: transformers' NaN, minibert's 0 (tested below)
        del errs["loss"]
    bad = {k: e for k, e in errs.items() if not e <= 1e-9}
    assert not bad, f"{kind}: relative errors above 1e-9: {bad}"


def test_a_wrong_head_is_caught():
    """The comparison can fail: a token classifier bias 1% off shows in logits and loss."""
    hf = hf_head("BertForTokenClassification")
    model = minibert_of(hf, "BertForTokenClassification", "float64")
    model.params["cls.b"] *= 1.01
    errs, _, _ = run_both("BertForTokenClassification", hf, model, batch_for("BertForTokenClassification",
                                                                              np.random.default_rng(0)))
    assert errs["logits"] > 1e-4 and errs["loss"] > 1e-6


@pytest.mark.parametrize("kind", ["BertForTokenClassification", "BertForQuestionAnswering"])
def test_nothing_labelled_gives_zero_where_transformers_gives_nan(kind):
    """No labelled token, or no start inside the window: transformers' loss (or its start
    half) is a mean over nothing, NaN, and its gradient from that half is zero. minibert's
    half is 0 with the same zero gradient, so every gradient still agrees."""
    hf = hf_head(kind)
    model = minibert_of(hf, kind, "float64")
    errs, out, ref = run_both(kind, hf, model, batch_for(kind, np.random.default_rng(1), case="none"))
    assert np.isnan(ref.loss.item()) and np.isfinite(float(out["loss"]))
    if kind == "BertForTokenClassification":
        assert float(out["loss"]) == 0.0 and out["count"] == 0
    else:
        assert float(out["start_loss"]) == 0.0 and np.isclose(float(out["loss"]), float(out["end_loss"]) / 2)
    errs.pop("loss")
    bad = {k: e for k, e in errs.items() if not e <= 1e-9}
    assert not bad, bad


# ----------------------------------------------------------------------------------------
# checkpoints both ways


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_and_saves_back_into_its_transformers_class(tmp_path, kind):
    hf_head(kind, seed=2).save_pretrained(tmp_path / "src")
    model = interop.load_hf_model(tmp_path / "src", dtype="float64")  # the kind told from the files
    assert type(model) is MINIBERT_CLASS[kind]
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"] if kind == "BertForTokenClassification" else None
    interop.save_hf(model, tmp_path / "out", label_names=names)
    back, info = getattr(transformers, kind).from_pretrained(tmp_path / "out", output_loading_info=True,
                                                             attn_implementation="eager", dtype=torch.float64)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    errs, _, _ = run_both(kind, back.eval(), model, batch_for(kind, np.random.default_rng(3)))
    bad = {k: e for k, e in errs.items() if not e <= 1e-9}
    assert not bad, bad
    again = interop.load_hf_model(tmp_path / "out", dtype="float64")
    assert type(again) is MINIBERT_CLASS[kind]
    for k in model.params:
        assert np.array_equal(model.params[k], again.params[k]), k
    if names:
        assert back.config.id2label == dict(enumerate(names)) and interop.hf_label_names(tmp_path / "out") == names


def test_a_choice_head_and_a_one_label_classifier_are_told_apart(tmp_path):
    """Their weights are alike (a pooler and a (1, H) classifier): config.json's
    architectures decides, and a regression classifier stays one."""
    hf_head("BertForMultipleChoice").save_pretrained(tmp_path / "mc")
    cfg = hf_head("BertForMultipleChoice").config
    cfg.num_labels = 1
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "reg")
    assert type(interop.load_hf_model(tmp_path / "mc")) is BertForMultipleChoice
    reg = interop.load_hf_model(tmp_path / "reg")
    assert type(reg) is BertForSequenceClassification and reg.is_regression
    # and either reads as the other when asked
    assert type(interop.load_hf_model(tmp_path / "reg", kind="BertForMultipleChoice")) is BertForMultipleChoice


def test_heads_cross_between_kinds(tmp_path):
    """A task head needs its own weights (named when missing); any encoder serves from_encoder."""
    hf_head("BertForQuestionAnswering", seed=4).save_pretrained(tmp_path / "qa")
    hf_head("BertForTokenClassification", seed=4).save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match=r"no question-answering head \(qa_outputs\.weight\)"):
        interop.load_hf_model(tmp_path / "tok", kind="BertForQuestionAnswering")
    with pytest.raises(ValueError, match=r"no pooler .* which BertForMultipleChoice needs"):
        interop.load_hf_model(tmp_path / "qa", kind="BertForMultipleChoice")
    config, encoder = interop.load_hf_encoder_params(str(tmp_path / "qa"))
    assert "pool.w" not in encoder and "qa.w" not in encoder
    tok = BertForTokenClassification.from_encoder(config, encoder, num_labels=3, seed=1)
    mc = BertForMultipleChoice.from_encoder(config, encoder, seed=1)  # a fresh pooler
    assert tok.params["cls.w"].shape == (H, 3) and mc.params["pool.w"].shape == (H, H)
