"""The speed paths: each op behind one name, beside the plain array code it must equal.

A reader follows the plain twin; the fast variants compute the same numbers (to rounding)
faster, and tests/test_kernels.py compares each with its twin.

    name (what layers/optim call)   plain twin (the reference)           fast variants
    normal_cdf(x)                   normal_cdf_plain                     float32: erfc approximation
        Phi(x) = 0.5 (1 + erf(x / sqrt 2))                               (normal_cdf_float32), in
                                                                          cache-sized blocks on the host
    gelu_exact(x)                   gelu_exact_plain                     device: one fused CUDA pass;
        out = x Phi(x)                                                    float32: the erfc Phi, in blocks
    gelu_exact_backward(x, dout)    gelu_exact_backward_plain            as gelu_exact
        dx = dout (Phi(x) + x phi(x)), phi the normal density
    adamw_update(p, g, m, v, ...)   adamw_update_plain                   device: one fused CUDA pass
        one AdamW step of one parameter, in place
    softmax(x, scale, bias)         softmax_plain                        device: one CUDA warp per row
        softmax(x * scale + bias) over the last axis (attention's scores, scale and padding mask)
    softmax_backward(y, dout, scale) softmax_backward_plain              device: one CUDA warp per row
        dx = scale * y * (dout - sum(dout * y))                          host float32: one compiled pass
    softmax_lse(x)                  softmax_lse_plain                    host float32: one compiled pass
        (softmax(x), log sum exp(x)) per row: the cross-entropy's forward

    layernorm(x, w, b, eps)         layernorm_plain                      device: one CUDA block per row;
        (x - mean) * rstd * w + b over the last axis, with mean and rstd per row   host float32: a compiled pass
    layernorm_backward(...)         layernorm_backward_plain             as layernorm
    philox_uniform(shape, ...)      backend.philox_uniform_plain         host: a compiled loop (bit for bit)
        dropout's uniform numbers, keyed per row (backend.SequenceStreams)
    dropout(x, p, rng)              dropout_plain                        host float32: one compiled pass
        (x * keep / (1 - p), keep) with keep = u >= p                     (bit for bit); device: one
                                                                          fused pass (bit for bit)
    dropout_backward(dout, keep, s) dropout_backward_plain               host: the array ops on both
        dx = dout * keep * s                                              threads (bit for bit); device:
                                                                          one fused pass (bit for bit)
    sum_rows(a)                     a.sum(axis=0)                        device: one cuBLAS GEMV, ones @ a
        the sum over the rows of a (N, K): bias and layer-norm gradients

Dispatch: on the device (CuPy) the fused CUDA kernel, unless `use_fused` is False. On the
host in float32, the compiled loops of minibert/cpu_kernels.py (Numba: one pass, both
cores) when Numba is installed and `use_numba` is True, else the array code (the GELU in
cache-sized blocks). float64 on the host is the plain formula itself, so every float64
gradient check sees the textbook expression.

Shapes: every op is elementwise over any shape `(...)` (softmax: over the last axis K, the
bias broadcast), and its outputs have the shape of x (or p). docs/benchmarks.md records
what each variant gained and what was tried.
"""
import math
import os

import numpy

from minibert import backend

use_fused = True  # False: the device runs the array code too (tests compare the two)
# False: the host runs the array code in float32 too (tests compare the two). MINIBERT_NUMBA=0
# in the environment starts with it off: no Numba import, ~120 MB less resident memory
use_numba = os.environ.get("MINIBERT_NUMBA", "1").strip() != "0"
_cpu_module = []  # [minibert.cpu_kernels] or [None] when Numba is missing: imported at first use


