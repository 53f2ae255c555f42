"""The whole pretraining model: gradient of the loss w.r.t. every parameter tensor, input
validation, and the documented edge cases (no labelled position, fully padded rows)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import make_batch, tiny_config
from minibert import backend, philox
from minibert.gradcheck import check_directional, check_gradients
from minibert.model import (BertConfig, BertForMaskedLM, BertForPreTraining, BertModel, masked_lm_param_shapes,
                            pretraining_model, pretraining_param_shapes)


@settings(max_examples=6, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 6), heads=st.sampled_from([1, 2, 4]),
       dropout=st.sampled_from([0.0, 0.1]), act=st.sampled_from(["gelu", "gelu_tanh"]), seed=st.integers(0, 10**6))
def test_model_gradients_every_param(B, T, heads, dropout, act, seed):
    rng = np.random.default_rng(seed)
    c = tiny_config(num_heads=heads, dropout=dropout, attention_dropout=dropout, hidden_act=act)
    model = BertForPreTraining(c, seed=seed)
    for k in model.params:  # non-trivial LayerNorm weights and biases, so their gradients are tested
        if k.endswith((".w", ".b", "bias")) and model.params[k].ndim == 1:
            model.params[k] += backend.to_device(rng.standard_normal(model.params[k].shape) * 0.1)
    batch = make_batch(rng, B, T, c.vocab_size)
    # a fixed dropout stream makes the loss a fixed function for finite differences
    f = lambda: model.loss_and_grads(batch, rng=philox.rng(seed))[0]
    _, grads = model.loss_and_grads(batch, rng=philox.rng(seed))
    assert grads.keys() == model.params.keys()
    check_gradients(f, model.params, grads, eps=1e-5, rtol=1e-5, atol=1e-7, max_coords=6, seed=seed)
    check_directional(f, model.params, grads, eps=1e-5, rtol=1e-5, atol=1e-7, seed=seed)


def test_no_labelled_position_gives_zero_mlm_loss():
    rng = np.random.default_rng(0)
    c = tiny_config()
    model = BertForPreTraining(c)
    batch = make_batch(rng, 2, 5, c.vocab_size, n_masked=0)
    out, cache = model.forward(batch, train=False)
    assert float(out["mlm_loss"]) == 0.0 and out["mlm_count"] == 0
    grads = model.backward(cache)
    assert all(np.isfinite(backend.to_host(g)).all() for g in grads.values())
    assert float(abs(grads["mlm.bias"]).sum()) == 0.0  # nothing flowed through the MLM head
    check_directional(lambda: model.loss_and_grads(batch, train=False)[0], model.params, grads)


def test_fully_padded_row_is_finite():
    rng = np.random.default_rng(1)
    c = tiny_config()
    model = BertForPreTraining(c)
    batch = make_batch(rng, 3, 6, c.vocab_size, lengths=[6, 0, 3])
    loss, grads = model.loss_and_grads(batch, train=False)
    assert np.isfinite(loss)
    assert all(np.isfinite(backend.to_host(g)).all() for g in grads.values())


def test_tied_embedding_gets_both_contributions():
    rng = np.random.default_rng(2)
    c = tiny_config()
    model = BertForPreTraining(c)
    batch = make_batch(rng, 2, 6, c.vocab_size, n_masked=3)
    _, grads = model.loss_and_grads(batch, train=False)
    # a vocabulary row that never occurs in the input still gets gradient from the decoder
    unused = sorted(set(range(c.vocab_size)) - set(batch["input_ids"].ravel().tolist()))
    assert unused and float(abs(backend.to_host(grads["emb.word"])[unused]).sum()) > 0


def test_dropout_train_vs_eval():
    rng = np.random.default_rng(3)
    model = BertForPreTraining(tiny_config(dropout=0.3, attention_dropout=0.3))
    batch = make_batch(rng, 2, 6, 23)
    l_eval1 = model.loss_and_grads(batch, train=False)[0]
    l_eval2 = model.loss_and_grads(batch, train=False)[0]
    l_a = model.loss_and_grads(batch, rng=philox.rng(5))[0]
    l_b = model.loss_and_grads(batch, rng=philox.rng(5))[0]
    l_c = model.loss_and_grads(batch, rng=philox.rng(6))[0]
    assert l_eval1 == l_eval2 and l_a == l_b and l_a != l_c and l_a != l_eval1


def test_float32_default_stays_float32():
    model = BertForPreTraining(tiny_config(dtype="float32"))
    batch = make_batch(np.random.default_rng(4), 2, 5, 23)
    out, cache = model.forward(batch)
    assert out["mlm_logits"].dtype == np.float32 and out["loss"].dtype == np.float32
    assert all(g.dtype == np.float32 for g in model.backward(cache).values())


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.update(input_ids=b["input_ids"] + 100), "outside the vocabulary"),
    (lambda b: b.update(input_ids=-b["input_ids"] - 1), "outside the vocabulary"),
    (lambda b: b.update(input_ids=np.zeros((2, 40), np.int64)), "exceeds max_position"),
    (lambda b: b.update(attention_mask=b["attention_mask"][:, :3]), "attention_mask"),
    (lambda b: b.update(input_ids=b["input_ids"].astype(np.float32)), "must hold integers"),
    (lambda b: b.update(labels=b["labels"] + 1000), "labels"),
    (lambda b: b.update(next_sentence_label=np.array([0, 2])), "next_sentence_label"),
    (lambda b: b.update(next_sentence_label=np.array([0])), "next_sentence_label"),
    (lambda b: b.pop("labels"), "missing 'labels'"),
    (lambda b: b.update(token_type_ids=b["token_type_ids"] + 2), "token_type_ids"),
    (lambda b: b.update(attention_mask=b["attention_mask"] * 2), "attention_mask"),
])
def test_bad_input_is_a_clear_value_error(mutate, message):
    c = tiny_config()
    model = BertForPreTraining(c)
    batch = make_batch(np.random.default_rng(5), 2, 6, c.vocab_size)
    mutate(batch)
    with pytest.raises(ValueError, match=message):
        model.loss_and_grads(batch)


@pytest.mark.parametrize("kw", [dict(hidden_size=10, num_heads=4), dict(dropout=1.0), dict(dtype="float16"),
                                dict(hidden_act="relu"), dict(vocab_size=0)])
def test_bad_config(kw):
    with pytest.raises(ValueError):
        tiny_config(**kw)


# ----------------------------------------------------------------------------------------
# edges found by mutation testing (docs/testing.md)


def test_predict_is_the_evaluation_forward():
    """With dropout in the config, predict draws no mask: repeated calls agree with each other
    and with forward(train=False), and differ from a training forward."""
    c = tiny_config(dropout=0.3, attention_dropout=0.3)
    model = BertForPreTraining(c, seed=4)
    batch = make_batch(np.random.default_rng(5), 3, 6, c.vocab_size, n_masked=3)
    a, b = model.predict(batch), model.predict(batch)
    ref = model.forward(batch, train=False)[0]
    train = model.forward(batch, train=True)[0]
    np.testing.assert_array_equal(backend.to_host(a["mlm_logits"]), backend.to_host(b["mlm_logits"]))
    np.testing.assert_array_equal(backend.to_host(a["mlm_logits"]), backend.to_host(ref["mlm_logits"]))
    assert not np.allclose(backend.to_host(a["mlm_logits"]), backend.to_host(train["mlm_logits"]))


def test_config_round_trip_and_parameter_count():
    c = tiny_config(num_layers=3)
    assert BertConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown BertConfig fields"):
        BertConfig.from_dict({**c.to_dict(), "hiden_size": 8})
    V, H, I, P, L = 23, 8, 12, 16, 3  # tiny_config's sizes, counted by hand below
    per_layer = (H * 3 * H + 3 * H) + (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
    encoder = V * H + P * H + 2 * H + 2 * H + L * per_layer + H * H + H
    heads = H * H + H + 2 * H + V + H * 2 + 2
    assert BertForPreTraining(c).num_parameters() == encoder + heads


def test_initialisation_follows_bert():
    """Weights ~ N(0, initializer_range), every bias 0, LayerNorm weight 1 and bias 0."""
    c = tiny_config(vocab_size=500, hidden_size=32, intermediate_size=64, initializer_range=0.05)
    params = {k: np.asarray(backend.to_host(v)) for k, v in BertForPreTraining(c, seed=6).params.items()}
    for k, v in params.items():
        if k.endswith((".ln.w", ".ln1.w", ".ln2.w")):  # the LayerNorm weights
            np.testing.assert_array_equal(v, 1.0, err_msg=k)
        elif v.ndim == 1:
            np.testing.assert_array_equal(v, 0.0, err_msg=k)
    w = params["emb.word"]  # 16,000 draws: mean within 5 sigma of 0, std within 3 % of 0.05
    assert abs(w.mean()) < 5 * 0.05 / np.sqrt(w.size) and abs(w.std() / 0.05 - 1) < 0.03


# ----------------------------------------------------------------------------------------
# found by mutation testing (docs/testing.md): the other model classes, the on_ready hook,
# the metrics in `out`, global_counts, the seed


def _perturbed(model, rng):
    """Non-trivial LayerNorm weights and biases, so their gradients are tested too."""
    for k in model.params:
        if model.params[k].ndim == 1:
            model.params[k] += backend.to_device(rng.standard_normal(model.params[k].shape) * 0.1)
    return model


def test_masked_lm_gradients_every_param():
    rng = np.random.default_rng(11)
    c = tiny_config(dropout=0.1, attention_dropout=0.1, hidden_act="gelu_tanh")
    model = _perturbed(BertForMaskedLM(c, seed=11), rng)
    batch = make_batch(rng, 3, 5, c.vocab_size, n_masked=2)
    f = lambda: model.loss_and_grads(batch, rng=philox.rng(11))[0]
    loss, grads = model.loss_and_grads(batch, rng=philox.rng(11))
    assert grads.keys() == model.params.keys() and "pool.w" not in grads
    out = model.forward(batch, rng=philox.rng(11))[0]
    assert loss == float(out["mlm_loss"])  # the loss is the MLM loss alone
    check_gradients(f, model.params, grads, eps=1e-5, rtol=1e-5, atol=1e-7, max_coords=6, seed=11)
    check_directional(f, model.params, grads, eps=1e-5, rtol=1e-5, atol=1e-7, seed=11)


@pytest.mark.parametrize("upstream", ["both", "seq", "pooled"])
def test_bare_encoder_gradients_every_param(upstream):
    """BertModel has no loss: the loss here is <dseq, seq> + <dpooled, pooled> with random
    upstream gradients, and the pooler's gradient is exactly 0 when pooled takes no part."""
    rng = np.random.default_rng(12)
    c = tiny_config()
    model = _perturbed(BertModel(c, seed=12), rng)
    batch = make_batch(rng, 2, 5, c.vocab_size)
    B, T, H = 2, 5, c.hidden_size
    dseq = rng.standard_normal((B, T, H)) if upstream != "pooled" else None
    dpooled = rng.standard_normal((B, H)) if upstream != "seq" else None

    def f():
        out = model.forward(batch, train=False)[0]
        seq, pooled = backend.to_host(out["sequence_output"]), backend.to_host(out["pooled_output"])
        return float((0.0 if dseq is None else (dseq * seq).sum()) + (0.0 if dpooled is None else (dpooled * pooled).sum()))

    cache = model.forward(batch, train=False)[1]
    grads = model.backward(cache, None if dseq is None else backend.to_device(dseq),
                           None if dpooled is None else backend.to_device(dpooled))
    assert grads.keys() == model.params.keys()
    if dpooled is None:
        assert float(abs(grads["pool.w"]).sum()) == 0.0 and float(abs(grads["pool.b"]).sum()) == 0.0
    check_gradients(f, model.params, grads, eps=1e-5, rtol=1e-5, atol=1e-7, max_coords=6, seed=12)
    check_directional(f, model.params, grads, eps=1e-5, rtol=1e-5, atol=1e-7, seed=12)


