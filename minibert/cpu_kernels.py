"""The host's fused kernels: float32 loops compiled by Numba, one pass over memory each.

minibert/kernels.py (and philox.py, for dropout's random numbers) calls these behind its
op names on the host (NumPy backend) in float32; its plain array twins stay the reference,
and tests/test_cpu_kernels.py compares the two. Why loops: a chain of NumPy ops streams the whole array through memory once per op
and uses one core; a compiled loop reads each element once, keeps a row's statistics in
registers, and the rows (or elements) are shared between the host's two threads.

    kernel                          plain twin in kernels.py
    gelu_forward / gelu_backward    gelu_exact_plain / gelu_exact_backward_plain
    layernorm_forward / _backward   layernorm_plain / layernorm_backward_plain
    softmax_forward / _backward     softmax_plain (softmax_lse_plain) / softmax_backward_plain
    adamw                           adamw_update_plain
    philox_uniform32 / 64           philox.philox_uniform_plain (bit for bit)
    dropout32                       kernels.dropout_plain (bit for bit)
    dropout_backward32              kernels.dropout_backward_plain (bit for bit)
    round_bf16 / round_fp16         backend.round_bf16 / backend.round_fp16 (bit for bit; backend.low calls them)

exp32 is the one piece of hand-written math: a float32 exp that LLVM can vectorize (a call
to libm's expf in the loop cannot be), so the exp-heavy loops (GELU, softmax) run on SIMD
lanes. Its relative error is a few float32 ulps (tests/test_cpu_kernels.py measures it).

Importing this module imports Numba; host.compiled_loops() does so only when Numba is
installed and `host.use_numba` is True (MINIBERT_NUMBA=0 starts it False), and the callers
fall back to the plain array code otherwise. Compiled
code is cached beside this file (__pycache__), so only the first run pays the compile.
"""
import math

import numpy as np
from numba import njit

# Each kernel works on a range [lo, hi) of rows (or elements) and releases the GIL, and
# kernels.py shares the range between the host's two Python threads (host.split_run),
# the pool the GEMMs already use. Not Numba's parallel=True: its thread pools spin between
# loops (measured: OpenMP's and the workqueue's waiting threads made the GEMMs that
# followed 5-10x slower on 2 cores).
_F = np.float32
# Loops run over unsigned indices, range(_U(lo), _U(hi)): a signed index may be negative as
# far as Numba knows, so every x[i] gets a wraparound select (x[-1] is the last element), and
# LLVM then vectorizes the loop with gathers and scatters, or not at all. Unsigned, the same
# loops give the same bits, GELU and AdamW twice as fast or more (docs/benchmarks.md).
_U = np.uint64
_JIT = dict(cache=True, nogil=True, error_model="numpy")  # numpy: x / 0 is inf, no Python check (which blocks SIMD)
# fastmath without "nnan"/"ninf": LLVM may contract and reassociate (and so vectorize), but a
# NaN or inf that comes in still goes out, for the training loop's non-finite check
_FAST = {"contract", "afn", "reassoc", "nsz", "arcp"}


# ----------------------------------------------------------------------------------------
# exp for float32: 2^n * p(r), r = x - n ln 2 in [-ln2/2, ln2/2] (Cody-Waite: ln 2 in two
# parts so n * ln2_hi is exact), p the degree-6 Taylor polynomial (error < 2e-8 on r's
# range), 2^n built from its exponent bits

@njit(inline="always", fastmath=_FAST, error_model="numpy")
def exp32(x):
    """exp(x) for float32 x <= 88; exactly 0 below -80 (e^-80 = 1.8e-35), so that nothing
    downstream is ever subnormal: a GEMM reading subnormal floats runs 10x slower or worse
    (measured here: attention's padded keys at e^-87 instead of 0 made the backward 5x slower)."""
    small = x < _F(-80.0)
    x = min(max(x, _F(-80.0)), _F(88.0))
    # k = round(x / ln 2) + 128 > 0, so the conversion's truncation is the floor (np.floor
    # would be a call that stops LLVM from vectorizing the loop)
    k = np.int32(x * _F(1.4426950408889634) + _F(128.5))
    n = _F(np.int32(k - np.int32(128)))  # np.int32(): else Numba converts from int64 (int32 - int32 is int64 in Numba)
    r = x - n * _F(0.693145751953125)  # ln 2's high part: 16 significant bits, exact products
    r = r - n * _F(1.428606765330187e-06)  # and its low part
    p = _F(1.0 / 720.0)
    p = p * r + _F(1.0 / 120.0)
    p = p * r + _F(1.0 / 24.0)
    p = p * r + _F(1.0 / 6.0)
    p = p * r + _F(0.5)
    p = p * r + _F(1.0)
    p = p * r + _F(1.0)
    two_n = np.int32((k - np.int32(1)) << np.int32(23)).view(np.float32)  # 2^n: exponent bits n + 127
    return _F(0.0) if small else p * two_n