def _cpu(x=None):
    """minibert.cpu_kernels when the host should run a compiled loop for x (float32, or any
    dtype when x is None), else None: not on the host, use_numba off, or Numba missing."""
    if backend.xp is not numpy or not use_numba or (x is not None and x.dtype != numpy.float32):
        return None
    if not _cpu_module:
        try:
            from minibert import cpu_kernels
        except ImportError:  # Numba is not installed: the array code, slower, same results
            cpu_kernels = None
        _cpu_module.append(cpu_kernels)
    return _cpu_module[0]

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
    return backend.blockwise(normal_cdf_float32, x)  # (...)


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
    """x Phi(x) for one block of backend.blockwise, Phi by normal_cdf."""
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
    fused, cpu = _fused("gelu_forward"), _cpu(x)
    if fused is not None:
        return fused(x)  # (...)
    if cpu is not None:
        x = numpy.ascontiguousarray(x)
        out = backend.empty_apart(x, x)  # (...)
        xf, of = x.reshape(-1), out.reshape(-1)  # (n,) views
        backend.split_run(lambda lo, hi: cpu.gelu_forward(xf, of, lo, hi), x.size, x.size)
        return out
    return backend.blockwise(_gelu_exact_block, x)  # (...)


def gelu_exact_backward(x, dout):
    """dout (Phi(x) + x phi(x)): as gelu_exact."""
    fused, cpu = _fused("gelu_backward"), _cpu(x)
    if fused is not None:
        return fused(x, dout)  # (...)
    if cpu is not None and dout.dtype == x.dtype:
        x, dout = numpy.ascontiguousarray(x), numpy.ascontiguousarray(dout)
        dx = backend.empty_apart(x, x, dout)  # (...)
        xf, df, dxf = x.reshape(-1), dout.reshape(-1), dx.reshape(-1)  # (n,) views
        backend.split_run(lambda lo, hi: cpu.gelu_backward(xf, df, dxf, lo, hi), x.size, x.size)
        return dx
    return backend.blockwise(_gelu_exact_backward_block, x, dout)  # (...)


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
    fused = _fused("layernorm_forward")
    if fused is not None and x.size and w.dtype == x.dtype == b.dtype:
        xp = backend.xp
        H = x.shape[-1]
        x2 = xp.ascontiguousarray(x).reshape(-1, H)  # (N, H)
        out = xp.empty_like(x2)  # (N, H)
        mean = xp.empty((x2.shape[0], 1), x.dtype)  # (N, 1)
        rstd = xp.empty((x2.shape[0], 1), x.dtype)  # (N, 1)
        fused((x2.shape[0],), (_THREADS,), (x2, xp.ascontiguousarray(w), xp.ascontiguousarray(b), out, mean, rstd,
                                            x.dtype.type(eps), xp.int64(H)))
        lead = x.shape[:-1] + (1,)
        return out.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)
    cpu = _cpu(x)
    if cpu is None or w.dtype != x.dtype:
        return layernorm_plain(x, w, b, eps)
    H = x.shape[-1]
    x2 = numpy.ascontiguousarray(x).reshape(-1, H)  # (N, H)
    out = backend.empty_apart(x2, x2)  # (N, H)
    mean = numpy.empty((x2.shape[0], 1), x.dtype)  # (N, 1)
    rstd = numpy.empty((x2.shape[0], 1), x.dtype)  # (N, 1)
    m1, r1 = mean[:, 0], rstd[:, 0]  # (N,) views
    backend.split_run(lambda lo, hi: cpu.layernorm_forward(x2, w, b, float(eps), out, m1, r1, lo, hi), x2.shape[0],
                      x2.size)
    lead = x.shape[:-1] + (1,)
    return out.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)


