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
    softmax(x, scale, bias)         softmax_plain                        device: one CUDA block per row
        softmax(x * scale + bias) over the last axis (attention's scores, scale and padding mask)
    softmax_backward(y, dout, scale) softmax_backward_plain              device: one CUDA block per row
        dx = scale * y * (dout - sum(dout * y))

Dispatch: on the device (CuPy) the fused CUDA kernel, unless `use_fused` is False; float32
elsewhere the erfc approximation in cache-sized blocks; float64 on the host is the plain
formula itself, so every float64 gradient check sees the textbook expression.

Shapes: every op is elementwise over any shape `(...)` (softmax: over the last axis K, the
bias broadcast), and its outputs have the shape of x (or p). docs/benchmarks.md records
what each variant gained and what was tried.
"""
import math

from minibert import backend

use_fused = True  # False: the device runs the array code too (tests compare the two)

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
    """x Phi(x): one fused pass on the device, else in cache-sized blocks on the host."""
    fused = _fused("gelu_forward")
    return fused(x) if fused is not None else backend.blockwise(_gelu_exact_block, x)  # (...)


def gelu_exact_backward(x, dout):
    """dout (Phi(x) + x phi(x)): one fused pass on the device, else in blocks."""
    fused = _fused("gelu_backward")
    return fused(x, dout) if fused is not None else backend.blockwise(_gelu_exact_backward_block, x, dout)  # (...)


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
    fused = _fused("softmax_forward")
    if fused is not None and _row_bias(x, bias) is not None:
        return _softmax_device(fused, x, scale, bias)  # (..., K)
    return softmax_plain(x, scale, bias, overwrite)  # (..., K)


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
    fused = _fused("softmax_backward")
    if fused is None:
        return softmax_backward_plain(y, dout, scale)  # (..., K)
    xp = backend.xp
    y, dout = xp.ascontiguousarray(y), xp.ascontiguousarray(dout.astype(y.dtype, copy=False))
    K = y.shape[-1]
    dx = xp.empty_like(y)  # (..., K)
    if y.size:
        fused((y.size // K,), (_THREADS,), (y, dout, dx, y.dtype.type(scale), xp.int64(K)))
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


def _softmax_device(fused, x, scale, bias):
    """Launch the fused softmax forward: one block of _THREADS threads per row of x."""
    xp = backend.xp
    x = xp.ascontiguousarray(x)
    rows_per_bias = _row_bias(x, bias)
    b = x if bias is None else xp.ascontiguousarray(bias.astype(x.dtype, copy=False))  # x: unused placeholder
    y = xp.empty_like(x)  # (..., K)
    K = x.shape[-1]
    if x.size:
        fused((x.size // K,), (_THREADS,), (x, b, y, x.dtype.type(scale), xp.int64(K), xp.int64(rows_per_bias),
                                            xp.int32(bias is not None)))
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

# Row kernels (softmax): one block per row of K elements; each thread strides over the row,
# then a tree reduction in shared memory gives the row's max or sum. REAL is float or double.
_THREADS = 256  # threads per block: a power of two, for the tree reduction
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

// y = softmax(x * scale + bias) over each row; the bias row is row / rows_per_bias
extern "C" __global__ void minibert_softmax_forward(const REAL* x, const REAL* bias, REAL* y, REAL scale,
                                                    long long K, long long rows_per_bias, int has_bias) {
    __shared__ REAL red[256];
    const long long row = blockIdx.x;
    const REAL* xr = x + row * K;
    const REAL* br = bias + (row / rows_per_bias) * K;
    REAL* yr = y + row * K;
    REAL m = xr[0] * scale + (has_bias ? br[0] : (REAL)0);
    for (long long k = threadIdx.x; k < K; k += blockDim.x) {
        REAL z = xr[k] * scale + (has_bias ? br[k] : (REAL)0);
        yr[k] = z;
        m = fmax(m, z);
    }
    m = minibert_reduce(m, red, 1);  // subtract the row max so exp cannot overflow
    REAL s = 0;
    for (long long k = threadIdx.x; k < K; k += blockDim.x) {
        REAL e = exp(yr[k] - m);
        yr[k] = e;
        s += e;
    }
    s = minibert_reduce(s, red, 0);
    const REAL inv = (REAL)1 / s;
    for (long long k = threadIdx.x; k < K; k += blockDim.x) yr[k] *= inv;
}

// dx = scale * y * (dout - sum(dout * y)) over each row
extern "C" __global__ void minibert_softmax_backward(const REAL* y, const REAL* dout, REAL* dx, REAL scale,
                                                     long long K) {
    __shared__ REAL red[256];
    const long long row = blockIdx.x;
    const REAL* yr = y + row * K;
    const REAL* dr = dout + row * K;
    REAL* xr = dx + row * K;
    REAL s = 0;
    for (long long k = threadIdx.x; k < K; k += blockDim.x) s += dr[k] * yr[k];
    s = minibert_reduce(s, red, 0);
    for (long long k = threadIdx.x; k < K; k += blockDim.x) xr[k] = scale * yr[k] * (dr[k] - s);
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
    if name in ("softmax_forward", "softmax_backward"):
        return lambda grid, block, args: _row_kernel(name, args[0].dtype)(grid, block, args)
    if name not in _kernels:
        in_params, out_params, body = _KERNEL_SRC[name]
        _kernels[name] = backend.xp.ElementwiseKernel(in_params, out_params, body, "minibert_" + name,
                                                      preamble=_KERNEL_PREAMBLE)
    return _kernels[name]