@pytest.mark.parametrize("cls", [BertForPreTraining, BertForMaskedLM])
def test_on_ready_hands_over_every_final_gradient_once(cls):
    """backward(cache, on_ready) hands each parameter's gradient over exactly once, already
    final: what it was handed equals what backward returns (distributed.py sums it then)."""
    rng = np.random.default_rng(13)
    c = tiny_config(num_layers=2)
    model = cls(c, seed=13)
    batch = make_batch(rng, 2, 5, c.vocab_size, n_masked=2)
    out, cache = model.forward(batch, train=False)
    handed = []
    grads = model.backward(cache, on_ready=lambda group: handed.extend((k, backend.to_host(v).copy())
                                                                       for k, v in group.items()))
    names = [k for k, _ in handed]
    assert sorted(names) == sorted(model.params) and len(set(names)) == len(names)
    for k, v in handed:
        np.testing.assert_array_equal(v, backend.to_host(grads[k]), err_msg=k)
    # and without a listener, the same gradients
    plain = model.backward(model.forward(batch, train=False)[1])
    for k in grads:
        np.testing.assert_array_equal(backend.to_host(plain[k]), backend.to_host(grads[k]), err_msg=k)


def test_forward_reports_predictions_and_counts():
    """out's predictions and counts, against argmax and counts taken from the logits and the
    batch here."""
    rng = np.random.default_rng(14)
    c = tiny_config()
    model = BertForPreTraining(c, seed=14)
    batch = make_batch(rng, 4, 6, c.vocab_size, n_masked=3)
    batch["next_sentence_label"] = np.array([0, 1, 1, 0])
    out = model.forward(batch, train=False)[0]
    labels = batch["labels"].reshape(-1)
    pos = np.flatnonzero(labels != -100)
    mlm_logits, nsp_logits = backend.to_host(out["mlm_logits"]), backend.to_host(out["nsp_logits"])
    assert mlm_logits.shape == (len(pos), c.vocab_size) and nsp_logits.shape == (4, 2)
    # make some predictions right, so that "correct" is neither 0 nor everything
    mlm_pred, nsp_pred = mlm_logits.argmax(axis=1), nsp_logits.argmax(axis=1)
    np.testing.assert_array_equal(backend.to_host(out["mlm_preds"]), mlm_pred)
    np.testing.assert_array_equal(backend.to_host(out["nsp_preds"]), nsp_pred)
    np.testing.assert_array_equal(backend.to_host(out["mlm_labels"]), labels[pos])
    np.testing.assert_array_equal(backend.to_host(out["mlm_positions"]), pos)
    assert int(out["mlm_correct"]) == int((mlm_pred == labels[pos]).sum()) and out["mlm_count"] == len(pos)
    assert int(out["nsp_correct"]) == int((nsp_pred == batch["next_sentence_label"]).sum()) and out["nsp_count"] == 4
    batch["next_sentence_label"] = nsp_pred  # every NSP prediction right, then every one wrong
    assert int(model.forward(batch, train=False)[0]["nsp_correct"]) == 4
    batch["next_sentence_label"] = 1 - nsp_pred
    assert int(model.forward(batch, train=False)[0]["nsp_correct"]) == 0
    for k in ("loss", "mlm_loss", "nsp_loss"):
        assert np.isfinite(float(out[k]))
    assert float(out["loss"]) == float(out["mlm_loss"]) + float(out["nsp_loss"])


