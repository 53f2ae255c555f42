"""The task heads (token classification, question answering, multiple choice): gradient of the
loss, and of a random upstream gradient on the logits, w.r.t. every parameter tensor by
central differences in float64 over Hypothesis-drawn shapes, with the edges (padded and fully
padded rows, no labelled position, answers outside the window, one choice); their losses
against plain NumPy formulas; the checker catching a wrong head bias gradient; from_encoder;
input validation. Parity with transformers is tests/test_task_heads_parity.py."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import make_batch, tiny_config
from minibert import backend, philox
from minibert.gradcheck import GradientCheckError, check_directional, check_gradients
from minibert.losses import cross_entropy_ignore_backward, cross_entropy_ignore_forward
from minibert.model import BertModel, IGNORE_INDEX
from minibert.multiple_choice import BertForMultipleChoice
from minibert.question_answering import BertForQuestionAnswering
from minibert.token_classifier import BertForTokenClassification

TOL = dict(eps=1e-5, rtol=1e-5, atol=1e-7)


def host(a):
    return np.asarray(backend.to_host(a))


def perturbed(model, rng):
    """Non-trivial LayerNorm weights, biases and head weights, so their gradients are tested."""
    for k, p in model.params.items():
        if p.ndim == 1 or k in ("cls.w", "qa.w"):
            p += backend.to_device(rng.standard_normal(p.shape) * 0.3)
    return model


def check_model(model, batch, seed, upstream):
    """The loss's gradient (upstream None) or that of sum(logits * R) for the random R of
    `upstream`: {backward keyword: (out key, R)}, every parameter tensor."""
    rng = lambda: philox.rng(seed)  # a fixed dropout stream makes f a fixed function
    if upstream is None:
        f = lambda: model.loss_and_grads(batch, rng=rng())[0]
        grads = model.loss_and_grads(batch, rng=rng())[1]
    else:
        def f():
            out = model.forward(batch, rng=rng())[0]
            return sum(float((host(out[k]) * r).sum()) for k, r in upstream.values())
        cache = model.forward(batch, rng=rng())[1]
        grads = model.backward(cache, **{kw: backend.to_device(r) for kw, (_, r) in upstream.items()})
    assert grads.keys() == model.params.keys()
    check_gradients(f, model.params, grads, max_coords=6, seed=seed, **TOL)
    check_directional(f, model.params, grads, seed=seed, **TOL)
    return grads


# ----------------------------------------------------------------------------------------
# the loss: cross-entropy over the rows not ignored


@settings(max_examples=20, deadline=None)
@given(R=st.integers(0, 6), K=st.integers(1, 5), ignored=st.sampled_from([0.0, 0.5, 1.0]), seed=st.integers(0, 10**6))
def test_cross_entropy_ignore_pair(R, K, ignored, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((R, K)) * 3
    targets = np.where(rng.random(R) < ignored, -7, rng.integers(0, K, R))
    dloss = float(rng.standard_normal())  # a random upstream
    loss, cache = cross_entropy_ignore_forward(logits, targets, -7)
    kept = [(row, t) for row, t in zip(logits, targets) if t != -7]
    # the formula, written out: -log softmax(row)[t], averaged over the kept rows (0 for none)
    ref = np.mean([np.log(np.exp(row).sum()) - row[t] for row, t in kept]) if kept else 0.0
    assert np.isclose(float(loss), ref, rtol=1e-12, atol=1e-15)
    (dlogits,) = cross_entropy_ignore_backward(dloss, cache)
    assert dlogits.shape == (R, K) and not dlogits[targets == -7].any()
    check_gradients(lambda: dloss * float(cross_entropy_ignore_forward(logits, targets, -7)[0]),
                    {"logits": logits}, {"logits": dlogits})


# ----------------------------------------------------------------------------------------
# token classification


@settings(max_examples=6, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 6), C=st.sampled_from([1, 2, 5]), heads=st.sampled_from([1, 2, 4]),
       dropout=st.sampled_from([0.0, 0.2]), ignored=st.sampled_from([0.0, 0.5, 1.0]),
       upstream=st.booleans(), seed=st.integers(0, 10**6))
def test_token_classifier_gradients_every_param(B, T, C, heads, dropout, ignored, upstream, seed):
    rng = np.random.default_rng(seed)
    c = tiny_config(num_heads=heads, dropout=dropout, attention_dropout=dropout)
    model = perturbed(BertForTokenClassification(c, C, seed=seed), rng)
    lengths = rng.integers(0, T + 1, B)  # 0: a fully padded row
    batch = make_batch(rng, B, T, c.vocab_size, lengths=lengths, num_labels=C)
    # labels at real positions, ignored at padding and at a drawn share of the rest (all of them: no labelled position)
    real = np.arange(T)[None] < lengths[:, None]
    batch["labels"] = np.where(real & (rng.random((B, T)) >= ignored), rng.integers(0, C, (B, T)), IGNORE_INDEX)
    check_model(model, batch, seed, {"dlogits": ("logits", rng.standard_normal((B, T, C)))} if upstream else None)


def test_token_classifier_loss_and_metrics_by_hand():
    rng = np.random.default_rng(1)
    c = tiny_config()
    model = perturbed(BertForTokenClassification(c, 4, seed=1), rng)
    batch = make_batch(rng, 3, 5, c.vocab_size, lengths=[5, 3, 0], num_labels=4)
    batch["labels"] = np.array([[0, 3, -100, 1, 2], [-100, 2, 2, -100, -100], [-100] * 5])
    out = model.forward(batch, train=False)[0]
    logits, y = host(out["logits"]), batch["labels"]
    assert logits.shape == (3, 5, 4) and host(out["preds"]).shape == (3, 5)
    b, t = np.nonzero(y != -100)
    logp = logits[b, t] - np.log(np.exp(logits[b, t]).sum(axis=1, keepdims=True))  # (P, C)
    assert np.isclose(float(out["loss"]), -logp[np.arange(len(b)), y[b, t]].mean(), rtol=1e-12)
    assert out["count"] == 6 and int(out["correct"]) == int((logits[b, t].argmax(1) == y[b, t]).sum())


def test_token_classifier_with_no_labelled_position_has_zero_loss_and_gradient():
    """transformers gives NaN here (a mean over no positions) with a zero gradient;
    minibert gives 0 and the same zero gradient (test_task_heads_parity checks both)."""
    c = tiny_config()
    model = BertForTokenClassification(c, 3, seed=2)
    batch = make_batch(np.random.default_rng(2), 2, 4, c.vocab_size, num_labels=3)
    batch["labels"] = np.full((2, 4), IGNORE_INDEX)
    loss, grads = model.loss_and_grads(batch, train=False)
    assert loss == 0.0 and all(not host(g).any() for g in grads.values())


# ----------------------------------------------------------------------------------------
# question answering


@settings(max_examples=6, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 6), heads=st.sampled_from([1, 2, 4]),
       dropout=st.sampled_from([0.0, 0.2]), upstream=st.booleans(), seed=st.integers(0, 10**6))
def test_question_answering_gradients_every_param(B, T, heads, dropout, upstream, seed):
    rng = np.random.default_rng(seed)
    c = tiny_config(num_heads=heads, dropout=dropout, attention_dropout=dropout)
    model = perturbed(BertForQuestionAnswering(c, seed=seed), rng)
    batch = make_batch(rng, B, T, c.vocab_size, lengths=rng.integers(0, T + 1, B), num_labels=2)
    del batch["labels"]
    # positions from -2 to T + 2: negative ones clamp to [CLS], those at or past T are ignored
    batch["start_positions"], batch["end_positions"] = rng.integers(-2, T + 3, B), rng.integers(-2, T + 3, B)
    R = {"dstart_logits": ("start_logits", rng.standard_normal((B, T))),
         "dend_logits": ("end_logits", rng.standard_normal((B, T)))}
    check_model(model, batch, seed, R if upstream else None)


def test_question_answering_loss_by_hand_with_answers_outside_the_window():
    rng = np.random.default_rng(3)
    c = tiny_config()
    model = perturbed(BertForQuestionAnswering(c, seed=3), rng)
    T = 6
    batch = make_batch(rng, 4, T, c.vocab_size, lengths=[6, 4, 6, 2], num_labels=2)
    del batch["labels"]
    batch["start_positions"], batch["end_positions"] = np.array([2, -3, 6, 9]), np.array([4, 0, 1, 40])
    out = model.forward(batch, train=False)[0]
    s, e = host(out["start_logits"]), host(out["end_logits"])

    def ce(logits, targets):  # transformers' rule written out: clamp to [0, T], T ignored
        t = np.clip(targets, 0, T)
        rows = [np.log(np.exp(l).sum()) - l[k] for l, k in zip(logits, t) if k != T]
        return np.mean(rows)
    assert np.isclose(float(out["start_loss"]), ce(s, batch["start_positions"]), rtol=1e-12)  # rows 0, 1 (at [CLS])
    assert np.isclose(float(out["end_loss"]), ce(e, batch["end_positions"]), rtol=1e-12)  # rows 0, 1, 2
    assert np.isclose(float(out["loss"]), (ce(s, batch["start_positions"]) + ce(e, batch["end_positions"])) / 2)
    assert out["count"] == 3


def test_question_answering_with_every_answer_outside_is_zero_and_finite():
    c = tiny_config()
    model = BertForQuestionAnswering(c, seed=4)
    batch = make_batch(np.random.default_rng(4), 2, 5, c.vocab_size, num_labels=2)
    del batch["labels"]
    batch.update(start_positions=np.array([5, 7]), end_positions=np.array([5, 100]))
    loss, grads = model.loss_and_grads(batch, train=False)
    assert loss == 0.0 and all(not host(g).any() for g in grads.values())
    # only the end outside: the start half alone, at its 1/2 weight
    batch["start_positions"] = np.array([1, 3])
    out = model.forward(batch, train=False)[0]
    assert float(out["end_loss"]) == 0.0 and np.isclose(float(out["loss"]), float(out["start_loss"]) / 2)


# ----------------------------------------------------------------------------------------
# multiple choice


def choice_batch(rng, B, C, T, V, lengths=None):
    flat = make_batch(rng, B * C, T, V, lengths=lengths, num_labels=2)
    del flat["labels"]
    batch = {k: v.reshape(B, C, T) for k, v in flat.items()}
    batch["labels"] = rng.integers(0, C, B)
    return batch


@settings(max_examples=6, deadline=None)
@given(B=st.integers(1, 3), C=st.integers(1, 4), T=st.integers(1, 5), heads=st.sampled_from([1, 2, 4]),
       dropout=st.sampled_from([0.0, 0.2]), upstream=st.booleans(), seed=st.integers(0, 10**6))
def test_multiple_choice_gradients_every_param(B, C, T, heads, dropout, upstream, seed):
    rng = np.random.default_rng(seed)
    c = tiny_config(num_heads=heads, dropout=dropout, attention_dropout=dropout)
    model = perturbed(BertForMultipleChoice(c, seed=seed), rng)
    batch = choice_batch(rng, B, C, T, c.vocab_size, lengths=rng.integers(0, T + 1, B * C))
    check_model(model, batch, seed, {"dlogits": ("logits", rng.standard_normal((B, C)))} if upstream else None)


def test_multiple_choice_scores_each_choice_alone():
    """Choice j of question b scores what BertModel's pooled [CLS] of that sequence alone
    gives through the head; the loss is the softmax cross-entropy across the choices."""
    rng = np.random.default_rng(5)
    c = tiny_config()
    model = perturbed(BertForMultipleChoice(c, seed=5), rng)
    batch = choice_batch(rng, 2, 3, 5, c.vocab_size)
    out = model.forward(batch, train=False)[0]
    enc = BertModel(c, params={k: v for k, v in model.params.items() if not k.startswith("cls.")})
    w, b = host(model.params["cls.w"]), host(model.params["cls.b"])
    ref = np.empty((2, 3))
    for i in range(2):
        for j in range(3):
            one = {k: batch[k][i, j][None] for k in ("input_ids", "token_type_ids", "attention_mask")}
            ref[i, j] = (host(enc.forward(one, train=False)[0]["pooled_output"]) @ w + b)[0, 0]
    np.testing.assert_allclose(host(out["logits"]), ref, rtol=1e-12, atol=1e-14)
    logp = ref - np.log(np.exp(ref).sum(axis=1, keepdims=True))
    assert np.isclose(float(out["loss"]), -logp[[0, 1], batch["labels"]].mean(), rtol=1e-12)


# ----------------------------------------------------------------------------------------
# the checker can fail, construction, validation


def _qa_batch(rng, V):
    batch = make_batch(rng, 2, 5, V, num_labels=2)
    del batch["labels"]
    batch.update(start_positions=np.array([1, 2]), end_positions=np.array([3, 2]))
    return batch


@pytest.mark.parametrize("kind", ["token", "qa", "choice"])
def test_checker_catches_a_wrong_head_bias_gradient(kind):
    """A head bias gradient 1% off fails the check. The check takes a random upstream on the
    logits: for question answering and multiple choice the loss's own bias gradient is 0 in
    exact arithmetic (the bias adds one constant to every position's, or every choice's,
    logit, which the softmax ignores), so only an upstream from outside exercises it."""
    rng = np.random.default_rng(6)
    c = tiny_config()
    if kind == "token":
        model, bias, keys = BertForTokenClassification(c, 3, seed=6), "cls.b", {"dlogits": "logits"}
        batch = make_batch(rng, 2, 5, c.vocab_size, num_labels=3)
        batch["labels"] = rng.integers(0, 3, (2, 5))
    elif kind == "qa":
        model, bias, batch = BertForQuestionAnswering(c, seed=6), "qa.b", _qa_batch(rng, c.vocab_size)
        keys = {"dstart_logits": "start_logits", "dend_logits": "end_logits"}
    else:
        model, bias, batch = BertForMultipleChoice(c, seed=6), "cls.b", choice_batch(rng, 2, 3, 4, c.vocab_size)
        keys = {"dlogits": "logits"}
    loss_grad = host(model.loss_and_grads(batch, train=False)[1][bias])
    assert (np.abs(loss_grad).max() < 1e-15) == (kind != "token")
    out, cache = model.forward(batch, train=False)
    R = {kw: rng.standard_normal(out[k].shape) for kw, k in keys.items()}
    f = lambda: sum(float((host(model.predict(batch)[k]) * R[kw]).sum()) for kw, k in keys.items())
    grads = model.backward(cache, **R)
    check_gradients(f, {bias: model.params[bias]}, {bias: grads[bias]}, **TOL)  # the right one passes
    wrong = grads[bias] * 1.01  # 1% off: a head bias gradient scaled as a mistaken mean would scale it
    with pytest.raises(GradientCheckError, match=bias.replace(".", r"\.")):
        check_gradients(f, {bias: model.params[bias]}, {bias: wrong}, **TOL)


def test_from_encoder_keeps_the_encoder_and_draws_a_seeded_head():
    c = tiny_config(initializer_range=0.05)
    enc = BertModel(c, seed=7).params  # with a pooler
    tok = BertForTokenClassification.from_encoder(c, enc, num_labels=4, seed=3)
    qa = BertForQuestionAnswering.from_encoder(c, enc, seed=3)
    mc = BertForMultipleChoice.from_encoder(c, enc, seed=3)
    assert "pool.w" not in tok.params and "pool.w" not in qa.params
    assert np.array_equal(host(mc.params["pool.w"]), host(enc["pool.w"]))
    for m in (tok, qa, mc):
        assert np.array_equal(host(m.params["layers.1.ffn.w_fc"]), host(enc["layers.1.ffn.w_fc"]))
    for m, w, shape in ((tok, "cls.w", (8, 4)), (qa, "qa.w", (8, 2)), (mc, "cls.w", (8, 1))):
        assert m.params[w].shape == shape and not host(m.params[w[:-1] + "b"]).any()  # zero bias
    again = BertForTokenClassification.from_encoder(c, BertModel(c, seed=8).params, num_labels=4, seed=3)
    assert np.array_equal(host(tok.params["cls.w"]), host(again.params["cls.w"]))  # the head's own stream
    # an encoder without a pooler (a BertForMaskedLM's): multiple choice draws one
    bare = {k: v for k, v in enc.items() if not k.startswith("pool.")}
    drawn = BertForMultipleChoice.from_encoder(c, bare, seed=3)
    assert float(abs(drawn.params["pool.w"]).max()) > 0
    assert not np.array_equal(host(drawn.params["pool.w"]), host(enc["pool.w"]))


def test_heads_are_drawn_as_transformers_draws_them():
    """Head weights ~ N(0, initializer_range), biases 0, from the seed's head stream."""
    c = tiny_config(hidden_size=256, intermediate_size=8, initializer_range=0.05)
    heads = {"cls.w": BertForTokenClassification(c, 40, seed=1).params["cls.w"],  # 10,240 draws
             "qa.w": BertForQuestionAnswering(c, seed=1).params["qa.w"]}  # 512 draws
    for (k, w), within in zip(heads.items(), (0.03, 0.12)):
        w = host(w)
        assert abs(w.mean()) < 5 * 0.05 / np.sqrt(w.size) and abs(w.std() / 0.05 - 1) < within, k
    assert not np.array_equal(host(BertForQuestionAnswering(c, seed=2).params["qa.w"]), host(heads["qa.w"]))


