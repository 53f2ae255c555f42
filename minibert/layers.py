"""BERT's layers as forward/backward pairs of plain functions.

Every op is a pair:

    out, cache = op_forward(inputs...)
    d_inputs... = op_backward(dout, cache)

The backward outputs follow the forward inputs in order. The cache holds only what the
backward needs (the comment at each return says why), nothing is kept on objects, and no
backward writes into `dout` or its cache. Arrays come from `backend.xp` (NumPy or CuPy).

Dimension letters used in the shape comments, everywhere in minibert:
    B batch, T sequence length, H hidden size, A attention heads, D = H / A head size,
    I intermediate (feed-forward) size, V vocabulary, P masked positions, N = B * T rows.

Reference: Devlin et al. 2019, "BERT" (arXiv:1810.04805) and Vaswani et al. 2017,
"Attention is all you need": Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V. The encoder
layer is post-LN, as BERT's: x = LN(x + Attn(x)); x = LN(x + FFN(x)); or pre-LN (Xiong et
al. 2020, "On layer normalization in the Transformer architecture", arXiv:2002.04745):
x = x + Attn(LN(x)); x = x + FFN(LN(x)). The derivation of every backward below is written
out in docs/internals.md.
"""
import math
from typing import NamedTuple

from minibert import backend, kernels

# Added to the attention scores of padded keys. A finite large negative (as in the original
# BERT) rather than -inf: exp() sends it to exactly 0 next to any real key, and a row whose
# keys are all padding stays defined instead of 0/0 = NaN: every score in it moves by the
# same constant, so it is the softmax of the unmasked scores (softmax ignores a common shift).
MASK_VALUE = -10000.0


# ----------------------------------------------------------------------------------------
# linear: out = x @ w + b


def linear_forward(x, w, b):
    n_in, n_out = w.shape
    # one 2-D matmul over all rows: NumPy's stacked (B, T, IN) @ (IN, OUT) loops over the
    # batch and can run several times slower than the same work as a single GEMM
    out = backend.matmul(x.reshape(-1, n_in), w, b)  # (N, OUT) x @ w + b
    # backward needs x for dw and w for dx
    return out.reshape(x.shape[:-1] + (n_out,)), (x, w)  # (..., OUT)


def linear_backward(dout, cache):
    x, w = cache
    n_in, n_out = w.shape
    dout2 = dout.reshape(-1, n_out)  # (N, OUT)
    # forward: out = x @ w + b, so dx = dout @ w.T, and dw = x^T @ dout summed over every
    # row (the two products are independent: backend.matmul_pair may run them at once)
    dx2, dw = backend.matmul_pair(dout2, w.T, x.reshape(-1, n_in).T, dout2)  # (N, IN), (IN, OUT)
    dx = dx2.reshape(x.shape)  # (..., IN)
    db = kernels.sum_rows(dout2)  # (OUT,) db = sum of dout over rows (dout2.sum(axis=0))
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# embeddings: out = word[input_ids] + pos[0:T] + type[token_type_ids]


class EmbeddingCache(NamedTuple):
    """What embedding_backward needs: the ids route gradients back to table rows, and the
    table shapes size the gradients (the tables themselves are not needed)."""
    input_ids: object  # (B, T)
    token_type_ids: object  # (B, T)
    word_shape: tuple  # (V, H)
    pos_shape: tuple  # (max_position, H)
    type_shape: tuple  # (type_vocab, H)


def embedding_forward(input_ids, token_type_ids, w_word, w_pos, w_type):
    T = input_ids.shape[1]
    out = w_word[input_ids]  # (B, T, H)
    out += w_pos[:T]  # (T, H) broadcast over the batch
    out += w_type[token_type_ids]  # (B, T, H)
    return out, EmbeddingCache(input_ids, token_type_ids, w_word.shape, w_pos.shape, w_type.shape)