@pytest.mark.parametrize("cls", [BertForPreTraining, BertForMaskedLM])
def test_global_counts_divide_the_summed_losses(cls):
    """global_counts (labelled positions, pairs) of a global batch twice this one's size:
    each loss is this batch's sum over twice the count, so losses and gradients halve."""
    rng = np.random.default_rng(15)
    c = tiny_config()
    model = cls(c, seed=15)
    batch = make_batch(rng, 3, 6, c.vocab_size, n_masked=2)
    P = int((batch["labels"] != -100).sum())
    out, cache = model.forward(batch, train=False)
    out2, cache2 = model.forward(batch, train=False, global_counts=(2 * P, 2 * 3))
    for k in ("mlm_loss", "nsp_loss") if cls is BertForPreTraining else ("mlm_loss",):
        np.testing.assert_allclose(float(out2[k]), float(out[k]) / 2, rtol=1e-12, err_msg=k)
    g, g2 = model.backward(cache), model.backward(cache2)
    for k in g:
        np.testing.assert_allclose(backend.to_host(g2[k]), backend.to_host(g[k]) / 2, rtol=1e-10, atol=1e-15,
                                   err_msg=k)


def test_the_seed_fixes_weights_and_the_dropout_stream():
    """The seed draws the weights (0 by default) and keys the model's own dropout stream;
    forward trains (dropout on) unless told otherwise."""
    c = tiny_config(dropout=0.3, attention_dropout=0.3)
    batch = make_batch(np.random.default_rng(16), 2, 6, c.vocab_size, n_masked=2)
    host = lambda m: {k: backend.to_host(v) for k, v in m.params.items()}
    a, b, other = host(BertForPreTraining(c)), host(BertForPreTraining(c, seed=0)), host(BertForPreTraining(c, seed=1))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["emb.word"], other["emb.word"])
    same = lambda seed: BertForPreTraining(c, seed=seed, params={k: backend.to_device(v.copy()) for k, v in a.items()})
    loss = lambda m, **kw: float(m.forward(batch, **kw)[0]["loss"])
    assert loss(same(3)) == loss(same(3), train=True)  # forward's default is training
    assert loss(same(3)) != loss(same(4))  # same weights, another seed: other dropout masks
    assert loss(same(3)) != loss(same(3), train=False)