@pytest.mark.parametrize("kind, mutate, message", [
    ("token", lambda b: b.update(labels=b["labels"][:, :2]), "one label per token"),
    ("token", lambda b: b.update(labels=b["labels"] * 0 + 3), r"neither -100 nor a class in \[0, 3\)"),
    ("token", lambda b: b.update(labels=b["labels"] * 0 - 1), "neither -100"),
    ("token", lambda b: b.update(labels=b["labels"] * 0.5), "integer ids"),
    ("qa", lambda b: b.pop("end_positions"), "only one of start_positions and end_positions"),
    ("qa", lambda b: b.update(start_positions=np.array([1.0, 2.0])), "integer positions"),
    ("qa", lambda b: b.update(start_positions=np.array([[1], [2]])), "one position per sequence"),
    ("choice", lambda b: b.update(labels=np.array([0, 3])), r"outside the choices \[0, 3\)"),
    ("choice", lambda b: b.update(input_ids=b["input_ids"][:, 0]), r"shape \(B, C, T\)"),
    ("choice", lambda b: b.update(attention_mask=b["attention_mask"][:, :2]), "attention_mask"),
])
def test_bad_input_is_a_clear_value_error(kind, mutate, message):
    rng = np.random.default_rng(9)
    c = tiny_config()
    if kind == "token":
        model = BertForTokenClassification(c, 3)
        batch = make_batch(rng, 2, 5, c.vocab_size, num_labels=3)
        batch["labels"] = rng.integers(0, 3, (2, 5))
    elif kind == "qa":
        model, batch = BertForQuestionAnswering(c), _qa_batch(rng, c.vocab_size)
    else:
        model, batch = BertForMultipleChoice(c), choice_batch(rng, 2, 3, 4, c.vocab_size)
    mutate(batch)
    with pytest.raises(ValueError, match=message):
        model.loss_and_grads(batch)


def test_predict_gives_logits_without_labels():
    rng = np.random.default_rng(10)
    c = tiny_config(dropout=0.3)
    qa = BertForQuestionAnswering(c, seed=1)
    batch = make_batch(rng, 2, 5, c.vocab_size, num_labels=2)
    del batch["labels"]
    a, b = qa.predict(batch), qa.predict(batch)
    assert a["start_logits"].shape == (2, 5) and "loss" not in a
    np.testing.assert_array_equal(host(a["end_logits"]), host(b["end_logits"]))
    with pytest.raises(ValueError, match="no start_positions"):
        qa.backward(qa.forward(batch)[1])
