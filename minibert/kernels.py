"""The ops with a fast path: each behind one name, beside the plain array code it must equal.

A reader follows the plain twin; the fast variants compute the same numbers (to rounding,
or bit for bit where the table says so) faster, and tests/test_kernels.py and
tests/test_cpu_kernels.py compare each with its twin. The fast variants themselves live in
their own files: the host's compiled loops in minibert/cpu_kernels.py (Numba), the CUDA
sources and their launches in minibert/cuda_kernels.py.

    name (what layers/optim call)   plain twin (the reference)           fast variants
    normal_cdf(x)                   normal_cdf_plain                     float32: erfc approximation
        Phi(x) = 0.5 (1 + erf(x / sqrt 2))                               (normal_cdf_float32), in
                                                                          cache-sized blocks on the host
    gelu_exact(x)                   gelu_exact_plain                     device: one fused CUDA pass;
        out = x Phi(x)                                                    host float32: one compiled pass
                                                                          (without Numba: the erfc Phi,
                                                                          in blocks)
    gelu_exact_backward(x, dout)    gelu_exact_backward_plain            as gelu_exact
        dx = dout (Phi(x) + x phi(x)), phi the normal density
    adamw_update(p, g, m, v, ...)   adamw_update_plain                   device: one fused CUDA pass;
        one AdamW step of one parameter, in place                        host float32: one compiled pass
    softmax(x, scale, bias)         softmax_plain                        device: one CUDA warp per row;
        softmax(x * scale + bias) over the last axis (attention's         host float32: one compiled pass
        scores, scale and padding mask)
    softmax_backward(y, dout, scale) softmax_backward_plain              as softmax
        dx = scale * y * (dout - sum(dout * y))
    softmax_lse(x)                  softmax_lse_plain                    host float32: one compiled pass
        (softmax(x), log sum exp(x)) per row: the cross-entropy's forward
    layernorm(x, w, b, eps)         layernorm_plain                      device: one CUDA block per row;
        (x - mean) * rstd * w + b over the last axis, with mean and       host float32: a compiled pass
        rstd per row
    layernorm_backward(...)         layernorm_backward_plain             as layernorm
    dropout(x, p, rng)              dropout_plain                        host float32: one compiled pass
        (x * keep / (1 - p), keep) with keep = u >= p, u from rng         (bit for bit); device: one
        (a philox.SequenceStreams)                                        fused pass (bit for bit)
    dropout_backward(dout, keep, s) dropout_backward_plain               host float32: one compiled pass,
        dx = dout * keep * s                                              else the array ops on both
                                                                          threads; device: one fused
                                                                          pass (all bit for bit)
    sum_rows(a)                     a.sum(axis=0)                        device: one cuBLAS GEMV, ones @ a
        the sum over the rows of a (N, K): bias and layer-norm gradients

Dropout's random numbers have the same shape of name and twins in minibert/philox.py
(philox_uniform beside philox_uniform_plain).

Dispatch: on the device (CuPy) the fused CUDA kernel of cuda_kernels.py, unless `use_fused`
is False. On the host in float32, the compiled loops of cpu_kernels.py (Numba: one pass,
both cores) whenever Numba is installed and host.use_numba is True, which it is unless
MINIBERT_NUMBA=0; only then the array code runs in float32 (the GELU in cache-sized blocks,
host.blockwise). float64 on the host is the plain formula itself, so every float64 gradient
check sees the textbook expression.

Shapes: every op is elementwise over any shape `(...)` (softmax: over the last axis K, the
bias broadcast), and its outputs have the shape of x (or p). docs/benchmarks.md records
what each variant gained and what was tried.
"""
import math

import numpy

from minibert import backend, cuda_kernels, host, philox

use_fused = True  # False: the device runs the array code too (tests compare the two)


def _fused():
    """True when the device's fused kernels (minibert/cuda_kernels.py) should run: the CuPy
    backend is in use and use_fused is on."""
    return backend.name == "cupy" and use_fused


def _cpu(x=None):
    """minibert.cpu_kernels when the host should run a compiled loop for x (float32, or any
    dtype when x is None), else None: not on the host, host.use_numba off, or Numba missing."""
    if backend.xp is not numpy or (x is not None and x.dtype != numpy.float32):
        return None
    return host.compiled_loops()


_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------------------
# the normal CDF Phi(x)


def normal_cdf_plain(x):
    """Phi(x) = 0.5 (1 + erf(x / sqrt 2)) through the backend's erf, in x's dtype."""
    return 0.5 * (1.0 + backend.erf(x * _SQRT_HALF))  # (...)