def layernorm_backward(dout, x, w, mean, rstd):
    """(dx, dw, db) of layernorm: on the device one CUDA block per row writes dx and
    dout * xhat, and dw, db are two sum_rows; a compiled pass on the host in float32, else
    the plain twin."""
    fused = _fused("layernorm_backward")
    if fused is not None and x.size and w.dtype == x.dtype == dout.dtype:
        xp = backend.xp
        H = x.shape[-1]
        x2, d2 = xp.ascontiguousarray(x).reshape(-1, H), xp.ascontiguousarray(dout).reshape(-1, H)  # (N, H)
        m1, r1 = xp.ascontiguousarray(mean).reshape(-1), xp.ascontiguousarray(rstd).reshape(-1)  # (N,)
        dx = xp.empty_like(x2)  # (N, H)
        gxhat = xp.empty_like(x2)  # (N, H) dout * xhat, written by the same pass
        fused((x2.shape[0],), (_THREADS,), (d2, x2, xp.ascontiguousarray(w), m1, r1, dx, gxhat, xp.int64(H)))
        return dx.reshape(x.shape), sum_rows(gxhat), sum_rows(d2)  # (..., H), (H,), (H,)
    cpu = _cpu(x)
    if cpu is None or dout.dtype != x.dtype:
        return layernorm_backward_plain(dout, x, w, mean, rstd)
    H = x.shape[-1]
    x2 = numpy.ascontiguousarray(x).reshape(-1, H)  # (N, H)
    d2 = numpy.ascontiguousarray(dout).reshape(-1, H)  # (N, H)
    dx = backend.empty_apart(x2, x2, d2)  # (N, H)
    m1, r1 = numpy.ascontiguousarray(mean).reshape(-1), numpy.ascontiguousarray(rstd).reshape(-1)  # (N,)
    dw_part = numpy.zeros((2, H))  # (2, H) float64 partial sums: one row per half of the rows
    db_part = numpy.zeros((2, H))  # (2, H)
    backend.split_run(lambda lo, hi: cpu.layernorm_backward(d2, x2, w, m1, r1, dx, dw_part[int(lo > 0)], db_part[int(lo > 0)],
                                                            lo, hi), x2.shape[0], x2.size)
    return dx.reshape(x.shape), dw_part.sum(axis=0).astype(x.dtype), db_part.sum(axis=0).astype(x.dtype)


# ----------------------------------------------------------------------------------------
# dropout (inverted): out = x * keep / (1 - p), keep = u >= p, u uniform from the rng


def dropout_plain(x, p, rng):
    """(out, keep): one draw of rng (backend.SequenceStreams) for x's shape, a bool mask
    and the scaled product, as array code."""
    keep = rng.random(x.shape, dtype=x.dtype) >= p  # (...) bool
    out = x * keep  # (...)
    out *= x.dtype.type(1.0 / (1.0 - p))
    return out, keep