def test_embedding_dropout_is_applied_in_training():
    """The embedding output is dropped too (BERT's hidden_dropout_prob after the embedding
    LayerNorm), in training only."""
    c = tiny_config(hidden_size=32, intermediate_size=16, num_heads=2, dropout=0.5, attention_dropout=0.0)
    model = BertForPreTraining(c, seed=17)
    batch = make_batch(np.random.default_rng(17), 4, 8, c.vocab_size, n_masked=2)
    train_cache = model.forward(batch, train=True)[1].c_enc
    eval_cache = model.forward(batch, train=False)[1].c_enc
    keep, scale = train_cache.c_edrop
    assert eval_cache.c_edrop is None and scale == 2.0
    assert 0.3 < float(backend.to_host(keep).mean()) < 0.7  # 1,024 draws at p = 0.5


def test_pretraining_model_by_checkpoint_meta():
    assert pretraining_model({})[0] is BertForPreTraining  # runs older than BertForMaskedLM
    assert pretraining_model({"model_class": "BertForPreTraining"}) == (BertForPreTraining, pretraining_param_shapes)
    assert pretraining_model({"model_class": "BertForMaskedLM"}) == (BertForMaskedLM, masked_lm_param_shapes)
    with pytest.raises(ValueError, match="BertModel"):
        pretraining_model({"model_class": "BertModel"})