# erfc(z) = t exp(-z^2 + c0 + c1 t + ... + c9 t^9), t = 1 / (1 + z / 2), z >= 0, with a
# relative error below 1.2e-7 for every z (Press et al., Numerical Recipes, sec. 6.2, erfcc)
_ERFC_C = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
           1.48851587, -0.82215223, 0.17087277)


def normal_cdf_float32(x):
    """Phi(x) for float32 x through the erfc approximation above, in float32 arithmetic.

    Its relative error (~1e-7) is at float32 rounding level, and unlike 1 + erf(x) in
    float32 it keeps its relative accuracy in the lower tail, where Phi(x) is tiny.
    """
    xp = backend.xp
    f32 = xp.float32
    z = xp.abs(x)  # (...)
    z *= f32(_SQRT_HALF)
    xp.minimum(z, f32(12.0), out=z)  # erfc(12) ~ 1e-64 is 0 in float32 anyway; z * z stays finite
    t = z * f32(0.5)  # (...)
    t += f32(1.0)
    xp.reciprocal(t, out=t)
    q = t * f32(_ERFC_C[9])  # (...) Horner's rule in t
    for c in _ERFC_C[8:0:-1]:
        q += f32(c)
        q *= t
    q += f32(_ERFC_C[0])
    z *= z
    q -= z
    xp.exp(q, out=q)
    q *= t
    q *= f32(0.5)  # q = 0.5 erfc(|x| / sqrt 2) = Phi(-|x|), the lower tail, accurate
    # Phi(x) = q for x < 0 and q + (1 - 2q) = 1 - q for x >= 0: adding exactly 0 on the
    # lower side keeps the tail's accuracy (0.5 + ... would cancel), and multiplying by a
    # bool is several times faster than xp.where on an unpredictable mask
    r = q * f32(-2.0)  # (...)
    r += f32(1.0)
    r *= x >= 0
    q += r
    return q  # (...)


def normal_cdf(x):
    """Phi(x): float32 through the erfc approximation in cache-sized blocks, else plain."""
    if x.dtype != backend.xp.float32:
        return normal_cdf_plain(x)  # (...)
    return host.blockwise(normal_cdf_float32, x)  # (...)


# ----------------------------------------------------------------------------------------
# exact GELU: out = x Phi(x), dx = dout (Phi(x) + x phi(x))


def gelu_exact_plain(x):
    """x Phi(x), the textbook formula."""
    return x * normal_cdf_plain(x)  # (...)