# ----------------------------------------------------------------------------------------
# GELU: x Phi(x) with Phi from the erfc approximation of kernels.normal_cdf_float32

@njit(inline="always", fastmath=_FAST, error_model="numpy")
def _phi_lower(x):
    """0.5 erfc(|x| / sqrt 2) = Phi(-|x|), the lower tail (Numerical Recipes' erfcc)."""
    z = min(abs(x) * _F(0.7071067811865476), _F(12.0))
    t = _F(1.0) / (_F(1.0) + _F(0.5) * z)
    q = _F(0.17087277)
    q = q * t + _F(-0.82215223)
    q = q * t + _F(1.48851587)
    q = q * t + _F(-1.13520398)
    q = q * t + _F(0.27886807)
    q = q * t + _F(-0.18628806)
    q = q * t + _F(0.09678418)
    q = q * t + _F(0.37409196)
    q = q * t + _F(1.00002368)
    q = q * t + _F(-1.26551223)
    return _F(0.5) * t * exp32(q - z * z)


@njit(fastmath=_FAST, **_JIT)
def gelu_forward(x, out, lo, hi):
    """out = x Phi(x); x, out flat (n,) float32."""
    for i in range(_U(lo), _U(hi)):
        v = x[i]
        q = _phi_lower(v)
        out[i] = v * (q if v < _F(0.0) else _F(1.0) - q)


@njit(fastmath=_FAST, **_JIT)
def gelu_backward(x, dout, dx, lo, hi):
    """dx = dout (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi); flat float32."""
    for i in range(_U(lo), _U(hi)):
        v = x[i]
        q = _phi_lower(v)
        cdf = q if v < _F(0.0) else _F(1.0) - q
        dx[i] = dout[i] * (cdf + v * exp32(_F(-0.5) * v * v) * _F(0.3989422804014327))


# ----------------------------------------------------------------------------------------
# layer norm over rows of H: statistics in float64 registers, one read of the row per pass

@njit(fastmath=_FAST, **_JIT)
def layernorm_forward(x, w, b, eps, out, mean, rstd, lo, hi):
    """x, out (N, H); w, b (H,); mean, rstd (N,) filled for rows lo..hi-1."""
    H = x.shape[1]
    for i in range(_U(lo), _U(hi)):
        s = 0.0
        for j in range(H):
            s += x[i, j]
        mu = s / H
        s2 = 0.0
        for j in range(H):
            d = x[i, j] - mu
            s2 += d * d
        r = 1.0 / math.sqrt(s2 / H + eps)  # biased variance, as BERT
        mean[i] = mu
        rstd[i] = r
        mu32, r32 = _F(mu), _F(r)
        for j in range(H):
            out[i, j] = (x[i, j] - mu32) * r32 * w[j] + b[j]


@njit(fastmath=_FAST, **_JIT)
def layernorm_backward(dout, x, w, mean, rstd, dx, dw_part, db_part, lo, hi):
    """dx (N, H) = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dout w, for
    rows lo..hi-1, which add their sums of dout xhat and dout into dw_part, db_part (H,)
    float64 (each thread its own: no two threads write one address)."""
    H = x.shape[1]
    for i in range(_U(lo), _U(hi)):
        mu, r = _F(mean[i]), _F(rstd[i])
        a = 0.0
        bs = 0.0
        for j in range(H):
            xh = (x[i, j] - mu) * r
            g = dout[i, j] * w[j]
            a += g
            bs += g * xh
            dw_part[j] += dout[i, j] * xh
            db_part[j] += dout[i, j]
        a32, bs32 = _F(a / H), _F(bs / H)
        for j in range(H):
            xh = (x[i, j] - mu) * r
            dx[i, j] = r * (dout[i, j] * w[j] - a32 - xh * bs32)


# ----------------------------------------------------------------------------------------
# softmax(x * scale + bias) over rows of K; bias row of x's row r is r // rows_per_bias

@njit(inline="always")
def _flip_negative(i):
    """int32 i with its low 31 bits flipped when negative: its own inverse."""
    return i if i >= np.int32(0) else np.int32(i ^ np.int32(0x7FFFFFFF))


@njit(inline="always")
def _order_key(z):
    """float32 z as an int32 in the same order: negative floats' other 31 bits flipped (so
    -2 < -1), and every other float's bits as they are. The row max below is an integer max
    of these keys, which LLVM vectorizes; a float max it vectorizes only if told that no NaN
    can come (fastmath "nnan"), which would let a NaN through unseen. About 2x faster."""
    return _flip_negative(_F(z).view(np.int32))