@pytest.mark.parametrize("cls", [BertForPreTraining, BertForMaskedLM, BertModel])
def test_every_model_class_takes_its_seed_and_given_params(cls):
    """Each class draws its weights from seed (0 by default), keeps params it is given, and
    keys its own dropout stream by the seed."""
    c = tiny_config(dropout=0.3, attention_dropout=0.3)
    batch = make_batch(np.random.default_rng(18), 2, 6, c.vocab_size, n_masked=2)
    host = lambda m: {k: backend.to_host(v).copy() for k, v in m.params.items()}
    a, b, other = host(cls(c)), host(cls(c, seed=0)), host(cls(c, seed=1))
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["emb.word"], other["emb.word"])
    given = {k: backend.to_device(v + 0.5) for k, v in a.items()}
    assert cls(c, params=given).params is given
    key = "sequence_output" if cls is BertModel else "loss"
    first = lambda seed: backend.to_host(cls(c, seed=seed, params={k: v.copy() for k, v in given.items()})
                                         .forward(batch)[0][key])
    np.testing.assert_array_equal(first(3), first(3))
    assert not np.array_equal(first(3), first(4))  # same weights, another seed: other dropout masks


def test_bare_encoder_needs_no_labels():
    c = tiny_config()
    batch = make_batch(np.random.default_rng(19), 2, 5, c.vocab_size)
    unlabelled = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    out = BertModel(c).forward(unlabelled, train=False)[0]
    np.testing.assert_array_equal(backend.to_host(out["sequence_output"]),
                                  backend.to_host(BertModel(c).forward(batch, train=False)[0]["sequence_output"]))


