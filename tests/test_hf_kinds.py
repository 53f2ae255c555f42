"""Every BERT checkpoint kind across the boundary, checked against transformers itself.

For each kind transformers writes (BertForPreTraining, BertForMaskedLM, BertModel,
BertForSequenceClassification), a small random checkpoint is saved by transformers, read by
minibert.interop.load_hf_model, and compared in float64 on one batch: outputs, loss and
every gradient to relative 1e-9, as in tests/test_parity.py (whose helpers and batch rules
are used: pad id 0 only at padded positions, every row with a real token). BertModel has no
loss: both sides take the gradient of sum(seq * R) + sum(pooled * S) for random R (zero at
padded positions), S.
Then minibert writes each back and the same transformers class reads it with no missing,
unexpected or mismatched weights.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import make_batch, random_hf_model  # noqa: E402
from test_parity import exactly_zero_grads, rel_err  # noqa: E402
from minibert import backend, hf_state, interop  # noqa: E402
from minibert.classifier import BertForSequenceClassification  # noqa: E402
from minibert.inference import fill_mask  # noqa: E402
from minibert.model import BertForMaskedLM, BertForPreTraining, BertModel  # noqa: E402

V, H, L, A, I, MAXPOS = 41, 16, 2, 4, 24, 24
KINDS = ["BertForPreTraining", "BertForMaskedLM", "BertModel", "BertForSequenceClassification"]
MINIBERT_CLASS = {"BertForPreTraining": BertForPreTraining, "BertForMaskedLM": BertForMaskedLM,
                  "BertModel": BertModel, "BertForSequenceClassification": BertForSequenceClassification}


def hf_checkpoint(kind, seed=0, num_labels=3):
    """A float64 transformers model of class KIND, every parameter random, dropout off."""
    cfg = transformers.BertConfig(
        vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=A, intermediate_size=I,
        max_position_embeddings=MAXPOS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=0, num_labels=num_labels, attn_implementation="eager")
    return random_hf_model(getattr(transformers, kind), cfg, seed).double()


def batch_for(kind, rng, num_labels=3):
    if kind == "BertForSequenceClassification":
        return make_batch(rng, 4, 9, V, lengths=[9, 6, 2, 7], num_labels=num_labels, hf=True)
    batch = make_batch(rng, 4, 9, V, lengths=[9, 6, 2, 7], hf=True)
    if kind != "BertForPreTraining":
        del batch["next_sentence_label"]
    if kind == "BertModel":
        del batch["labels"]
    return batch


def run_both(kind, hf, model, batch):
    """(minibert outputs, HF outputs, minibert grads in HF names, HF grads), float64 host arrays."""
    out, cache = model.forward(batch, train=False)
    hf.zero_grad()
    ref = hf(**{k: torch.from_numpy(v) for k, v in batch.items()})
    if kind == "BertModel":
        rng = np.random.default_rng(9)
        # zero at padding: HF's pad row gets no lookup gradient (padding_idx), so the loss reads real tokens only
        R = rng.standard_normal(out["sequence_output"].shape) * batch["attention_mask"][:, :, None]  # (B, T, H)
        S = rng.standard_normal(out["pooled_output"].shape)  # (B, H)
        loss = (ref.last_hidden_state * torch.from_numpy(R)).sum() + (ref.pooler_output * torch.from_numpy(S)).sum()
        loss.backward()
        grads = model.backward(cache, dseq=backend.to_device(R), dpooled=backend.to_device(S))
        mine = {"sequence_output": out["sequence_output"], "pooled_output": out["pooled_output"]}
        theirs = {"sequence_output": ref.last_hidden_state.detach().numpy(),
                  "pooled_output": ref.pooler_output.detach().numpy()}
    else:
        ref.loss.backward()
        grads = model.backward(cache)
        mine, theirs = {"loss": out["loss"]}, {"loss": ref.loss.item()}
        if kind == "BertForSequenceClassification":
            mine["logits"], theirs["logits"] = out["logits"], ref.logits.detach().numpy()
        else:
            pos = backend.to_host(out["mlm_positions"])
            logits = ref.prediction_logits if kind == "BertForPreTraining" else ref.logits
            mine["mlm_logits"], theirs["mlm_logits"] = out["mlm_logits"], logits.detach().reshape(-1, V).numpy()[pos]
        if kind == "BertForPreTraining":
            mine["nsp_logits"], theirs["nsp_logits"] = out["nsp_logits"], ref.seq_relationship_logits.detach().numpy()
    hf_grads = {k: p.grad.numpy() for k, p in hf.named_parameters() if p.grad is not None}
    return mine, theirs, hf_state.to_hf_state_dict(model, grads), hf_grads


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_with_output_and_gradient_parity(tmp_path, kind):
    hf = hf_checkpoint(kind)
    hf.save_pretrained(tmp_path)
    model = interop.load_hf_model(tmp_path, dtype="float64")
    assert type(model) is MINIBERT_CLASS[kind]
    batch = batch_for(kind, np.random.default_rng(0))
    mine, theirs, mb_grads, hf_grads = run_both(kind, hf, model, batch)
    errs = {k: rel_err(mine[k], theirs[k]) for k in theirs}
    assert mb_grads.keys() == hf_grads.keys(), sorted(set(mb_grads) ^ set(hf_grads))
    zero = exactly_zero_grads(hf_grads, batch)
    for k in hf_grads:
        if k in zero:  # rounding noise on both sides, measured against the layer's value weight
            scale = np.abs(hf_grads[k.replace("key.bias", "value.weight")]).max()
            errs["grad " + k] = max(np.abs(mb_grads[k]).max(), np.abs(hf_grads[k]).max()) / scale
        else:
            errs["grad " + k] = rel_err(mb_grads[k], hf_grads[k])
    bad = {k: e for k, e in errs.items() if not e <= 1e-9}
    assert not bad, f"{kind}: relative errors above 1e-9: {bad}"
    print(f"{kind}: max relative error {max(errs.values()):.2e} over {len(errs)} tensors")


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_saves_back_into_its_transformers_class(tmp_path, kind):
    model = interop.load_hf_model(_saved(tmp_path / "src", kind), dtype="float64")
    interop.save_hf(model, tmp_path / "out", label_names=["neg", "neu", "pos"] if "Sequence" in kind else None)
    back, info = getattr(transformers, kind).from_pretrained(tmp_path / "out", output_loading_info=True,
                                                             attn_implementation="eager", dtype=torch.float64)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    back.eval()
    batch = batch_for(kind, np.random.default_rng(1))
    mine, theirs, _, _ = run_both(kind, back, model, batch)
    for k in theirs:
        assert rel_err(mine[k], theirs[k]) <= 1e-9, k
    if "Sequence" in kind:
        assert back.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
        assert interop.hf_label_names(tmp_path / "out") == ["neg", "neu", "pos"]


def _saved(path, kind, seed=0):
    hf_checkpoint(kind, seed).save_pretrained(path)
    return path


def test_a_richer_checkpoint_loads_as_a_poorer_kind(tmp_path):
    """A BertForPreTraining directory read as BertForMaskedLM gives what transformers'
    BertForMaskedLM gives on the same directory (which drops the pooler and NSP head too)."""
    path = _saved(tmp_path, "BertForPreTraining", seed=3)
    model = interop.load_hf_model(path, dtype="float64", kind="BertForMaskedLM")
    hf = transformers.BertForMaskedLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float64).eval()
    batch = batch_for("BertForMaskedLM", np.random.default_rng(2))
    mine, theirs, _, _ = run_both("BertForMaskedLM", hf, model, batch)
    for k in theirs:
        assert rel_err(mine[k], theirs[k]) <= 1e-9, k
    encoder = interop.load_hf_model(path, dtype="float64", kind="BertModel")
    assert type(encoder) is BertModel and "mlm.w" not in encoder.params


def test_a_missing_head_is_named(tmp_path):
    enc = _saved(tmp_path / "enc", "BertModel")
    mlm = _saved(tmp_path / "mlm", "BertForMaskedLM")
    with pytest.raises(ValueError, match=r"BertModel checkpoint .* no MLM head \(cls\.predictions\.\*\), which "
                                         r"BertForMaskedLM needs"):
        interop.load_hf_model(enc, kind="BertForMaskedLM")
    with pytest.raises(ValueError, match=r"no NSP head \(cls\.seq_relationship\.weight\) and no pooler"):
        interop.load_hf(mlm)
    with pytest.raises(ValueError, match="no classifier"):
        interop.load_hf_model(mlm, kind="BertForSequenceClassification")
    model = interop.load_hf_model(enc)
    with pytest.raises(ValueError, match="has no MLM head, so it cannot fill in"):
        fill_mask(model, None, "a [MASK]")
    with pytest.raises(ValueError, match="no loss"):
        model.loss_and_grads({"input_ids": np.ones((1, 3), np.int64)})


def test_fine_tuning_from_a_masked_lm_draws_a_pooler(tmp_path):
    """transformers' BertForMaskedLM has no pooler; a classifier from it gets a fresh one."""
    path = _saved(tmp_path, "BertForMaskedLM", seed=4)
    config, encoder = interop.load_hf_encoder_params(str(path))
    assert "pool.w" not in encoder
    clf = BertForSequenceClassification.from_encoder(config, encoder, num_labels=2, seed=5)
    ref = interop.load_hf_model(path, dtype="float32")
    assert clf.params["pool.w"].shape == (H, H) and float(abs(clf.params["pool.w"]).max()) > 0
    assert np.array_equal(backend.to_host(clf.params["layers.1.ffn.w_fc"]), backend.to_host(ref.params["layers.1.ffn.w_fc"]))