@njit(inline="always")
def _from_order_key(i):
    """The float32 whose _order_key is i."""
    return np.int32(_flip_negative(i)).view(np.float32)


@njit(fastmath=_FAST, **_JIT)
def softmax_forward(x, bias, rows_per_bias, scale, y, lse, lo, hi):
    """x, y (R, K); bias (Rb, K) (zeros when there is none); rows lo..hi-1; lse (R,) gets
    each row's log sum exp(x * scale + bias) (the cross-entropy needs it)."""
    K = x.shape[1]
    for r in range(_U(lo), _U(hi)):
        br = r // rows_per_bias
        mk = np.int32(-2147483648)  # the smallest key: below -inf's
        for k in range(K):
            z = x[r, k] * scale + bias[br, k]
            y[r, k] = z
            mk = max(mk, _order_key(z))
        # the row max; a NaN in the row makes every y NaN, by this max or by exp32 below
        m = _from_order_key(mk)
        s = _F(0.0)
        for k in range(K):
            e = exp32(y[r, k] - m)  # the row max subtracted: exp cannot overflow
            y[r, k] = e
            s += e
        inv = _F(1.0) / s
        for k in range(K):
            y[r, k] *= inv
        lse[r] = m + math.log(s)


@njit(fastmath=_FAST, **_JIT)
def softmax_backward(y, dout, scale, dx, lo, hi):
    """dx = scale * y * (dout - sum(dout * y)) over rows lo..hi-1; all (R, K)."""
    K = y.shape[1]
    for r in range(_U(lo), _U(hi)):
        s = _F(0.0)
        for k in range(K):
            s += dout[r, k] * y[r, k]
        for k in range(K):
            dx[r, k] = scale * y[r, k] * (dout[r, k] - s)


# ----------------------------------------------------------------------------------------
# AdamW, one parameter in place (flat arrays), as kernels.adamw_update_plain

@njit(fastmath=_FAST, **_JIT)
def adamw(p, g, m, v, decay, b1, one_minus_b1, b2, one_minus_b2, step_size, eps_hat, lo, hi):
    for i in range(_U(lo), _U(hi)):
        gi = g[i]
        mi = b1 * m[i] + one_minus_b1 * gi
        vi = b2 * v[i] + one_minus_b2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * mi / (math.sqrt(vi) + eps_hat)


# ----------------------------------------------------------------------------------------
# Philox-4x32-10 uniforms keyed per row (dropout), equal bit for bit to
# philox.philox_uniform_plain and the device kernel: element j of row b takes word j % 4
# (float32: 24 bits) of counter (j // 4, first_row + b, draw, 0), or words 2 (j % 2) and
# 2 (j % 2) + 1 (float64: 53 bits) of counter (j // 2, first_row + b, draw, 0)

@njit(inline="always")
def _philox(c0, c1, c2, c3, k0, k1):
    mask = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0), p1 & mask, ((p0 >> np.uint64(32)) ^ c3 ^ k1), p0 & mask
        k0 = (k0 + np.uint64(0x9E3779B9)) & mask
        k1 = (k1 + np.uint64(0xBB67AE85)) & mask
    return c0, c1, c2, c3


@njit(inline="always")
def _unit24(w):
    """A Philox word's top 24 bits as a float32 in [0, 1)."""
    return _F(w >> np.uint64(8)) * _F(1.0 / 16777216.0)