@pytest.mark.parametrize("cls", [BertForMaskedLM, BertModel])
def test_a_given_rng_draws_the_dropout_masks(cls):
    """forward(batch, rng=...) draws its masks from that stream: the same stream gives the
    same output on one model, call after call; another stream another output."""
    c = tiny_config(dropout=0.3, attention_dropout=0.3)
    model = cls(c, seed=20)
    batch = make_batch(np.random.default_rng(20), 2, 6, c.vocab_size, n_masked=2)
    key = "sequence_output" if cls is BertModel else "loss"
    run = lambda s: backend.to_host(model.forward(batch, rng=philox.rng(s))[0][key])
    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_masked_lm_reports_predictions_and_needs_no_nsp_label():
    """BertForMaskedLM's out against argmax and counts taken here; its batches need no
    next_sentence_label."""
    rng = np.random.default_rng(21)
    c = tiny_config()
    model = BertForMaskedLM(c, seed=21)
    batch = make_batch(rng, 3, 6, c.vocab_size, n_masked=3)
    del batch["next_sentence_label"]
    out = model.forward(batch, train=False)[0]
    labels = batch["labels"].reshape(-1)
    pos = np.flatnonzero(labels != -100)
    logits = backend.to_host(out["mlm_logits"])
    assert logits.shape == (len(pos), c.vocab_size)
    pred = logits.argmax(axis=1)
    np.testing.assert_array_equal(backend.to_host(out["mlm_preds"]), pred)
    np.testing.assert_array_equal(backend.to_host(out["mlm_labels"]), labels[pos])
    np.testing.assert_array_equal(backend.to_host(out["mlm_positions"]), pos)
    assert int(out["mlm_correct"]) == int((pred == labels[pos]).sum()) and out["mlm_count"] == len(pos)
    batch["labels"].reshape(-1)[pos] = pred  # every prediction right
    assert int(model.forward(batch, train=False)[0]["mlm_correct"]) == len(pos)
    assert float(out["loss"]) == float(out["mlm_loss"])


@pytest.mark.parametrize("cls", [BertForMaskedLM, BertModel])
def test_float32_stays_float32_in_the_other_classes(cls):
    """As test_float32_default_stays_float32, for the classes whose backward starts from
    the sequence output alone (a float64 zero-filled dseq would turn every gradient below
    it into float64)."""
    c = tiny_config(dtype="float32")
    model = cls(c)
    batch = make_batch(np.random.default_rng(22), 2, 5, c.vocab_size, n_masked=2)
    out, cache = model.forward(batch)
    if cls is BertModel:
        assert out["sequence_output"].dtype == np.float32 and out["pooled_output"].dtype == np.float32
        seq = out["sequence_output"]
        grads = model.backward(cache, backend.to_device(np.random.default_rng(23).standard_normal(seq.shape)
                                                        .astype(np.float32)))
    else:
        assert out["mlm_logits"].dtype == np.float32 and out["loss"].dtype == np.float32
        grads = model.backward(cache)
    assert all(g.dtype == np.float32 for g in grads.values()), {k: g.dtype for k, g in grads.items()}


