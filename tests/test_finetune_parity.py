"""Parity with transformers.BertForSequenceClassification: same weights, same batch, dropout
off, float64: logits, loss and every gradient to relative 1e-9, for classification (C = 3,
cross-entropy) and regression (C = 1, problem_type "regression", MSE). And a Hugging Face
directory loads through minibert.interop with its encoder intact and a fresh head.

As in tests/test_parity.py, every row has a real token and the pad id 0 appears only at
padded positions, keeping HF's padding_idx and its mask value out of the comparison.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import make_batch, random_hf_model  # noqa: E402
from minibert import backend, hf_state, interop  # noqa: E402
from minibert.classifier import BertForSequenceClassification  # noqa: E402


def rel_err(a, b):
    a, b = np.asarray(backend.to_host(a), dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.abs(b).max()
    return np.abs(a - b).max() / scale if scale > 0 else np.abs(a - b).max()


def hf_classifier(num_labels, seed=0, V=41, H=16, L=2, A=4, I=24, max_pos=24):
    cfg = transformers.BertConfig(
        vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=A, intermediate_size=I,
        max_position_embeddings=max_pos, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=0, num_labels=num_labels, attn_implementation="eager")
    return random_hf_model(transformers.BertForSequenceClassification, cfg, seed).double()


def minibert_from_hf(hf):
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    config = interop.config_from_hf(hf.config.to_dict(), "float64")
    params = hf_state.from_hf_state_dict(state, config, heads=False)
    params["cls.w"] = backend.to_device(np.ascontiguousarray(state["classifier.weight"].T))  # torch (C, H) -> (H, C)
    params["cls.b"] = backend.to_device(state["classifier.bias"].copy())
    return BertForSequenceClassification(config, hf.config.num_labels, params=params)


@pytest.mark.parametrize("num_labels", [3, 1])
def test_logits_loss_and_every_gradient_match(num_labels):
    hf = hf_classifier(num_labels)
    model = minibert_from_hf(hf)
    batch = make_batch(np.random.default_rng(0), 4, 7, 41, num_labels=num_labels, hf=True)
    out, cache = model.forward(batch, train=False)
    grads = model.backward(cache)

    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    ref = hf(**t)
    assert hf.config.problem_type == ("regression" if num_labels == 1 else "single_label_classification")
    ref.loss.backward()

    errs = {"loss": rel_err(out["loss"], ref.loss.item()), "logits": rel_err(out["logits"], ref.logits.detach().numpy())}
    hf_grads = {k: p.grad.numpy() for k, p in hf.named_parameters()}
    mb = hf_state.to_hf_state_dict(model, {k: v for k, v in grads.items() if not k.startswith("cls.")})
    mb["classifier.weight"] = np.asarray(backend.to_host(grads["cls.w"])).T
    mb["classifier.bias"] = np.asarray(backend.to_host(grads["cls.b"]))
    assert mb.keys() == hf_grads.keys(), sorted(set(mb) ^ set(hf_grads))
    for k in hf_grads:
        if k.endswith("attention.self.key.bias"):
            # zero in exact arithmetic (softmax ignores a shift shared by a row): both sides
            # are rounding noise, measured against the same layer's value-weight gradient
            scale = np.abs(hf_grads[k.replace("key.bias", "value.weight")]).max()
            errs["grad " + k] = max(np.abs(mb[k]).max(), np.abs(hf_grads[k]).max()) / scale
        else:
            errs["grad " + k] = rel_err(mb[k], hf_grads[k])
    bad = {k: e for k, e in errs.items() if not e <= 1e-9}
    assert not bad, f"relative errors above 1e-9: {bad}"


def test_from_hf_directory(tmp_path):
    hf = hf_classifier(3, seed=1).float()
    hf.save_pretrained(tmp_path)
    config, encoder = interop.load_hf_encoder_params(str(tmp_path))
    model = BertForSequenceClassification.from_encoder(config, encoder, num_labels=5, seed=4)
    ref = minibert_from_hf(hf.double())
    for k in ref.params:
        if not k.startswith("cls."):
            assert np.allclose(backend.to_host(model.params[k]), backend.to_host(ref.params[k]), rtol=0, atol=1e-7), k
    # the head in the files (3 labels) is ignored: a fresh, seeded one for 5 labels
    assert model.params["cls.w"].shape == (16, 5) and float(abs(model.params["cls.b"]).sum()) == 0
    again = BertForSequenceClassification.from_encoder(*interop.load_hf_encoder_params(str(tmp_path)), 5, seed=4)
    assert np.array_equal(model.params["cls.w"], again.params["cls.w"])