def gelu_exact_backward_plain(x, dout):
    """dout (Phi(x) + x phi(x)) with phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    xp = backend.xp
    return dout * (normal_cdf_plain(x) + x * xp.exp(-0.5 * x * x) * _INV_SQRT_2PI)  # (...)


def _gelu_exact_block(x):
    """x Phi(x) for one block of host.blockwise, Phi by normal_cdf."""
    out = normal_cdf(x)  # (...)
    out *= x
    return out


def _gelu_exact_backward_block(x, dout):
    """dout (Phi(x) + x phi(x)) for one block, in place on few temporaries."""
    dx = normal_cdf(x)  # (...) Phi(x)
    xpdf = x * x  # (...)
    xpdf *= -0.5
    backend.xp.exp(xpdf, out=xpdf)
    xpdf *= x
    xpdf *= _INV_SQRT_2PI  # x phi(x)
    dx += xpdf
    dx *= dout
    return dx  # (...)


def gelu_exact(x):
    """x Phi(x): one fused pass on the device or a compiled loop on the host (float32),
    else in cache-sized blocks."""
    cpu = _cpu(x)
    if _fused():
        return cuda_kernels.gelu_forward(x)  # (...)
    if cpu is not None:
        x = numpy.ascontiguousarray(x)
        out = host.empty_apart(x, x)  # (...)
        xf, of = x.reshape(-1), out.reshape(-1)  # (n,) views
        host.split_run(lambda lo, hi: cpu.gelu_forward(xf, of, lo, hi), x.size, x.size)
        return out
    return host.blockwise(_gelu_exact_block, x)  # (...)


def gelu_exact_backward(x, dout):
    """dout (Phi(x) + x phi(x)): as gelu_exact."""
    cpu = _cpu(x)
    if _fused():
        return cuda_kernels.gelu_backward(x, dout)  # (...)
    if cpu is not None and dout.dtype == x.dtype:
        x, dout = numpy.ascontiguousarray(x), numpy.ascontiguousarray(dout)
        dx = host.empty_apart(x, x, dout)  # (...)
        xf, df, dxf = x.reshape(-1), dout.reshape(-1), dx.reshape(-1)  # (n,) views
        host.split_run(lambda lo, hi: cpu.gelu_backward(xf, df, dxf, lo, hi), x.size, x.size)
        return dx
    return host.blockwise(_gelu_exact_backward_block, x, dout)  # (...)


# ----------------------------------------------------------------------------------------
# the sum over rows: a linear layer's bias gradient, a layer norm's dw and db

_ones = {}  # (rows, dtype name, device id) -> a device vector of ones, made once


def sum_rows(a):
    """a.sum(axis=0) for a 2-D a (N, K): (K,). On the device one cuBLAS GEMV, ones (N,) @ a:
    CuPy's reduction over the first axis of a C-ordered array took four to five times as
    long (on an H200: 0.21 ms against 0.04 ms for (8192, 3072) float32). The GEMV adds in
    its own order, so its sum may differ from a.sum(axis=0) in the last bits; it is the
    same on every call, so a resumed run still equals the run it resumes."""
    xp = backend.xp
    if xp is numpy or not use_fused or a.ndim != 2 or not a.size:
        return a.sum(axis=0)  # (K,)
    key = (a.shape[0], a.dtype.name, xp.cuda.Device().id)
    if key not in _ones:
        _ones[key] = xp.ones(a.shape[0], a.dtype)  # (N,)
    return _ones[key] @ a  # (K,)


# ----------------------------------------------------------------------------------------
# layer norm over the last axis: out = (x - mean) * rstd * w + b


def layernorm_plain(x, w, b, eps):
    """The array code: returns out and the per-row mean and rstd = 1 / sqrt(var + eps),
    each (..., 1)."""
    xp = backend.xp
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., H)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1) biased variance, as BERT
    rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    out = xc * rstd  # (..., H) the normalised x_hat
    out *= w
    out += b
    return out, mean, rstd


def layernorm_backward_plain(dout, x, w, mean, rstd):
    """dx, dw, db of layernorm_plain as array code."""
    H = x.shape[-1]
    xhat = (x - mean) * rstd  # (..., H)
    # forward: out = xhat * w + b, so dw = sum over rows of dout * xhat and db = sum of dout
    dw = (dout * xhat).reshape(-1, H).sum(axis=0)  # (H,)
    db = dout.reshape(-1, H).sum(axis=0)  # (H,)
    # forward: xhat = (x - mean) * rstd with mean and rstd functions of x too, so
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dxhat = dout * w  # (..., H)
    dx = dxhat - dxhat.mean(axis=-1, keepdims=True)  # (..., H)
    dx -= xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    dx *= rstd
    return dx, dw, db


def layernorm(x, w, b, eps):
    """(out, mean, rstd) of layer norm over the last axis: one CUDA block per row on the
    device, a compiled pass per row on the host in float32, else layernorm_plain."""
    if _fused() and x.size and w.dtype == x.dtype == b.dtype:
        return cuda_kernels.layernorm_forward(x, w, b, eps)  # (..., H), (..., 1), (..., 1)
    cpu = _cpu(x)
    if cpu is None or w.dtype != x.dtype:
        return layernorm_plain(x, w, b, eps)
    H = x.shape[-1]
    x2 = numpy.ascontiguousarray(x).reshape(-1, H)  # (N, H)
    out = host.empty_apart(x2, x2)  # (N, H)
    mean = numpy.empty((x2.shape[0], 1), x.dtype)  # (N, 1)
    rstd = numpy.empty((x2.shape[0], 1), x.dtype)  # (N, 1)
    m1, r1 = mean[:, 0], rstd[:, 0]  # (N,) views
    host.split_run(lambda lo, hi: cpu.layernorm_forward(x2, w, b, float(eps), out, m1, r1, lo, hi), x2.shape[0],
                   x2.size)
    lead = x.shape[:-1] + (1,)
    return out.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)


def layernorm_backward(dout, x, w, mean, rstd):
    """(dx, dw, db) of layernorm: on the device one CUDA block per row writes dx and
    dout * xhat, and dw, db are two sum_rows; a compiled pass on the host in float32, else
    the plain twin."""
    if _fused() and x.size and w.dtype == x.dtype == dout.dtype:
        dx, gxhat, d2 = cuda_kernels.layernorm_backward(dout, x, w, mean, rstd)  # (..., H), (N, H), (N, H)
        return dx, sum_rows(gxhat), sum_rows(d2)  # (..., H), (H,), (H,)
    cpu = _cpu(x)
    if cpu is None or dout.dtype != x.dtype:
        return layernorm_backward_plain(dout, x, w, mean, rstd)
    H = x.shape[-1]
    x2 = numpy.ascontiguousarray(x).reshape(-1, H)  # (N, H)
    d2 = numpy.ascontiguousarray(dout).reshape(-1, H)  # (N, H)
    dx = host.empty_apart(x2, x2, d2)  # (N, H)
    m1, r1 = numpy.ascontiguousarray(mean).reshape(-1), numpy.ascontiguousarray(rstd).reshape(-1)  # (N,)
    dw_part = numpy.zeros((2, H))  # (2, H) float64 partial sums: one row per half of the rows
    db_part = numpy.zeros((2, H))  # (2, H)
    host.split_run(lambda lo, hi: cpu.layernorm_backward(d2, x2, w, m1, r1, dx, dw_part[int(lo > 0)], db_part[int(lo > 0)],
                                                         lo, hi), x2.shape[0], x2.size)
    return dx.reshape(x.shape), dw_part.sum(axis=0).astype(x.dtype), db_part.sum(axis=0).astype(x.dtype)


# ----------------------------------------------------------------------------------------
# dropout (inverted): out = x * keep / (1 - p), keep = u >= p, u uniform from the rng


def dropout_plain(x, p, rng):
    """(out, keep): one draw of rng (philox.SequenceStreams) for x's shape, a bool mask
    and the scaled product, as array code."""
    keep = rng.random(x.shape, dtype=x.dtype) >= p  # (...) bool
    out = x * keep  # (...)
    out *= x.dtype.type(1.0 / (1.0 - p))
    return out, keep


def dropout(x, p, rng):
    """dropout_plain's (out, keep), bit for bit: one pass that draws the numbers and applies
    the mask, fused on the device and compiled on the host in float32; else the array code."""
    cpu = _cpu(x)
    if (_fused() and isinstance(rng, philox.SequenceStreams) and x.ndim >= 1 and x.size
            and x.dtype in (numpy.float32, numpy.float64)):
        draw = rng.next_draw()  # the same draw numbering as rng.random
        return cuda_kernels.dropout_forward(x, p, rng.key32, draw, rng.first_row, philox.PHILOX_CUDA)  # (...), (...)
    if cpu is None or not isinstance(rng, philox.SequenceStreams) or x.ndim < 1 or not x.size:
        return dropout_plain(x, p, rng)  # (...), (...)
    draw = rng.next_draw()  # the same draw numbering as rng.random
    rows = x.shape[0]
    x2 = numpy.ascontiguousarray(x).reshape(rows, -1)  # (B, n)
    out = host.empty_apart(x2, x2)  # (B, n)
    keep = numpy.empty(x2.shape, bool)  # (B, n)
    k0, k1, fr = int(rng.key32[0]), int(rng.key32[1]), rng.first_row
    p32, scale = numpy.float32(p), numpy.float32(1.0 / (1.0 - p))
    host.split_run(lambda lo, hi: cpu.dropout32(x2, p32, scale, k0, k1, draw, fr, out, keep, lo, hi), rows,
                   x2.size)
    return out.reshape(x.shape), keep.reshape(x.shape)


def dropout_backward_plain(dout, keep, scale):
    """dx = dout * keep * scale: the forward's mask and scale, as array code."""
    dx = dout * keep  # (...)
    dx *= scale
    return dx


