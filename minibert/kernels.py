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
    softmax(x, scale, bias)         softmax_plain                        host float32: numexpr passes
        softmax(x * scale + bias) over the last axis (attention's scores, scale and padding mask)
    softmax_backward(y, dout, scale) softmax_backward_plain              host float32: numexpr pass
        dx = scale * y * (dout - sum(dout * y))

Dispatch: on the device (CuPy) the fused CUDA kernel, unless `use_fused` is False; float32
on the host, numexpr when it is installed (the `fast` extra; `use_numexpr` False switches it
off), else the erfc approximation in cache-sized blocks; float64 on the host is the plain
formula itself, so every float64 gradient check sees the textbook expression.

Why numexpr: NumPy runs each elementwise op on one core and streams the whole array through
memory once per op; numexpr evaluates a whole expression in cache-sized blocks on every core
(its own threads, outside the GIL), so on 2 cores the ~30-op GELU chain is one threaded pass.

Shapes: every op is elementwise over any shape `(...)` (softmax: over the last axis K, the
bias broadcast), and its outputs have the shape of x (or p). docs/benchmarks.md records
what each variant gained and what was tried.
"""
import math

import numpy

from minibert import backend

try:  # optional (pip install -e ".[fast]"): without it the host runs the blockwise NumPy code
    import numexpr
except ImportError:
    numexpr = None

use_fused = True  # False: the device runs the array code too (tests compare the two)
use_numexpr = True  # False: the host runs the NumPy code even when numexpr is installed


def _numexpr_for(x):
    """True when x is a float32 host array and numexpr is in use."""
    return numexpr is not None and use_numexpr and backend.xp is numpy and x.dtype == numpy.float32

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


# the same erfc approximation as one numexpr expression: q = Phi(-|x|), then Phi(x). Every
# constant is a float32 variable (a literal would make numexpr compute in float64)
_NE_Z = "where(abs(x) * sqh > c12, c12, abs(x) * sqh)"  # |x| / sqrt 2, capped as above (NaN stays NaN)
_NE_T = f"(one / (one + half * {_NE_Z}))"
_NE_POLY = f"(c0 + {_NE_T} * (c1 + {_NE_T} * (c2 + {_NE_T} * (c3 + {_NE_T} * (c4 + {_NE_T} * (c5 + {_NE_T} * " \
           f"(c6 + {_NE_T} * (c7 + {_NE_T} * (c8 + {_NE_T} * c9)))))))))"
_NE_Q = f"(half * {_NE_T} * exp({_NE_POLY} - {_NE_Z} * {_NE_Z}))"
_NE_PHI = f"where(x >= 0, one - {_NE_Q}, {_NE_Q})"
_NE_CONST = {"sqh": _SQRT_HALF, "c12": 12.0, "one": 1.0, "half": 0.5, "ipi": _INV_SQRT_2PI, "mhalf": -0.5,
             **{f"c{i}": c for i, c in enumerate(_ERFC_C)}}
_NE_CONST = {k: numpy.float32(v) for k, v in _NE_CONST.items()}


def _evaluate(expr, out=None, **arrays):
    return numexpr.evaluate(expr, local_dict={**_NE_CONST, **arrays}, out=out)


def normal_cdf_numexpr(x):
    """normal_cdf_float32's approximation in one threaded numexpr pass (float32 host x)."""
    return _evaluate(_NE_PHI, x=x)  # (...)


def normal_cdf(x):
    """Phi(x): float32 through the erfc approximation (numexpr, or NumPy in cache-sized
    blocks), else plain."""
    if x.dtype != backend.xp.float32:
        return normal_cdf_plain(x)  # (...)
    if _numexpr_for(x):
        return normal_cdf_numexpr(x)  # (...)
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
    """x Phi(x): one fused pass on the device, one numexpr pass (float32 host), else in
    cache-sized blocks on the host."""
    fused = _fused("gelu_forward")
    if fused is not None:
        return fused(x)  # (...)
    if _numexpr_for(x):
        return _evaluate(f"x * {_NE_PHI}", x=x)  # (...)
    return backend.blockwise(_gelu_exact_block, x)  # (...)


def gelu_exact_backward(x, dout):
    """dout (Phi(x) + x phi(x)): one fused pass on the device, one numexpr pass (float32
    host), else in blocks."""
    fused = _fused("gelu_backward")
    if fused is not None:
        return fused(x, dout)  # (...)
    if _numexpr_for(x) and dout.dtype == x.dtype:
        return _evaluate(f"dout * ({_NE_PHI} + x * exp(mhalf * x * x) * ipi)", x=x, dout=dout)  # (...)
    return backend.blockwise(_gelu_exact_backward_block, x, dout)  # (...)


# ----------------------------------------------------------------------------------------
# softmax(x * scale + bias) over the last axis: attention's scaled, masked scores


def softmax_plain(x, scale=1.0, bias=None):
    """The array code: scale, add the bias (broadcast), subtract the row max so exp cannot
    overflow, exp, divide by the row sum. A new array; x is left as it was."""
    xp = backend.xp
    y = x * x.dtype.type(scale)  # (..., K)
    if bias is not None:
        y += bias
    y -= y.max(axis=-1, keepdims=True)
    xp.exp(y, out=y)
    y /= y.sum(axis=-1, keepdims=True)
    return y  # (..., K)


def softmax(x, scale=1.0, bias=None, overwrite=False):
    """softmax(x * scale + bias) over the last axis. float32 on the host with numexpr: the
    scale and bias, then exp(y - max), then the division each run as one threaded pass
    (overwrite=True: in x's own memory, which the caller no longer needs); else
    softmax_plain."""
    if not _numexpr_for(x) or (bias is not None and bias.dtype != x.dtype):
        return softmax_plain(x, scale, bias)  # (..., K)
    y = x if overwrite else None
    s = numpy.float32(scale)
    y = _evaluate("x * s + bias", out=y, x=x, s=s, bias=bias) if bias is not None \
        else _evaluate("x * s", out=y, x=x, s=s)  # (..., K)
    m = y.max(axis=-1, keepdims=True)  # (..., 1)
    _evaluate("exp(y - m)", out=y, y=y, m=m)
    r = y.sum(axis=-1, keepdims=True)  # (..., 1)
    numpy.reciprocal(r, out=r)
    return _evaluate("y * r", out=y, y=y, r=r)  # (..., K)


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
    """softmax's backward: float32 on the host with numexpr, the row dot sum(dout * y) by
    einsum (no temporary) and the rest as one threaded pass; else softmax_backward_plain."""
    if not _numexpr_for(y) or dout.dtype != y.dtype:
        return softmax_backward_plain(y, dout, scale)  # (..., K)
    s = numpy.einsum("...k,...k->...", dout, y)[..., None]  # (..., 1)
    return _evaluate("y * (dout - s) * sc", y=y, dout=dout, s=s, sc=numpy.float32(scale))  # (..., K)


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
    fused = _fused("adamw")
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
    # one AdamW step in place, as adamw_update_plain
    "adamw": ("T g, T decay, T b1, T one_minus_b1, T b2, T one_minus_b2, T step_size, T eps_hat",
              "T p, T m, T v",
              "p *= decay; m = b1 * m + one_minus_b1 * g; v = b2 * v + one_minus_b2 * g * g;"
              " p -= step_size * m / (sqrt(v) + eps_hat);"),
}
_kernels = {}  # name -> compiled ElementwiseKernel, built on first use


def _fused(name):
    """The fused kernel `name` when the device backend is in use (and use_fused), else None."""
    if backend.name != "cupy" or not use_fused:
        return None
    if name not in _kernels:
        in_params, out_params, body = _KERNEL_SRC[name]
        _kernels[name] = backend.xp.ElementwiseKernel(in_params, out_params, body, "minibert_" + name,
                                                      preamble=_KERNEL_PREAMBLE)
    return _kernels[name]