@njit(**_JIT)
def philox_uniform32(out, key0, key1, draw, first_row, lo, hi):
    """out (rows, n) float32 in [0, 1)."""
    n = out.shape[1]
    k0, k1 = np.uint64(key0), np.uint64(key1)
    for b in range(lo, hi):
        row = np.uint64(first_row + b)
        ob = out[b]
        # whole counters as straight-line code (no loop over the 4 words), which LLVM
        # vectorizes across counters: 4-5x faster than a loop over each counter's words
        for c in range(n // 4):
            w0, w1, w2, w3 = _philox(np.uint64(c), row, np.uint64(draw), np.uint64(0), k0, k1)
            j = 4 * c
            ob[j], ob[j + 1], ob[j + 2], ob[j + 3] = _unit24(w0), _unit24(w1), _unit24(w2), _unit24(w3)
        c = n // 4  # the last, partial counter
        if 4 * c < n:
            w = _philox(np.uint64(c), row, np.uint64(draw), np.uint64(0), k0, k1)
            for t in range(n - 4 * c):
                ob[4 * c + t] = _unit24(w[t])


@njit(inline="always")
def _drop(x, w, p, scale, keep, out, j):
    """One element of inverted dropout: keep[j] = u >= p for u = _unit24(w), and
    out[j] = x[j] * keep[j] * scale."""
    kj = _unit24(w) >= p
    keep[j] = kj
    out[j] = x[j] * _F(kj) * scale  # x * 0 keeps x's sign, as the array code


@njit(**_JIT)
def dropout32(x, p, scale, key0, key1, draw, first_row, out, keep, lo, hi):
    """Inverted dropout of x (rows, n) float32 in one pass: keep = u >= p with u exactly
    philox_uniform32's numbers, out = x * keep * scale; rows lo..hi-1."""
    n = x.shape[1]
    k0, k1 = np.uint64(key0), np.uint64(key1)
    for b in range(lo, hi):
        row = np.uint64(first_row + b)
        xb, ob, kb = x[b], out[b], keep[b]
        for c in range(n // 4):  # whole counters, straight-line (as philox_uniform32)
            w0, w1, w2, w3 = _philox(np.uint64(c), row, np.uint64(draw), np.uint64(0), k0, k1)
            j = 4 * c
            _drop(xb, w0, p, scale, kb, ob, j)
            _drop(xb, w1, p, scale, kb, ob, j + 1)
            _drop(xb, w2, p, scale, kb, ob, j + 2)
            _drop(xb, w3, p, scale, kb, ob, j + 3)
        c = n // 4  # the last, partial counter
        if 4 * c < n:
            w = _philox(np.uint64(c), row, np.uint64(draw), np.uint64(0), k0, k1)
            for t in range(n - 4 * c):
                _drop(xb, w[t], p, scale, kb, ob, 4 * c + t)


@njit(**_JIT)
def dropout_backward32(dout, keep, scale, dx, lo, hi):
    """dx = dout * keep * scale for elements lo..hi-1 of flat float32 dout, dx and bool
    keep: one pass (the array code makes two), rounded as the array code rounds it."""
    for i in range(_U(lo), _U(hi)):
        dx[i] = dout[i] * _F(keep[i]) * scale


@njit(**_JIT)
def philox_uniform64(out, key0, key1, draw, first_row, lo, hi):
    """out (rows, n) float64 in [0, 1)."""
    n = out.shape[1]
    k0, k1 = np.uint64(key0), np.uint64(key1)
    for b in range(lo, hi):
        row = np.uint64(first_row + b)
        for c in range((n + 1) // 2):
            w0, w1, w2, w3 = _philox(np.uint64(c), row, np.uint64(draw), np.uint64(0), k0, k1)
            j = 2 * c
            out[b, j] = (np.float64(w0 >> np.uint64(5)) * 67108864.0 + np.float64(w1 >> np.uint64(6))) \
                * (1.0 / 9007199254740992.0)
            if j + 1 < n:
                out[b, j + 1] = (np.float64(w2 >> np.uint64(5)) * 67108864.0 + np.float64(w3 >> np.uint64(6))) \
                    * (1.0 / 9007199254740992.0)


# ----------------------------------------------------------------------------------------
# mixed precision: float32 rounded to bf16's or fp16's values (backend.round_bf16 and
# backend.round_fp16 are the plain twins), on the uint32 bits; no fastmath (fp16's
# subnormal step, (a + 0.5) - 0.5, must not be simplified to a)

@njit(**_JIT)
def round_bf16(u, out, lo, hi):
    """out[i] = u[i] (float32 bits) rounded to bf16 (ties to even), NaN kept a NaN."""
    for i in range(_U(lo), _U(hi)):
        x = u[i]
        if (x & np.uint32(0x7F800000)) == np.uint32(0x7F800000) and (x & np.uint32(0x007FFFFF)) != np.uint32(0):
            out[i] = (x | np.uint32(0x00400000)) & np.uint32(0xFFFF0000)  # NaN -> quiet NaN
        else:
            out[i] = np.uint32(x + np.uint32(0x7FFF) + ((x >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)


@njit(**_JIT)
def round_fp16(x, u, out, out_u, lo, hi):
    """out[i] = x[i] (float32; u its bits) rounded to fp16 (ties to even): 13 bits cut in the
    normal range, a multiple of 2^-24 below 2^-14, inf past 65,504, NaN kept. out_u is
    out's uint32 view (the same memory). Two branch-free loops over the range, so that both
    vectorize: the bits first, then the cases the bits get wrong."""
    for i in range(_U(lo), _U(hi)):
        b = u[i]
        out_u[i] = np.uint32(b + np.uint32(0x0FFF) + ((b >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    for i in range(_U(lo), _U(hi)):
        f = x[i]
        a = abs(f)
        g = out[i]
        r = math.copysign(_F(np.inf), f) if abs(g) > _F(65504.0) else g  # past fp16's largest
        r = math.copysign((a + _F(0.5)) - _F(0.5), f) if a < _F(2.0 ** -14) else r  # the subnormals' fixed step
        out[i] = f if f != f else r