def dropout_backward(dout, keep, scale):
    """dropout_backward_plain's dx, bit for bit: one fused pass on the device, a compiled
    pass on the host in float32, else the same two array ops; on the host each half of the
    elements on one thread."""
    if (_fused() and dout.shape == keep.shape and keep.dtype == bool
            and dout.dtype in (numpy.float32, numpy.float64)):
        return cuda_kernels.dropout_backward(dout, keep, scale)  # (...)
    if (backend.xp is not numpy or dout.shape != keep.shape
            or not (dout.flags.c_contiguous and keep.flags.c_contiguous)):
        return dropout_backward_plain(dout, keep, scale)  # (...)
    cpu = _cpu(dout)
    if cpu is not None and keep.dtype == bool:
        dx = host.empty_apart(dout, dout)  # (...)
        g, k, d, s = dout.reshape(-1), keep.reshape(-1), dx.reshape(-1), numpy.float32(scale)  # (n,) views
        host.split_run(lambda lo, hi: cpu.dropout_backward32(g, k, s, d, lo, hi), g.size, g.size)
        return dx
    dx = numpy.empty(dout.shape, numpy.result_type(dout, keep))  # (...)
    g, k, d = dout.reshape(-1), keep.reshape(-1), dx.reshape(-1)  # (n,) views

    def half(lo, hi):
        numpy.multiply(g[lo:hi], k[lo:hi], out=d[lo:hi])
        d[lo:hi] *= scale
    host.split_run(half, g.size, g.size)
    return dx