def embedding_backward(dout, cache):
    xp = backend.xp
    B, T, H = dout.shape
    dout2 = dout.reshape(B * T, H)  # (N, H)
    # forward: out[b, t] += word[ids[b, t]], so row ids[b, t] of dword gets dout[b, t];
    # a token id that occurs twice receives the sum, hence scatter-add, not assignment
    dword = xp.zeros(cache.word_shape, dtype=dout.dtype)  # (V, H)
    backend.scatter_add(dword, cache.input_ids.reshape(-1), dout2)
    # forward: out[b, t] += pos[t], so dpos[t] = sum over the batch of dout[:, t]
    dpos = xp.zeros(cache.pos_shape, dtype=dout.dtype)  # (max_position, H)
    dpos[:T] = kernels.sum_rows(dout.reshape(B, T * H)).reshape(T, H)  # dout.sum(axis=0)
    # forward: out[b, t] += type[type_ids[b, t]], so dtype[j] = sum of dout over the positions
    # of type j: one sum per type (a one-hot product), not a scatter of B * T rows onto 2
    types = xp.arange(cache.type_shape[0])  # (type_vocab,)
    onehot = (cache.token_type_ids.reshape(-1, 1) == types).astype(dout.dtype)  # (N, type_vocab)
    dtt = onehot.T @ dout2  # (type_vocab, H)
    return dword, dpos, dtt


# ----------------------------------------------------------------------------------------
# layer norm over the last axis: out = (x - mean) * rstd * w + b


def layernorm_forward(x, w, b, eps):
    # (kernels.layernorm: plain array code, or one compiled pass per row on the host)
    out, mean, rstd = kernels.layernorm(x, w, b, eps)  # (..., H), (..., 1), (..., 1)
    # backward needs x (to rebuild x_hat), w, and the per-row statistics mean and rstd
    return out, (x, w, mean, rstd)


def layernorm_backward(dout, cache):
    x, w, mean, rstd = cache
    # forward: out = xhat * w + b with xhat = (x - mean) * rstd, mean and rstd functions of
    # x too, so dw = sum of dout * xhat, db = sum of dout, and
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) with dxhat = dout * w
    # (kernels.layernorm_backward_plain writes it out as array code)
    dx, dw, db = kernels.layernorm_backward(dout, x, w, mean, rstd)  # (..., H), (H,), (H,)
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# GELU: exact x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation.
# The exact form is one name in minibert/kernels.py (fused on the device, a float32 erfc
# approximation on the host, the plain erf formula in float64).

_TANH_C = math.sqrt(2.0 / math.pi)


def gelu_forward(x, approximate="none"):
    xp = backend.xp
    if approximate == "tanh":
        inner = _TANH_C * (x + 0.044715 * x * x * x)  # (...)
        out = 0.5 * x * (1.0 + xp.tanh(inner))  # (...)
    elif approximate == "none":
        out = kernels.gelu_exact(x)  # (...) x Phi(x)
    else:
        raise ValueError(f"unknown GELU approximation {approximate!r}: 'none' or 'tanh'")
    # backward recomputes from x: cheaper in memory than keeping Phi(x) as well
    return out, (x, approximate)


def gelu_backward(dout, cache):
    xp = backend.xp
    x, approximate = cache
    if approximate == "tanh":
        # forward: out = 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3), so
        # dout/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) c (1 + 3 * 0.044715 x^2)
        th = xp.tanh(_TANH_C * (x + 0.044715 * x * x * x))  # (...)
        dgelu = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * _TANH_C * (1.0 + 3 * 0.044715 * x * x)
        dgelu *= dout
        return (dgelu,)
    # forward: out = x Phi(x), so dout/dx = Phi(x) + x phi(x), phi the normal density
    dx = kernels.gelu_exact_backward(x, dout)  # (...)
    return (dx,)


# ----------------------------------------------------------------------------------------
# dropout (inverted): out = x * keep / (1 - p), keep ~ Bernoulli(1 - p)


def dropout_forward(x, p, rng):
    """Identity when p == 0 or rng is None (evaluation); otherwise a fresh mask from rng."""
    if p == 0.0 or rng is None:
        return x, None
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    # keep = u >= p for u uniform from rng, out = x * keep * scale (kernels.dropout_plain;
    # on the host in float32 one compiled pass draws and applies the mask)
    out, keep = kernels.dropout(x, p, rng)  # (...), (...) bool
    scale = x.dtype.type(1.0 / (1.0 - p))
    # backward needs the mask (kept as bool: a quarter of a float32 mask) and the scale
    return out, (keep, scale)


def dropout_backward(dout, cache):
    if cache is None:  # nothing was dropped: dx = dout, as a new array (never an alias of dout)
        return (dout.copy(),)
    keep, scale = cache
    # forward: out = x * keep * scale, so dx = dout * keep * scale
    dx = kernels.dropout_backward(dout, keep, scale)  # (...)
    return (dx,)


