"""Gradient checks for every forward/backward pair, over Hypothesis-drawn shapes, in float64.

Each test builds f = sum(forward(inputs) * dout) with a random dout and compares the
backward against central differences (minibert.gradcheck). Forward values are checked
against plain NumPy / math formulas written here, independently of the code under test.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import erf as np_erf

from minibert import backend, layers, losses, philox
from minibert.gradcheck import check_gradients

SETTINGS = settings(max_examples=15, deadline=None)


def arr(rng, *shape, scale=1.0):
    return backend.to_device(rng.standard_normal(shape) * scale)


def host(a):
    return np.asarray(backend.to_host(a))


def check_op(forward, backward, inputs, seed=0, **kw):
    """Check backward(dout) against d/d inputs of sum(forward(**inputs) * dout)."""
    rng = np.random.default_rng(seed + 1)
    out, cache = forward(**inputs)
    dout = backend.to_device(rng.standard_normal(out.shape))  # random upstream gradient
    grads = backward(dout, cache)
    analytic = dict(zip(inputs, grads))
    check_gradients(lambda: float((forward(**inputs)[0] * dout).sum()), inputs, analytic, **kw)
    return out


dims = st.integers(1, 4)


@SETTINGS
@given(B=dims, T=dims, n_in=st.integers(1, 6), n_out=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_linear(B, T, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    x, w, b = arr(rng, B, T, n_in), arr(rng, n_in, n_out), arr(rng, n_out)
    out = check_op(lambda x, w, b: layers.linear_forward(x, w, b), layers.linear_backward, dict(x=x, w=w, b=b))
    np.testing.assert_allclose(host(out), np.einsum("bti,io->bto", host(x), host(w)) + host(b), rtol=1e-12)


@SETTINGS
@given(B=dims, T=dims, H=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_embedding(B, T, H, seed):
    rng = np.random.default_rng(seed)
    V, P = 5, 6
    ids = backend.to_device(rng.integers(0, V, (B, T)))  # repeats are likely: scatter-add must sum them
    tt = backend.to_device(rng.integers(0, 2, (B, T)))
    ww, wp, wt = arr(rng, V, H), arr(rng, P, H), arr(rng, 2, H)
    fwd = lambda w_word, w_pos, w_type: layers.embedding_forward(ids, tt, w_word, w_pos, w_type)
    out = check_op(fwd, layers.embedding_backward, dict(w_word=ww, w_pos=wp, w_type=wt))
    ref = host(ww)[host(ids)] + host(wp)[:T][None] + host(wt)[host(tt)]
    np.testing.assert_allclose(host(out), ref, rtol=1e-12)


@SETTINGS
@given(B=dims, T=dims, H=st.integers(2, 8), scale=st.sampled_from([1e-3, 1.0, 100.0]), seed=st.integers(0, 10**6))
def test_layernorm(B, T, H, scale, seed):
    rng = np.random.default_rng(seed)
    x, w, b = arr(rng, B, T, H, scale=scale), arr(rng, H), arr(rng, H)
    eps = 1e-5
    out = check_op(lambda x, w, b: layers.layernorm_forward(x, w, b, eps), layers.layernorm_backward,
                   dict(x=x, w=w, b=b), rtol=1e-5, atol=1e-6 / scale)
    xh = host(x)
    ref = (xh - xh.mean(-1, keepdims=True)) / np.sqrt(xh.var(-1, keepdims=True) + eps) * host(w) + host(b)
    np.testing.assert_allclose(host(out), ref, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(n=st.integers(1, 20), approximate=st.sampled_from(["none", "tanh"]), seed=st.integers(0, 10**6))
def test_gelu(n, approximate, seed):
    rng = np.random.default_rng(seed)
    x = arr(rng, n, scale=3.0)
    out = check_op(lambda x: layers.gelu_forward(x, approximate), layers.gelu_backward, dict(x=x))
    xh = host(x)
    if approximate == "none":
        ref = 0.5 * xh * (1 + np_erf(xh / math.sqrt(2)))
    else:
        ref = 0.5 * xh * (1 + np.tanh(math.sqrt(2 / math.pi) * (xh + 0.044715 * xh ** 3)))
    np.testing.assert_allclose(host(out), ref, rtol=1e-12, atol=1e-15)


def test_gelu_extremes():
    x = backend.to_device(np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0]))
    out, cache = layers.gelu_forward(x)
    (dx,) = layers.gelu_backward(backend.to_device(np.ones(5)), cache)
    np.testing.assert_allclose(host(out), [0.0, 0.0, 0.0, 40.0, 1000.0], atol=1e-12)
    np.testing.assert_allclose(host(dx), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-12)


@SETTINGS
@given(rows=dims, K=st.integers(1, 8), extreme=st.booleans(), seed=st.integers(0, 10**6))
def test_softmax(rows, K, extreme, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, K))
    if extreme:
        x[:, 0] = -1000.0  # logits like [-1000, 1]: no overflow, no NaN
    x = backend.to_device(x)
    out = check_op(lambda x: layers.softmax_forward(x), layers.softmax_backward, dict(x=x))
    e = np.exp(host(x) - host(x).max(-1, keepdims=True))
    np.testing.assert_allclose(host(out), e / e.sum(-1, keepdims=True), rtol=1e-12)


@SETTINGS
@given(p=st.sampled_from([0.0, 0.1, 0.5]), seed=st.integers(0, 10**6))
def test_dropout(p, seed):
    rng = np.random.default_rng(seed)
    x = arr(rng, 3, 4, 5)
    # the same seed redraws the same mask, so f is a fixed function for the finite differences
    fwd = lambda x: layers.dropout_forward(x, p, philox.rng(seed))
    out = check_op(fwd, layers.dropout_backward, dict(x=x))
    kept = host(out) != 0
    np.testing.assert_allclose(host(out)[kept], host(x)[kept] / (1 - p), rtol=1e-12)


def test_dropout_rate_and_seed():
    x = backend.xp.ones((200, 500))
    a, _ = layers.dropout_forward(x, 0.1, philox.rng(3))
    b, _ = layers.dropout_forward(x, 0.1, philox.rng(3))
    assert (host(a) == host(b)).all()  # seeded
    frac = float((host(a) == 0).mean())
    assert abs(frac - 0.1) < 5 * math.sqrt(0.1 * 0.9 / x.size)
    assert abs(float(host(a).mean()) - 1.0) < 0.01  # inverted: expectation preserved
    assert layers.dropout_forward(x, 0.1, None)[0] is x  # evaluation: identity


@pytest.mark.parametrize("p, train", [(0.0, True), (0.3, False), (0.3, True)])
def test_dropout_backward_never_returns_dout(p, train):
    """dx is a new array in every case (rate 0, evaluation, or a drawn mask), so an in-place
    op on dx can never corrupt the caller's dout."""
    dout = arr(np.random.default_rng(0), 3, 4)
    before = host(dout).copy()
    _, cache = layers.dropout_forward(dout, p, philox.rng(1) if train else None)
    (dx,) = layers.dropout_backward(dout, cache)
    assert dx is not dout and not np.shares_memory(host(dx), host(dout))
    dx += 1.0
    np.testing.assert_array_equal(host(dout), before)