# ----------------------------------------------------------------------------------------
# softmax(x * scale + bias) over the last axis: attention's scaled, masked scores


def softmax_plain(x, scale=1.0, bias=None, overwrite=False):
    """The array code: scale, add the bias (broadcast), subtract the row max so exp cannot
    overflow, exp, divide by the row sum. overwrite=True works in x's memory (the caller no
    longer needs x: one (..., K) temporary fewer); else x is left as it was."""
    xp = backend.xp
    y = x if overwrite else x.copy()  # (..., K)
    if scale != 1.0:
        y *= x.dtype.type(scale)
    if bias is not None:
        y += bias
    y -= y.max(axis=-1, keepdims=True)
    xp.exp(y, out=y)
    y /= y.sum(axis=-1, keepdims=True)
    return y  # (..., K)


def softmax(x, scale=1.0, bias=None, overwrite=False):
    """softmax(x * scale + bias) over the last axis: one fused CUDA pass per row on the
    device (bias broadcast over the leading axes after its first, as attention's (B, 1, 1, K)
    mask), else softmax_plain."""
    cpu, rows_per_bias = _cpu(x), _row_bias(x, bias)
    if _fused() and rows_per_bias is not None:
        return cuda_kernels.softmax_forward(x, scale, bias, overwrite, rows_per_bias)  # (..., K)
    if cpu is not None and rows_per_bias is not None and x.size and (bias is None or bias.dtype == x.dtype):
        K = x.shape[-1]
        x2 = numpy.ascontiguousarray(x).reshape(-1, K)  # (R, K)
        b2 = numpy.zeros((1, K), x.dtype) if bias is None else numpy.ascontiguousarray(bias).reshape(-1, K)  # (Rb, K)
        # in place when the caller allows it, or when x2 is already a copy of x
        y = x2 if overwrite or not numpy.shares_memory(x2, x) else host.empty_apart(x2, x2)  # (R, K)
        rpb, sc = x2.shape[0] if bias is None else rows_per_bias, x.dtype.type(scale)
        lse = numpy.empty(x2.shape[0], numpy.float32)  # (R,) filled, not needed here
        host.split_run(lambda lo, hi: cpu.softmax_forward(x2, b2, rpb, sc, y, lse, lo, hi), x2.shape[0], x2.size)
        return y.reshape(x.shape)
    return softmax_plain(x, scale, bias, overwrite)  # (..., K)


def softmax_lse_plain(x):
    """(softmax(x), logsumexp(x)) over the last axis of x (R, K) as array code: the
    probabilities and log sum_k exp(x_k) = max + log sum_k exp(x_k - max), each row's."""
    xp = backend.xp
    m = x.max(axis=-1, keepdims=True)  # (R, 1)
    e = x - m  # (R, K)
    xp.exp(e, out=e)
    s = e.sum(axis=-1, keepdims=True)  # (R, 1)
    e /= s
    return e, (m + xp.log(s))[:, 0]  # (R, K), (R,)


def softmax_lse(x):
    """softmax_lse_plain's two results: a compiled pass per row on the host in float32,
    else the array code. The cross-entropy's forward (losses.py)."""
    cpu = _cpu(x)
    if cpu is None or x.ndim != 2 or not x.size:
        return softmax_lse_plain(x)  # (R, K), (R,)
    x2 = numpy.ascontiguousarray(x)  # (R, K)
    y = host.empty_apart(x2, x2)  # (R, K)
    lse = numpy.empty(x2.shape[0], numpy.float32)  # (R,)
    nobias = numpy.zeros((1, x2.shape[1]), numpy.float32)  # (1, K)
    host.split_run(lambda lo, hi: cpu.softmax_forward(x2, nobias, x2.shape[0], numpy.float32(1.0), y, lse, lo, hi),
                   x2.shape[0], x2.size)
    return y, lse