# ----------------------------------------------------------------------------------------
# softmax over the last axis: y = softmax(x * scale + bias), bias a constant (attention's
# padding mask, broadcast); scale 1 and no bias is the plain softmax


def softmax_forward(x, scale=1.0, bias=None):
    # the row max is subtracted inside so exp cannot overflow; the result is unchanged
    # (kernels.softmax: plain array code, or threaded passes on the host)
    y = kernels.softmax(x, scale, bias)  # (..., K)
    # backward needs only the output (dy_i/dz_j = y_i (delta_ij - y_j)) and the scale
    return y, (y, scale)


def softmax_backward(dout, cache):
    y, scale = cache
    # forward: y = exp(z) / sum exp(z) with z = x * scale + bias, so
    # dx = scale * y * (dout - sum(dout * y))
    dx = kernels.softmax_backward(y, dout, scale)  # (..., K)
    return (dx,)


# ----------------------------------------------------------------------------------------
# multi-head self-attention with a fused Q/K/V projection


class AttentionCache(NamedTuple):
    """What attention_backward needs: q, k, v for the two batched products, each sub-op's
    own cache (the softmax's holds the probabilities and the score scale, the dropout's its
    mask), and the head count. The dropped probabilities are not kept: backward rebuilds
    them from the probabilities and the mask."""
    c_qkv: tuple  # linear cache of the fused Q/K/V projection
    q: object  # (B, A, T, D)
    k: object  # (B, A, T, D)
    v: object  # (B, A, T, D)
    c_soft: object  # softmax cache: its output, the probabilities (B, A, T, T), and the scale
    c_drop: object  # dropout cache (mask and scale, or None)
    c_o: tuple  # linear cache of the output projection
    num_heads: int  # A

    @property
    def probs(self):
        """The attention probabilities (B, A, T, T), before dropout."""
        return self.c_soft[0]


def attention_forward(x, attn_bias, w_qkv, b_qkv, w_o, b_o, num_heads, p_drop=0.0, rng=None):
    """x (B, T, H); attn_bias (B, 1, 1, T) additive: 0 for real keys, MASK_VALUE for padding."""
    B, T, H = x.shape
    A = num_heads
    D = H // A
    qkv, c_qkv = linear_forward(x, w_qkv, b_qkv)  # (B, T, 3H)
    # (3, B, A, T, D): a view, or on the device one copy that every product below can read
    qkv_h = backend.batched_operand(qkv.reshape(B, T, 3, A, D).transpose(2, 0, 3, 1, 4))
    q, k, v = qkv_h[0], qkv_h[1], qkv_h[2]  # (B, A, T, D) each
    scale = x.dtype.type(1.0 / math.sqrt(D))
    scores = backend.batched_matmul(q, k.transpose(0, 1, 3, 2))  # (B, A, T, T) q k^T, unscaled
    # probs = softmax(scores * scale + attn_bias): padded keys get a large negative score
    probs, c_soft = softmax_forward(scores, scale, attn_bias)  # (B, A, T, T)
    probs_d, c_drop = dropout_forward(probs, p_drop, rng)  # (B, A, T, T)
    ctx_h = backend.batched_matmul(probs_d, v)  # (B, A, T, D)
    ctx = ctx_h.transpose(0, 2, 1, 3).reshape(B, T, H)  # (B, T, H) heads side by side
    out, c_o = linear_forward(ctx, w_o, b_o)  # (B, T, H)
    return out, AttentionCache(c_qkv, q, k, v, c_soft, c_drop, c_o, A)