@pytest.mark.parametrize("p_drop, p_attn", [(0.5, 0.0), (0.0, 0.5), (0.25, 0.5)])
def test_every_layer_drops_at_its_own_rates_in_training(p_drop, p_attn):
    """In training each layer drops after attention and after the feed-forward block at
    config.dropout, and the attention probabilities at config.attention_dropout; the
    masks' kept fractions match the rates (a few thousand draws each)."""
    c = tiny_config(hidden_size=32, intermediate_size=16, num_heads=2, dropout=p_drop, attention_dropout=p_attn)
    model = BertForPreTraining(c, seed=24)
    batch = make_batch(np.random.default_rng(24), 8, 12, c.vocab_size, n_masked=2)
    layers_cache = model.forward(batch, train=True)[1].c_enc.c_layers
    assert len(layers_cache) == c.num_layers
    for cl in layers_cache:
        for cache, p in ((cl.c_drop1, p_drop), (cl.c_drop2, p_drop), (cl.c_attn.c_drop, p_attn)):
            if p == 0.0:
                assert cache is None
            else:
                keep, scale = cache
                assert abs(float(backend.to_host(keep).mean()) - (1 - p)) < 0.06 and scale == 1 / (1 - p)


def test_the_own_dropout_stream_is_keyed_by_seed_and_forward_count():
    """Without an rng, the n-th training forward draws its masks from philox.rng((seed, n)),
    as BertBase.dropout_rng says: each step new masks, the same on every run."""
    c = tiny_config(dropout=0.3, attention_dropout=0.3)
    model = BertForPreTraining(c, seed=25)
    batch = make_batch(np.random.default_rng(25), 2, 6, c.vocab_size, n_masked=2)
    own = [float(model.forward(batch)[0]["loss"]) for _ in range(3)]
    keyed = [float(model.forward(batch, rng=philox.rng((25, n)))[0]["loss"]) for n in (1, 2, 3)]
    assert own == keyed and len(set(own)) == 3
    assert float(model.forward(batch, train=False)[0]["loss"]) == float(model.predict(batch)["loss"])


def test_batch_checks_at_their_boundaries():
    """validate_batch at the edges: the first id, type and label past the vocabulary are
    refused (naming the bad id), empty batches are refused, and token_type_ids and
    attention_mask default to zeros and ones. Found by mutation testing."""
    c = tiny_config()
    model = BertForPreTraining(c)
    base = make_batch(np.random.default_rng(26), 2, 5, c.vocab_size, n_masked=2)
    base["input_ids"][:] = 3  # every id valid, none 0
    base["input_ids"][0, 0] = 0

    def refused(match, **change):
        b = {k: v.copy() for k, v in base.items()}
        for k, f in change.items():
            b[k] = f(b[k])
        with pytest.raises(ValueError, match=match):
            model.forward(b, train=False)

    def set_at(value, where=(1, 2)):
        def f(a):
            a[where] = value
            return a
        return f

    refused(rf"token id {c.vocab_size} in input_ids", input_ids=set_at(c.vocab_size))
    refused(r"token id -1 in input_ids", input_ids=set_at(-1))
    refused(r"token_type_ids must be in", token_type_ids=set_at(c.type_vocab_size))
    refused(rf"labels must be .* got {c.vocab_size}", labels=set_at(c.vocab_size))
    refused(r"shape \(B, T\)", input_ids=lambda a: a[:0], token_type_ids=lambda a: a[:0],
            attention_mask=lambda a: a[:0], labels=lambda a: a[:0], next_sentence_label=lambda a: a[:0])
    refused(r"shape \(B, T\)", input_ids=lambda a: a[:, :0], token_type_ids=lambda a: a[:, :0],
            attention_mask=lambda a: a[:, :0], labels=lambda a: a[:, :0])
    refused(r"must hold integers", input_ids=lambda a: a.astype(np.float64))
    # the defaults: no token_type_ids means all type 0, no attention_mask means no padding
    full = {k: v for k, v in base.items() if k not in ("token_type_ids", "attention_mask")}
    explicit = {**full, "token_type_ids": np.zeros_like(base["input_ids"]), "attention_mask": np.ones_like(base["input_ids"])}
    assert float(model.forward(full, train=False)[0]["loss"]) == float(model.forward(explicit, train=False)[0]["loss"])