def softmax_backward_plain(y, dout, scale=1.0):
    """dx = scale * y * (dout - sum(dout * y)) over the last axis, as array code."""
    xp = backend.xp
    dx = dout * y  # (..., K)
    s = dx.sum(axis=-1, keepdims=True)  # (..., 1)
    xp.subtract(dout, s, out=dx)
    dx *= y
    if scale != 1.0:
        dx *= y.dtype.type(scale)
    return dx  # (..., K)


def softmax_backward(y, dout, scale=1.0):
    """softmax's backward: one fused CUDA pass per row on the device, else the array code."""
    if _fused():
        return cuda_kernels.softmax_backward(y, dout, scale)  # (..., K)
    cpu = _cpu(y)
    if cpu is not None and dout.dtype == y.dtype and y.size:
        K = y.shape[-1]
        y2 = numpy.ascontiguousarray(y).reshape(-1, K)  # (R, K)
        d2, sc = numpy.ascontiguousarray(dout).reshape(-1, K), y.dtype.type(scale)  # (R, K)
        dx = host.empty_apart(y2, y2, d2)  # (R, K)
        host.split_run(lambda lo, hi: cpu.softmax_backward(y2, d2, sc, dx, lo, hi), y2.shape[0], y2.size)
        return dx.reshape(y.shape)
    return softmax_backward_plain(y, dout, scale)  # (..., K)


def _row_bias(x, bias):
    """Rows of x per row of bias, when bias is None (1) or of shape (R0, 1, ..., 1, K) with R0
    1 or x's first axis (attention's (B, 1, 1, K) mask against (B, A, T, K) scores); None
    for any other broadcast, which the fused kernel does not index."""
    K = x.shape[-1]
    if bias is None:
        return 1
    if bias.ndim != x.ndim or bias.shape[-1] != K or any(d != 1 for d in bias.shape[1:-1]) \
            or bias.shape[0] not in (1, x.shape[0]):
        return None
    return max(x.size // K // bias.shape[0], 1)


# ----------------------------------------------------------------------------------------
# one AdamW step of one parameter, in place, with optim.AdamW.step's folded scalars:
#   p <- p * decay;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
#   p <- p - step_size * m / (sqrt(v) + eps_hat)


def adamw_update_plain(p, g, m, v, decay, b1, b2, step_size, eps_hat, scratch=None):
    """The update as array ops, in place on p, m, v; scratch: a buffer like p (or None)."""
    xp = backend.xp
    s = xp.empty_like(p) if scratch is None else scratch  # like p
    if not isinstance(decay, float) or decay != 1.0:  # a 0-d device array (a skippable step) is not read
        p *= decay  # decoupled decay: p <- p * (1 - lr * wd), before the update
    # m <- b1 * m + (1 - b1) * g
    xp.multiply(g, 1.0 - b1, out=s)
    m *= b1
    m += s
    # v <- b2 * v + (1 - b2) * g * g
    xp.multiply(g, g, out=s)
    s *= 1.0 - b2
    v *= b2
    v += s
    # p <- p - step_size * m / (sqrt(v) + eps_hat)
    xp.sqrt(v, out=s)
    s += eps_hat
    xp.divide(m, s, out=s)
    s *= step_size
    p -= s


def adamw_update(p, g, m, v, decay, b1, b2, step_size, eps_hat, scratch=None):
    """One AdamW step in place: one fused pass on the device, else adamw_update_plain.
    The constants are floats, or 0-d arrays (AdamW's skippable step): on the host those
    are read at once (no device to wait for), on the device they go to the plain path,
    whose array ops broadcast them without a host read."""
    cpu = _cpu(p)
    if cpu is not None and p.flags.c_contiguous and all(a.flags.c_contiguous and a.dtype == p.dtype for a in (g, m, v)):
        dt = p.dtype.type
        flat = [a.reshape(-1) for a in (p, g, m, v)]  # (n,) views
        consts = [dt(c) for c in (decay, b1, 1.0 - b1, b2, 1.0 - b2, step_size, eps_hat)]
        host.split_run(lambda lo, hi: cpu.adamw(*flat, *consts, lo, hi), p.size, p.size)
        return
    if not _fused() or any(hasattr(c, "ndim") for c in (decay, b1, b2, step_size, eps_hat)):
        adamw_update_plain(p, g, m, v, decay, b1, b2, step_size, eps_hat, scratch)
        return
    cuda_kernels.adamw(p, g, m, v, decay, b1, b2, step_size, eps_hat)