def attention_backward(dout, cache):
    xp = backend.xp
    c_qkv, q, k, v, c_soft, c_drop, c_o, A = cache  # see AttentionCache
    B, T, H = dout.shape
    D = H // A
    # probs_d = dropout(probs) was not kept. With its mask fixed dropout is linear in its
    # input, so its backward applied to probs is the forward again: x * keep * scale, the
    # forward's bits (one (B, A, T, T) pass instead of a second array that size per layer)
    probs_d = cache.probs if c_drop is None else dropout_backward(cache.probs, c_drop)[0]  # (B, A, T, T)
    # dq, dk and dv are written straight into the (B, T, 3, A, D) layout of qkv, which undoes
    # the forward's reshape and transpose
    dqkv = xp.empty((B, T, 3 * H), dtype=dout.dtype)  # (B, T, 3H)
    dqkv_h = dqkv.reshape(B, T, 3, A, D).transpose(2, 0, 3, 1, 4)  # (3, B, A, T, D) view
    # forward: out = ctx @ w_o + b_o
    dctx, dw_o, db_o = linear_backward(dout, c_o)  # (B, T, H)
    dctx_h = backend.batched_operand(dctx.reshape(B, T, A, D).transpose(0, 2, 1, 3))  # (B, A, T, D) as qkv_h
    # forward: ctx_h = probs_d @ v, so dprobs_d = dctx_h @ v^T and dv = probs_d^T @ dctx_h
    dprobs_d = backend.batched_matmul(dctx_h, v.transpose(0, 1, 3, 2))  # (B, A, T, T)
    backend.batched_matmul(probs_d.transpose(0, 1, 3, 2), dctx_h, out=dqkv_h[2])  # (B, A, T, D) dv
    # each (B, A, T, T) temporary is let go once used: four alive at once were the peak of
    # the whole training step
    del probs_d
    # forward: probs_d = dropout(probs)
    (dprobs,) = dropout_backward(dprobs_d, c_drop)  # (B, A, T, T)
    del dprobs_d
    # forward: probs = softmax(scores * scale + attn_bias); the scale is in dscores
    (dscores,) = softmax_backward(dprobs, c_soft)  # (B, A, T, T)
    del dprobs
    # forward: scores = q @ k^T, so dq = dscores @ k and dk = dscores^T @ q
    backend.batched_matmul(dscores, k, out=dqkv_h[0])
    backend.batched_matmul(dscores.transpose(0, 1, 3, 2), q, out=dqkv_h[1])
    del dscores
    # forward: qkv = x @ w_qkv + b_qkv
    dx, dw_qkv, db_qkv = linear_backward(dqkv, c_qkv)  # (B, T, H)
    return dx, dw_qkv, db_qkv, dw_o, db_o


# ----------------------------------------------------------------------------------------
# feed-forward block: out = gelu(x @ w_fc + b_fc) @ w_proj + b_proj


def ffn_forward(x, w_fc, b_fc, w_proj, b_proj, approximate="none"):
    h, c_fc = linear_forward(x, w_fc, b_fc)  # (B, T, I)
    a, c_act = gelu_forward(h, approximate)  # (B, T, I)
    out, _ = linear_forward(a, w_proj, b_proj)  # (B, T, H)
    # backward needs a for dw_proj, but a is not kept: with h (in c_act) it would be the
    # second of the layer's two largest arrays (B, T, I); backward recomputes it from h
    return out, (c_fc, c_act, w_proj)


def ffn_backward(dout, cache):
    c_fc, c_act, w_proj = cache
    h, approximate = c_act
    a, _ = gelu_forward(h, approximate)  # (B, T, I) the forward's a again, bit for bit
    # forward: out = a @ w_proj + b_proj
    da, dw_proj, db_proj = linear_backward(dout, (a, w_proj))  # (B, T, I)
    del a  # used: one (B, T, I) array fewer alive while dh is made
    # forward: a = gelu(h)
    (dh,) = gelu_backward(da, c_act)  # (B, T, I)
    # forward: h = x @ w_fc + b_fc
    dx, dw_fc, db_fc = linear_backward(dh, c_fc)  # (B, T, H)
    return dx, dw_fc, db_fc, dw_proj, db_proj


# ----------------------------------------------------------------------------------------
# the post-LN encoder layer:
#   a = attention(x);  h = LN1(x + dropout(a))
#   f = ffn(h);        out = LN2(h + dropout(f))

ENCODER_LAYER_PARAMS = (
    "attn.w_qkv", "attn.b_qkv", "attn.w_o", "attn.b_o", "ln1.w", "ln1.b",
    "ffn.w_fc", "ffn.b_fc", "ffn.w_proj", "ffn.b_proj", "ln2.w", "ln2.b",
)


class EncoderLayerCache(NamedTuple):
    """Each sub-op's cache, in forward order (the residual sums need nothing kept)."""
    c_attn: AttentionCache
    c_drop1: object  # dropout after attention
    c_ln1: tuple
    c_ffn: tuple
    c_drop2: object  # dropout after the feed-forward block
    c_ln2: tuple