def dropout(x, p, rng):
    """dropout_plain's (out, keep), bit for bit: one pass that draws the numbers and applies
    the mask, fused on the device and compiled on the host in float32; else the array code."""
    fused, cpu = _fused("dropout_forward"), _cpu(x)
    if (fused is not None and isinstance(rng, backend.SequenceStreams) and x.ndim >= 1 and x.size
            and x.dtype in (numpy.float32, numpy.float64)):
        draw = rng.next_draw()  # the same draw numbering as rng.random
        xp, dt = backend.xp, x.dtype.type
        out = xp.empty(x.shape, x.dtype)  # (...)
        keep = xp.empty(x.shape, bool)  # (...)
        fused(x, numpy.uint32(rng.key32[0]), numpy.uint32(rng.key32[1]), numpy.uint32(draw),
              numpy.int64(rng.first_row), numpy.int64(x.size // x.shape[0]), dt(p), dt(1.0 / (1.0 - p)), out, keep)
        return out, keep
    if cpu is None or not isinstance(rng, backend.SequenceStreams) or x.ndim < 1 or not x.size:
        return dropout_plain(x, p, rng)  # (...), (...)
    draw = rng.next_draw()  # the same draw numbering as rng.random
    rows = x.shape[0]
    x2 = numpy.ascontiguousarray(x).reshape(rows, -1)  # (B, n)
    out = backend.empty_apart(x2, x2)  # (B, n)
    keep = numpy.empty(x2.shape, bool)  # (B, n)
    k0, k1, fr = int(rng.key32[0]), int(rng.key32[1]), rng.first_row
    p32, scale = numpy.float32(p), numpy.float32(1.0 / (1.0 - p))
    backend.split_run(lambda lo, hi: cpu.dropout32(x2, p32, scale, k0, k1, draw, fr, out, keep, lo, hi), rows,
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
    fused = _fused("dropout_backward")
    if (fused is not None and dout.shape == keep.shape and keep.dtype == bool
            and dout.dtype in (numpy.float32, numpy.float64)):
        return fused(dout, keep, dout.dtype.type(scale))  # (...)
    if (backend.xp is not numpy or dout.shape != keep.shape
            or not (dout.flags.c_contiguous and keep.flags.c_contiguous)):
        return dropout_backward_plain(dout, keep, scale)  # (...)
    cpu = _cpu(dout)
    if cpu is not None and keep.dtype == bool:
        dx = backend.empty_apart(dout, dout)  # (...)
        g, k, d, s = dout.reshape(-1), keep.reshape(-1), dx.reshape(-1), numpy.float32(scale)  # (n,) views
        backend.split_run(lambda lo, hi: cpu.dropout_backward32(g, k, s, d, lo, hi), g.size, g.size)
        return dx
    dx = numpy.empty(dout.shape, numpy.result_type(dout, keep))  # (...)
    g, k, d = dout.reshape(-1), keep.reshape(-1), dx.reshape(-1)  # (n,) views

    def half(lo, hi):
        numpy.multiply(g[lo:hi], k[lo:hi], out=d[lo:hi])
        d[lo:hi] *= scale
    backend.split_run(half, g.size, g.size)
    return dx


# ----------------------------------------------------------------------------------------
# dropout's random numbers


def philox_uniform(shape, dtype, key, draw, first_row):
    """backend.philox_uniform_plain's numbers: a compiled loop on the host, bit for bit."""
    cpu, dt = _cpu(), numpy.dtype(dtype)
    if cpu is None or dt not in (numpy.float32, numpy.float64):
        return backend.philox_uniform_plain(shape, dtype, key, draw, first_row)  # (...)
    out = numpy.empty(shape, dt)  # (rows, ...)
    rows = shape[0] if shape else 1
    fill = cpu.philox_uniform32 if dt == numpy.float32 else cpu.philox_uniform64
    o2 = out.reshape(rows, -1)  # (rows, n) view
    backend.split_run(lambda lo, hi: fill(o2, int(key[0]), int(key[1]), int(draw), int(first_row), lo, hi), rows,
                      out.size)
    return out


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
    fused, cpu = _fused("softmax_forward"), _cpu(x)
    rows_per_bias = _row_bias(x, bias)
    if fused is not None and rows_per_bias is not None:
        return _softmax_device(fused, x, scale, bias, overwrite)  # (..., K)
    if cpu is not None and rows_per_bias is not None and x.size and (bias is None or bias.dtype == x.dtype):
        K = x.shape[-1]
        x2 = numpy.ascontiguousarray(x).reshape(-1, K)  # (R, K)
        b2 = numpy.zeros((1, K), x.dtype) if bias is None else numpy.ascontiguousarray(bias).reshape(-1, K)  # (Rb, K)
        # in place when the caller allows it, or when x2 is already a copy of x
        y = x2 if overwrite or not numpy.shares_memory(x2, x) else backend.empty_apart(x2, x2)  # (R, K)
        rpb, sc = x2.shape[0] if bias is None else rows_per_bias, x.dtype.type(scale)
        lse = numpy.empty(x2.shape[0], numpy.float32)  # (R,) filled, not needed here
        backend.split_run(lambda lo, hi: cpu.softmax_forward(x2, b2, rpb, sc, y, lse, lo, hi), x2.shape[0], x2.size)
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
    y = backend.empty_apart(x2, x2)  # (R, K)
    lse = numpy.empty(x2.shape[0], numpy.float32)  # (R,)
    nobias = numpy.zeros((1, x2.shape[1]), numpy.float32)  # (1, K)
    backend.split_run(lambda lo, hi: cpu.softmax_forward(x2, nobias, x2.shape[0], numpy.float32(1.0), y, lse, lo, hi),
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
    fused, cpu = _fused("softmax_backward"), _cpu(y)
    if fused is None and cpu is not None and dout.dtype == y.dtype and y.size:
        K = y.shape[-1]
        y2 = numpy.ascontiguousarray(y).reshape(-1, K)  # (R, K)
        d2, sc = numpy.ascontiguousarray(dout).reshape(-1, K), y.dtype.type(scale)  # (R, K)
        dx = backend.empty_apart(y2, y2, d2)  # (R, K)
        backend.split_run(lambda lo, hi: cpu.softmax_backward(y2, d2, sc, dx, lo, hi), y2.shape[0], y2.size)
        return dx.reshape(y.shape)
    if fused is None:
        return softmax_backward_plain(y, dout, scale)  # (..., K)
    xp = backend.xp
    y, dout = xp.ascontiguousarray(y), xp.ascontiguousarray(dout.astype(y.dtype, copy=False))
    K = y.shape[-1]
    dx = xp.empty_like(y)  # (..., K)
    R = y.size // K if K else 0
    if R:
        fused((-(-R // _WARPS),), (32 * _WARPS,), (y, dout, dx, y.dtype.type(scale), xp.int64(K), xp.int64(R)))
    return dx  # (..., K)


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


def _softmax_device(fused, x, scale, bias, overwrite):
    """Launch the fused softmax forward: one warp per row of x, _WARPS rows to a block.
    Each lane reads an element before writing it and touches no other lane's, so y may be
    x itself: it is when the caller allows it, or when x had to be copied to be contiguous."""
    xp = backend.xp
    xc = xp.ascontiguousarray(x)
    rows_per_bias = _row_bias(xc, bias)
    b = xc if bias is None else xp.ascontiguousarray(bias.astype(x.dtype, copy=False))  # xc: unused placeholder
    y = xc if overwrite or xc is not x else xp.empty_like(xc)  # (..., K)
    x = xc
    K = x.shape[-1]
    R = x.size // K if K else 0
    if R:
        fused((-(-R // _WARPS),), (32 * _WARPS,), (x, b, y, x.dtype.type(scale), xp.int64(K), xp.int64(rows_per_bias),
                                                    xp.int32(bias is not None), xp.int64(R)))
    return y  # (..., K)


# ----------------------------------------------------------------------------------------
# one AdamW step of one parameter, in place, with optim.AdamW.step's folded scalars:
#   p <- p * decay;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
#   p <- p - step_size * m / (sqrt(v) + eps_hat)


def adamw_update_plain(p, g, m, v, decay, b1, b2, step_size, eps_hat, scratch=None):
    """The update as array ops, in place on p, m, v; scratch: a buffer like p (or None)."""
    xp = backend.xp
    s = xp.empty_like(p) if scratch is None else scratch  # like p
    if decay != 1.0:
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
    """One AdamW step in place: one fused pass on the device, else adamw_update_plain."""
    fused, cpu = _fused("adamw"), _cpu(p)
    if cpu is not None and p.flags.c_contiguous and all(a.flags.c_contiguous and a.dtype == p.dtype for a in (g, m, v)):
        dt = p.dtype.type
        flat = [a.reshape(-1) for a in (p, g, m, v)]  # (n,) views
        consts = [dt(c) for c in (decay, b1, 1.0 - b1, b2, 1.0 - b2, step_size, eps_hat)]
        backend.split_run(lambda lo, hi: cpu.adamw(*flat, *consts, lo, hi), p.size, p.size)
        return
    if fused is None:
        adamw_update_plain(p, g, m, v, decay, b1, b2, step_size, eps_hat, scratch)
        return
    dt = p.dtype.type
    # the complements 1 - b are taken in float64 here, as the plain path does: 1 - b2 in
    # float32 on the device would be 1.3e-5 relative off (b2 = 0.999 is not a float32)
    fused(g, dt(decay), dt(b1), dt(1.0 - b1), dt(b2), dt(1.0 - b2), dt(step_size), dt(eps_hat), p, m, v)


# ----------------------------------------------------------------------------------------
# the fused CUDA kernels (CuPy ElementwiseKernels: one pass over memory instead of one per
# array op). CUDA's normcdf/normcdff is the normal CDF to within an ulp or two.

_KERNEL_PREAMBLE = """
__device__ inline float minibert_phi(float x) { return normcdff(x); }
__device__ inline double minibert_phi(double x) { return normcdf(x); }
"""
_KERNEL_SRC = {
    # out = x Phi(x)
    "gelu_forward": ("T x", "T out", "out = x * minibert_phi(x);"),
    # dx = dout (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    "gelu_backward": ("T x, T dout", "T dx",
                      "dx = dout * (minibert_phi(x) + x * exp((T)-0.5 * x * x) * (T)0.3989422804014327);"),
    # dropout_plain in one pass: u the generator's number for element i (the same Philox
    # words as rng.random), then out = x * keep * scale rounded as the array code rounds it
    "dropout_forward": ("T x, uint32 key0, uint32 key1, uint32 draw, int64 first_row, int64 row_size, T p, T scale",
                        "T out, bool keep",
                        "T u = (T)minibert_philox_uniform(i, row_size, sizeof(T) == 8 ? 2 : 4, key0, key1, draw,"
                        " first_row); keep = u >= p; out = x * (T)keep * scale;"),
    # dx = dout * keep * scale, as dropout_backward_plain
    "dropout_backward": ("T dout, bool keep, T scale", "T dx", "dx = dout * (T)keep * scale;"),
    # one AdamW step in place, as adamw_update_plain
    "adamw": ("T g, T decay, T b1, T one_minus_b1, T b2, T one_minus_b2, T step_size, T eps_hat",
              "T p, T m, T v",
              "p *= decay; m = b1 * m + one_minus_b1 * g; v = b2 * v + one_minus_b2 * g * g;"
              " p -= step_size * m / (sqrt(v) + eps_hat);"),
}
_kernels = {}  # name -> compiled ElementwiseKernel, built on first use

# Row kernels. Layer norm: one block per row of H elements; each thread strides over the
# row, then a tree reduction in shared memory gives the row's sum. Softmax: one warp per
# row, reduced by shuffles. REAL is float or double.
_THREADS = 256  # threads per block of the layer-norm kernels: a power of two, for the tree reduction
_WARPS = 4  # rows per block of the softmax kernels (one warp each)
_ROW_SRC = r"""
__device__ REAL minibert_reduce(REAL v, REAL* red, int take_max) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            REAL o = red[threadIdx.x + s];
            red[threadIdx.x] = take_max ? fmax(red[threadIdx.x], o) : red[threadIdx.x] + o;
        }
        __syncthreads();
    }
    REAL r = red[0];
    __syncthreads();  // red is reused by the next reduction
    return r;
}

// the softmax kernels: one warp (32 threads) per row, _WARPS rows to a block. Attention's rows
// are short (K = T keys), and a whole block per row spent its time in barriers: one warp
// reduces with shuffles and no barrier. Each lane reads and writes only its own elements
// (k = lane, lane + 32, ...), so y may be x itself.
__device__ REAL minibert_warp_reduce(REAL v, int take_max) {
    // butterfly: every lane ends with the same bits (each step adds or maxes the same pair)
    for (int o = 16; o > 0; o >>= 1) {
        REAL u = __shfl_xor_sync(0xffffffffu, v, o);
        v = take_max ? fmax(v, u) : v + u;
    }
    return v;
}

// y = softmax(x * scale + bias) over each row; the bias row is row / rows_per_bias
extern "C" __global__ void minibert_softmax_forward(const REAL* x, const REAL* bias, REAL* y, REAL scale,
                                                    long long K, long long rows_per_bias, int has_bias,
                                                    long long R) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= R) return;  // the whole warp: no lane of it is needed by another row
    const int lane = threadIdx.x % 32;
    const REAL* xr = x + row * K;
    const REAL* br = bias + (row / rows_per_bias) * K;
    REAL* yr = y + row * K;
    REAL m = xr[0] * scale + (has_bias ? br[0] : (REAL)0);
    for (long long k = lane; k < K; k += 32) m = fmax(m, xr[k] * scale + (has_bias ? br[k] : (REAL)0));
    m = minibert_warp_reduce(m, 1);  // subtract the row max so exp cannot overflow
    REAL s = 0;
    for (long long k = lane; k < K; k += 32) {
        REAL e = exp(xr[k] * scale + (has_bias ? br[k] : (REAL)0) - m);
        yr[k] = e;
        s += e;
    }
    s = minibert_warp_reduce(s, 0);
    const REAL inv = (REAL)1 / s;
    for (long long k = lane; k < K; k += 32) yr[k] *= inv;
}

// dx = scale * y * (dout - sum(dout * y)) over each row
extern "C" __global__ void minibert_softmax_backward(const REAL* y, const REAL* dout, REAL* dx, REAL scale,
                                                     long long K, long long R) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= R) return;
    const int lane = threadIdx.x % 32;
    const REAL* yr = y + row * K;
    const REAL* dr = dout + row * K;
    REAL* xr = dx + row * K;
    REAL s = 0;
    for (long long k = lane; k < K; k += 32) s += dr[k] * yr[k];
    s = minibert_warp_reduce(s, 0);
    for (long long k = lane; k < K; k += 32) xr[k] = scale * yr[k] * (dr[k] - s);
}

// layer norm of each row of H: out = (x - mean) * rstd * w + b; mean and rstd per row
extern "C" __global__ void minibert_layernorm_forward(const REAL* x, const REAL* w, const REAL* b, REAL* out,
                                                      REAL* mean, REAL* rstd, REAL eps, long long H) {
    __shared__ REAL red[256];
    const long long row = blockIdx.x;
    const REAL* xr = x + row * H;
    REAL* orow = out + row * H;
    REAL s = 0;
    for (long long k = threadIdx.x; k < H; k += blockDim.x) s += xr[k];
    const REAL mu = minibert_reduce(s, red, 0) / (REAL)H;
    REAL s2 = 0;
    for (long long k = threadIdx.x; k < H; k += blockDim.x) { REAL d = xr[k] - mu; s2 += d * d; }
    const REAL r = (REAL)1 / sqrt(minibert_reduce(s2, red, 0) / (REAL)H + eps);  // biased variance
    for (long long k = threadIdx.x; k < H; k += blockDim.x) orow[k] = (xr[k] - mu) * r * w[k] + b[k];
    if (threadIdx.x == 0) { mean[row] = mu; rstd[row] = r; }
}

// dout * w rounded once, with no FMA: both loops below see the same dxhat, so a row whose
// dxhat is all one value (H = 1) gets exactly dxhat - mean(dxhat) = 0
__device__ inline float minibert_mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double minibert_mul_rn(double a, double b) { return __dmul_rn(a, b); }

// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * w, per row;
// also gxhat = dout * xhat, whose column sums are dw
extern "C" __global__ void minibert_layernorm_backward(const REAL* dout, const REAL* x, const REAL* w,
                                                       const REAL* mean, const REAL* rstd, REAL* dx, REAL* gxhat,
                                                       long long H) {
    __shared__ REAL red[256];
    const long long row = blockIdx.x;
    const REAL* xr = x + row * H;
    const REAL* dr = dout + row * H;
    REAL* dxr = dx + row * H;
    REAL* gr = gxhat + row * H;
    const REAL mu = mean[row], r = rstd[row];
    REAL a = 0, c = 0;
    for (long long k = threadIdx.x; k < H; k += blockDim.x) {
        REAL g = minibert_mul_rn(dr[k], w[k]);
        a += g;
        c += g * (xr[k] - mu) * r;
    }
    a = minibert_reduce(a, red, 0) / (REAL)H;
    c = minibert_reduce(c, red, 0) / (REAL)H;
    for (long long k = threadIdx.x; k < H; k += blockDim.x) {
        dxr[k] = r * (minibert_mul_rn(dr[k], w[k]) - a - (xr[k] - mu) * r * c);
        gr[k] = dr[k] * ((xr[k] - mu) * r);  // as the plain twin: xhat, then dout * xhat
    }
}
"""
_row_modules = {}  # dtype name -> compiled RawModule


def _row_kernel(name, dtype):
    """RawModule function minibert_NAME for float32 or float64 arrays."""
    real = {"float32": "float", "float64": "double"}[str(dtype)]
    if real not in _row_modules:
        _row_modules[real] = backend.xp.RawModule(code=_ROW_SRC.replace("REAL", real))
    return _row_modules[real].get_function("minibert_" + name)


def _fused(name):
    """The fused kernel `name` when the device backend is in use (and use_fused), else None.
    Row kernels come back as launch(grid, block, args), compiled for args[0]'s dtype."""
    if backend.name != "cupy" or not use_fused:
        return None
    if name in ("softmax_forward", "softmax_backward", "layernorm_forward", "layernorm_backward"):
        return lambda grid, block, args: _row_kernel(name, args[0].dtype)(grid, block, args)
    if name not in _kernels:
        in_params, out_params, body = _KERNEL_SRC[name]
        _kernels[name] = backend.xp.ElementwiseKernel(in_params, out_params, body, "minibert_" + name,
                                                      preamble=_KERNEL_PREAMBLE + backend.PHILOX_CUDA)
    return _kernels[name]