@st.composite
def attention_case(draw):
    A = draw(st.integers(1, 3))
    D = draw(st.integers(1, 3))
    B, T = draw(dims), draw(dims)
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))  # 0: a fully padded row
    return B, T, A, D, lengths, draw(st.integers(0, 10**6))


def attn_bias_from(lengths, T):
    mask = np.array([[1.0] * n + [0.0] * (T - n) for n in lengths])  # (B, T)
    return backend.to_device((1.0 - mask)[:, None, None, :] * layers.MASK_VALUE)


@SETTINGS
@given(attention_case(), st.sampled_from([0.0, 0.2]))
def test_attention(case, p_drop):
    B, T, A, D, lengths, seed = case
    H = A * D
    rng = np.random.default_rng(seed)
    bias = attn_bias_from(lengths, T)
    inputs = dict(x=arr(rng, B, T, H), w_qkv=arr(rng, H, 3 * H), b_qkv=arr(rng, 3 * H), w_o=arr(rng, H, H), b_o=arr(rng, H))

    def fwd(x, w_qkv, b_qkv, w_o, b_o):
        return layers.attention_forward(x, bias, w_qkv, b_qkv, w_o, b_o, A, p_drop, philox.rng(seed) if p_drop else None)

    # eps 1e-4: a fully padded row's scores sit near MASK_VALUE = -1e4, where float64's
    # spacing (~2e-12) over a 1e-6 step would swamp the difference quotient
    out = check_op(fwd, layers.attention_backward, inputs, eps=1e-4, rtol=1e-5, atol=1e-6)
    assert np.isfinite(host(out)).all()  # fully padded rows stay defined
    if p_drop == 0.0:  # forward against a per-head loop written from the formula
        x, wq, bq = host(inputs["x"]), host(inputs["w_qkv"]), host(inputs["b_qkv"])
        qkv = x @ wq + bq
        ctx = np.zeros((B, T, H))
        for b in range(B):
            for a in range(A):
                q, k, v = (qkv[b, :, i * H + a * D:i * H + (a + 1) * D] for i in range(3))
                s = q @ k.T / math.sqrt(D) + host(bias)[b, 0]
                pr = np.exp(s - s.max(-1, keepdims=True))
                pr /= pr.sum(-1, keepdims=True)
                ctx[b, :, a * D:(a + 1) * D] = pr @ v
        np.testing.assert_allclose(host(out), ctx @ host(inputs["w_o"]) + host(inputs["b_o"]), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(B=dims, T=dims, H=st.integers(1, 4), I=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_ffn(B, T, H, I, seed):
    rng = np.random.default_rng(seed)
    inputs = dict(x=arr(rng, B, T, H), w_fc=arr(rng, H, I), b_fc=arr(rng, I), w_proj=arr(rng, I, H), b_proj=arr(rng, H))
    check_op(lambda **kw: layers.ffn_forward(**kw), layers.ffn_backward, inputs)


@SETTINGS
@given(attention_case(), st.sampled_from([0.0, 0.1]), st.sampled_from(["gelu", "gelu_tanh"]))
def test_encoder_layer(case, p_drop, act):
    B, T, A, D, lengths, seed = case
    H, I = A * D, 2 * A * D
    rng = np.random.default_rng(seed)
    bias = attn_bias_from(lengths, T)
    shapes = {"attn.w_qkv": (H, 3 * H), "attn.b_qkv": (3 * H,), "attn.w_o": (H, H), "attn.b_o": (H,),
              "ln1.w": (H,), "ln1.b": (H,), "ffn.w_fc": (H, I), "ffn.b_fc": (I,), "ffn.w_proj": (I, H),
              "ffn.b_proj": (H,), "ln2.w": (H,), "ln2.b": (H,)}
    p = {k: arr(rng, *s) for k, s in shapes.items()}
    x = arr(rng, B, T, H)

    def f_out():
        r = philox.rng(seed) if p_drop else None
        return layers.encoder_layer_forward(x, bias, p, A, 1e-5, act, p_drop, p_drop, r)

    out, cache = f_out()
    dout = arr(np.random.default_rng(seed + 1), *out.shape)
    dx, g = layers.encoder_layer_backward(dout, cache)
    assert set(g) == set(layers.ENCODER_LAYER_PARAMS)
    check_gradients(lambda: float((f_out()[0] * dout).sum()), {"x": x, **p}, {"x": dx, **g}, eps=1e-5, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(B=dims, T=dims, H=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_pooler(B, T, H, seed):
    rng = np.random.default_rng(seed)
    inputs = dict(x=arr(rng, B, T, H), w=arr(rng, H, H), b=arr(rng, H))
    out = check_op(lambda x, w, b: layers.pooler_forward(x, w, b), layers.pooler_backward, inputs)
    np.testing.assert_allclose(host(out), np.tanh(host(inputs["x"])[:, 0] @ host(inputs["w"]) + host(inputs["b"])), rtol=1e-12)


@SETTINGS
@given(R=st.integers(0, 5), K=st.integers(2, 7), extreme=st.booleans(), seed=st.integers(0, 10**6))
def test_cross_entropy(R, K, extreme, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((R, K)) * 3
    if extreme and R:
        logits[:, 0], logits[:, 1] = -1000.0, 1.0
    logits = backend.to_device(logits)
    targets = backend.to_device(rng.integers(0, K, R))
    loss, cache = losses.cross_entropy_forward(logits, targets)
    (dlogits,) = losses.cross_entropy_backward(0.7, cache)  # a non-unit upstream gradient
    assert dlogits.shape == (R, K)
    lh, th = host(logits), host(targets)
    if R == 0:
        assert float(loss) == 0.0  # defined, never NaN
        return
    m = lh.max(1, keepdims=True)
    logp = lh - m - np.log(np.exp(lh - m).sum(1, keepdims=True))
    assert abs(float(loss) - (-logp[np.arange(R), th].mean())) < 1e-12
    check_gradients(lambda: 0.7 * float(losses.cross_entropy_forward(logits, targets)[0]),
                    {"logits": logits}, {"logits": dlogits}, eps=1e-5)


def test_encoder_layer_defaults_are_exact_gelu_and_no_dropout():
    """encoder_layer_forward's defaults: exact GELU, no dropout. Found by mutation testing."""
    r = np.random.default_rng(40)
    H, I = 8, 12
    shapes = {"attn.w_qkv": (H, 3 * H), "attn.b_qkv": (3 * H,), "attn.w_o": (H, H), "attn.b_o": (H,),
              "ln1.w": (H,), "ln1.b": (H,), "ffn.w_fc": (H, I), "ffn.b_fc": (I,), "ffn.w_proj": (I, H),
              "ffn.b_proj": (H,), "ln2.w": (H,), "ln2.b": (H,)}
    p = {k: backend.to_device(r.standard_normal(s) * 0.5) for k, s in shapes.items()}
    x = backend.to_device(r.standard_normal((2, 5, H)))
    bias = backend.to_device(np.zeros((2, 1, 1, 5)))
    out = backend.to_host(layers.encoder_layer_forward(x, bias, p, 2, 1e-5)[0])
    exact = backend.to_host(layers.encoder_layer_forward(x, bias, p, 2, 1e-5, "gelu", 0.0, 0.0, None)[0])
    tanh = backend.to_host(layers.encoder_layer_forward(x, bias, p, 2, 1e-5, "gelu_tanh")[0])
    np.testing.assert_array_equal(out, exact)
    assert not np.array_equal(out, tanh)
    # a stream alone turns no dropout on: the rates default to 0
    streamed = backend.to_host(layers.encoder_layer_forward(x, bias, p, 2, 1e-5, rng=philox.rng(3))[0])
    np.testing.assert_array_equal(out, streamed)


@pytest.mark.parametrize("name, approximate", [("gelu", "none"), ("gelu_new", "tanh"),
                                               ("gelu_pytorch_tanh", "tanh"), ("gelu_tanh", "tanh")])
def test_gelu_approximation_reads_every_hugging_face_name(name, approximate):
    """Hugging Face configs name the tanh GELU three ways. Found by mutation testing."""
    assert layers.gelu_approximation(name) == approximate
    with pytest.raises(ValueError, match="unsupported hidden_act"):
        layers.gelu_approximation(name.upper())


def test_attention_dropout_rate_defaults_to_zero():
    """attention_forward with a stream but no rate drops nothing. Found by mutation testing."""
    r = np.random.default_rng(41)
    H = 8
    x = backend.to_device(r.standard_normal((2, 4, H)))
    bias = backend.to_device(np.zeros((2, 1, 1, 4)))
    w_qkv, b_qkv = backend.to_device(r.standard_normal((H, 3 * H))), backend.to_device(r.standard_normal(3 * H))
    w_o, b_o = backend.to_device(r.standard_normal((H, H))), backend.to_device(r.standard_normal(H))
    plain = layers.attention_forward(x, bias, w_qkv, b_qkv, w_o, b_o, 2)[0]
    streamed = layers.attention_forward(x, bias, w_qkv, b_qkv, w_o, b_o, 2, rng=philox.rng(4))[0]
    np.testing.assert_array_equal(backend.to_host(plain), backend.to_host(streamed))


def test_dropout_refuses_a_rate_of_one():
    """p = 1 would drop everything and divide by zero: refused with a clear message, as the
    config refuses it. Found by mutation testing."""
    x = backend.to_device(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\)"):
        layers.dropout_forward(x, 1.0, philox.rng(0))


def test_attention_backward_holds_at_most_two_score_sized_temporaries():
    """The attention backward lets each (B, A, T, T) temporary go once used: at no time more
    than two of them (with dqkv, dctx and the weight gradients) on top of what it was given.
    Keeping the four it makes alive at once was the peak of the whole training step."""
    import tracemalloc
    from minibert import kernels
    if backend.xp is not np or kernels._cpu() is None:
        pytest.skip("host float32 with the compiled loops: the plain twins make temporaries of their own")
    B, T, A, D = 2, 128, 2, 8  # T large against H, so the (B, A, T, T) arrays dominate
    H = A * D
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    bias = np.zeros((B, 1, 1, T), np.float32)
    _, cache = layers.attention_forward(f32(B, T, H), bias, f32(H, 3 * H), f32(3 * H), f32(H, H), f32(H), A, 0.1,
                                        philox.rng(1))
    dout = f32(B, T, H)
    layers.attention_backward(dout, cache)  # warm: compiled loops loaded, pools started
    score = B * A * T * T * 4  # bytes of one (B, A, T, T) float32 array
    tracemalloc.start()
    try:
        entry = tracemalloc.get_traced_memory()[0]
        layers.attention_backward(dout, cache)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # besides two score-sized arrays: dqkv (B, T, 3H), dctx and dx (B, T, H), the weight and
    # bias gradients, and a quarter of a score array of slack (the old backward: 4.5 of them)
    others = (B * T * (3 * H + 2 * H) + 4 * H * H + 4 * H) * 4
    assert peak - entry < 2.25 * score + others, (peak - entry) / score