def encoder_layer_forward(x, attn_bias, p, num_heads, eps, hidden_act="gelu", p_drop=0.0, p_attn_drop=0.0, rng=None):
    """p: dict of this layer's params keyed as in ENCODER_LAYER_PARAMS."""
    approx = gelu_approximation(hidden_act)
    a, c_attn = attention_forward(x, attn_bias, p["attn.w_qkv"], p["attn.b_qkv"], p["attn.w_o"], p["attn.b_o"],
                                  num_heads, p_attn_drop, rng)  # (B, T, H)
    a_d, c_drop1 = dropout_forward(a, p_drop, rng)  # (B, T, H)
    h, c_ln1 = layernorm_forward(x + a_d, p["ln1.w"], p["ln1.b"], eps)  # (B, T, H) residual then LN
    f, c_ffn = ffn_forward(h, p["ffn.w_fc"], p["ffn.b_fc"], p["ffn.w_proj"], p["ffn.b_proj"], approx)  # (B, T, H)
    f_d, c_drop2 = dropout_forward(f, p_drop, rng)  # (B, T, H)
    out, c_ln2 = layernorm_forward(h + f_d, p["ln2.w"], p["ln2.b"], eps)  # (B, T, H)
    return out, EncoderLayerCache(c_attn, c_drop1, c_ln1, c_ffn, c_drop2, c_ln2)


def encoder_layer_backward(dout, cache):
    """Returns (dx, grads) with grads keyed as in ENCODER_LAYER_PARAMS."""
    c_attn, c_drop1, c_ln1, c_ffn, c_drop2, c_ln2 = cache  # see EncoderLayerCache
    g = {}
    # forward: out = LN2(h + f_d); the residual sends the same gradient to h and to f_d
    dres2, g["ln2.w"], g["ln2.b"] = layernorm_backward(dout, c_ln2)  # (B, T, H)
    # forward: f_d = dropout(f), f = ffn(h)
    (df,) = dropout_backward(dres2, c_drop2)  # (B, T, H)
    dh, g["ffn.w_fc"], g["ffn.b_fc"], g["ffn.w_proj"], g["ffn.b_proj"] = ffn_backward(df, c_ffn)
    dh += dres2  # the residual path h -> h + f_d
    # forward: h = LN1(x + a_d)
    dres1, g["ln1.w"], g["ln1.b"] = layernorm_backward(dh, c_ln1)  # (B, T, H)
    # forward: a_d = dropout(a), a = attention(x)
    (da,) = dropout_backward(dres1, c_drop1)  # (B, T, H)
    dx, g["attn.w_qkv"], g["attn.b_qkv"], g["attn.w_o"], g["attn.b_o"] = attention_backward(da, c_attn)
    dx += dres1  # the residual path x -> x + a_d
    return dx, g


# ----------------------------------------------------------------------------------------
# the pre-LN encoder layer (Xiong et al. 2020): layer norm at the start of each branch,
# inside the residual, so the skip path x -> out is a plain sum of the two branches:
#   a = attention(LN1(x));  h = x + dropout(a)
#   f = ffn(LN2(h));        out = h + dropout(f)
# The same params as the post-LN layer (ENCODER_LAYER_PARAMS): ln1 now normalises the
# attention's input, ln2 the feed-forward's. The stack needs one more layer norm after its
# last layer (encoder.py's final_ln): nothing else normalises what reaches the heads.


class PreLNEncoderLayerCache(NamedTuple):
    """Each sub-op's cache, in forward order (the residual sums need nothing kept)."""
    c_ln1: tuple  # layer norm of the layer's input x
    c_attn: AttentionCache
    c_drop1: object  # dropout after attention
    c_ln2: tuple  # layer norm of h
    c_ffn: tuple
    c_drop2: object  # dropout after the feed-forward block


def pre_ln_encoder_layer_forward(x, attn_bias, p, num_heads, eps, hidden_act="gelu", p_drop=0.0, p_attn_drop=0.0,
                                 rng=None):
    """p: dict of this layer's params keyed as in ENCODER_LAYER_PARAMS. Dropout masks are
    drawn in the post-LN layer's order: attention probabilities, then after attention, then
    after the feed-forward block."""
    approx = gelu_approximation(hidden_act)
    xn, c_ln1 = layernorm_forward(x, p["ln1.w"], p["ln1.b"], eps)  # (B, T, H) LN before attention
    a, c_attn = attention_forward(xn, attn_bias, p["attn.w_qkv"], p["attn.b_qkv"], p["attn.w_o"], p["attn.b_o"],
                                  num_heads, p_attn_drop, rng)  # (B, T, H)
    a_d, c_drop1 = dropout_forward(a, p_drop, rng)  # (B, T, H)
    h = x + a_d  # (B, T, H) residual, no LN after it
    hn, c_ln2 = layernorm_forward(h, p["ln2.w"], p["ln2.b"], eps)  # (B, T, H) LN before the FFN
    f, c_ffn = ffn_forward(hn, p["ffn.w_fc"], p["ffn.b_fc"], p["ffn.w_proj"], p["ffn.b_proj"], approx)  # (B, T, H)
    f_d, c_drop2 = dropout_forward(f, p_drop, rng)  # (B, T, H)
    out = h + f_d  # (B, T, H)
    return out, PreLNEncoderLayerCache(c_ln1, c_attn, c_drop1, c_ln2, c_ffn, c_drop2)


def pre_ln_encoder_layer_backward(dout, cache):
    """Returns (dx, grads) with grads keyed as in ENCODER_LAYER_PARAMS."""
    c_ln1, c_attn, c_drop1, c_ln2, c_ffn, c_drop2 = cache  # see PreLNEncoderLayerCache
    g = {}
    # forward: out = h + f_d; the residual sends dout unchanged to h and to f_d
    # forward: f_d = dropout(f), f = ffn(hn)
    (df,) = dropout_backward(dout, c_drop2)  # (B, T, H)
    dhn, g["ffn.w_fc"], g["ffn.b_fc"], g["ffn.w_proj"], g["ffn.b_proj"] = ffn_backward(df, c_ffn)  # (B, T, H)
    # forward: hn = LN2(h)
    dh, g["ln2.w"], g["ln2.b"] = layernorm_backward(dhn, c_ln2)  # (B, T, H)
    dh += dout  # the residual path h -> out: dout passes through untouched by any LN
    # forward: h = x + a_d; a_d = dropout(a), a = attention(xn)
    (da,) = dropout_backward(dh, c_drop1)  # (B, T, H)
    dxn, g["attn.w_qkv"], g["attn.b_qkv"], g["attn.w_o"], g["attn.b_o"] = attention_backward(da, c_attn)  # (B, T, H)
    # forward: xn = LN1(x)
    dx, g["ln1.w"], g["ln1.b"] = layernorm_backward(dxn, c_ln1)  # (B, T, H)
    dx += dh  # the residual path x -> h
    return dx, g


# the layer of each BertConfig.norm: (forward, backward), called alike
ENCODER_LAYERS = {
    "post": (encoder_layer_forward, encoder_layer_backward),
    "pre": (pre_ln_encoder_layer_forward, pre_ln_encoder_layer_backward),
}


def gelu_approximation(hidden_act):
    """Map a Hugging Face hidden_act name to gelu_forward's `approximate` argument."""
    if hidden_act == "gelu":
        return "none"
    if hidden_act in ("gelu_new", "gelu_pytorch_tanh", "gelu_tanh"):
        return "tanh"
    raise ValueError(f"unsupported hidden_act {hidden_act!r}: use 'gelu' (exact) or 'gelu_tanh'")


# ----------------------------------------------------------------------------------------
# pooler: pooled = tanh(x[:, 0] @ w + b), the [CLS] summary used by NSP and classifiers


def pooler_forward(x, w, b):
    xp = backend.xp
    h, c_lin = linear_forward(x[:, 0], w, b)  # (B, H)
    out = xp.tanh(h)  # (B, H)
    # backward needs tanh's output (d tanh = 1 - tanh^2), and x's shape to scatter into
    return out, (c_lin, out, x.shape)


def pooler_backward(dout, cache):
    xp = backend.xp
    c_lin, out, x_shape = cache
    # forward: out = tanh(h), so dh = dout * (1 - out^2)
    dh = dout * (1.0 - out * out)  # (B, H)
    # forward: h = x[:, 0] @ w + b; only the first position of x receives gradient
    dx0, dw, db = linear_backward(dh, c_lin)  # (B, H)
    dx = xp.zeros(x_shape, dtype=dout.dtype)  # (B, T, H)
    dx[:, 0] = dx0
    return dx, dw, db
