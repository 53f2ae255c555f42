"""The device side: the CUDA sources of minibert's fused kernels, each beside its launch.

kernels.py (and backend.py's scatter-add and batched GEMM) call these on the CuPy backend
only; every launch works on CuPy arrays, and each kernel computes what its plain twin in
kernels.py (or backend.py) computes:

    launch                               kernel                               plain twin
    layernorm_forward / _backward        one block of _THREADS per row        kernels.layernorm_plain / _backward_plain
    softmax_forward / _backward          one warp per row, _WARPS to a block  kernels.softmax_plain / _backward_plain
    gelu_forward / gelu_backward         elementwise, CUDA's normcdf          kernels.gelu_exact_plain / _backward_plain
    dropout_forward / dropout_backward   elementwise, Philox drawn in place   kernels.dropout_plain / _backward_plain
    adamw                                elementwise, in place                kernels.adamw_update_plain
    scatter_rows                         one block per run of equal indices   backend.scatter_add (xp.add.at)
    gemm_strided_batched                 one cuBLAS call for a stack          xp.matmul

The sources are written for one C type, REAL (float or double: C_TYPE), and the row
kernels' block size is _THREADS, filled in from the Python constant. Compiled on first use,
once per dtype. CuPy is imported inside the functions that need it: this module imports
without it. The Philox generator's device function is minibert/philox.py's PHILOX_CUDA,
beside its host twin; dropout_forward is given it.

Shapes: the row kernels work on (N, H) or (R, K) rows, the last axis of any (..., H);
the elementwise ones on any shape, outputs shaped as their first input.
"""
import os

import numpy

C_TYPE = {"float32": "float", "float64": "double"}  # dtype name -> the C type REAL stands for


# ----------------------------------------------------------------------------------------
# the row kernels (one CuPy RawModule per C type). Layer norm: one block per row of H
# elements; each thread strides over the row, then a tree reduction in shared memory gives
# the row's sum. Softmax: one warp per row, reduced by shuffles. REAL is float or double.

_THREADS = 256  # threads per block of the layer-norm kernels (and red[]): a power of two, for the tree reduction
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
    __shared__ REAL red[_THREADS];
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
    __shared__ REAL red[_THREADS];
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
_row_modules = {}  # C type -> compiled RawModule


def _row_kernel(name, dtype):
    """RawModule function minibert_NAME for float32 or float64 arrays."""
    import cupy as xp
    real = C_TYPE[numpy.dtype(dtype).name]
    if real not in _row_modules:
        _row_modules[real] = xp.RawModule(code=_ROW_SRC.replace("REAL", real).replace("_THREADS", str(_THREADS)))
    return _row_modules[real].get_function("minibert_" + name)


def layernorm_forward(x, w, b, eps):
    """(out (..., H), mean (..., 1), rstd (..., 1)) of layer norm over the last axis: one
    block per row."""
    import cupy as xp
    H = x.shape[-1]
    x2 = xp.ascontiguousarray(x).reshape(-1, H)  # (N, H)
    out = xp.empty_like(x2)  # (N, H)
    mean = xp.empty((x2.shape[0], 1), x.dtype)  # (N, 1)
    rstd = xp.empty((x2.shape[0], 1), x.dtype)  # (N, 1)
    _row_kernel("layernorm_forward", x2.dtype)((x2.shape[0],), (_THREADS,),
                                               (x2, xp.ascontiguousarray(w), xp.ascontiguousarray(b), out, mean, rstd,
                                                x.dtype.type(eps), xp.int64(H)))
    lead = x.shape[:-1] + (1,)
    return out.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)


def layernorm_backward(dout, x, w, mean, rstd):
    """(dx (..., H), gxhat (N, H), dout2 (N, H)): one block per row writes dx and
    gxhat = dout * xhat; dw and db are the column sums of gxhat and dout2 (the caller's)."""
    import cupy as xp
    H = x.shape[-1]
    x2, d2 = xp.ascontiguousarray(x).reshape(-1, H), xp.ascontiguousarray(dout).reshape(-1, H)  # (N, H)
    m1, r1 = xp.ascontiguousarray(mean).reshape(-1), xp.ascontiguousarray(rstd).reshape(-1)  # (N,)
    dx = xp.empty_like(x2)  # (N, H)
    gxhat = xp.empty_like(x2)  # (N, H) dout * xhat, written by the same pass
    _row_kernel("layernorm_backward", d2.dtype)((x2.shape[0],), (_THREADS,),
                                                (d2, x2, xp.ascontiguousarray(w), m1, r1, dx, gxhat, xp.int64(H)))
    return dx.reshape(x.shape), gxhat, d2


def softmax_forward(x, scale, bias, overwrite, rows_per_bias):
    """softmax(x * scale + bias) over the last axis: one warp per row of x, _WARPS rows to a
    block; rows_per_bias: rows of x per row of bias (kernels._row_bias). Each lane reads an
    element before writing it and touches no other lane's, so y may be x itself: it is when
    the caller allows it, or when x had to be copied to be contiguous."""
    import cupy as xp
    xc = xp.ascontiguousarray(x)
    b = xc if bias is None else xp.ascontiguousarray(bias.astype(x.dtype, copy=False))  # xc: unused placeholder
    y = xc if overwrite or xc is not x else xp.empty_like(xc)  # (..., K)
    x = xc
    K = x.shape[-1]
    R = x.size // K if K else 0
    if R:
        _row_kernel("softmax_forward", x.dtype)((-(-R // _WARPS),), (32 * _WARPS,),
                                                (x, b, y, x.dtype.type(scale), xp.int64(K), xp.int64(rows_per_bias),
                                                 xp.int32(bias is not None), xp.int64(R)))
    return y  # (..., K)


def softmax_backward(y, dout, scale):
    """dx = scale * y * (dout - sum(dout * y)) over the last axis: one warp per row."""
    import cupy as xp
    y, dout = xp.ascontiguousarray(y), xp.ascontiguousarray(dout.astype(y.dtype, copy=False))
    K = y.shape[-1]
    dx = xp.empty_like(y)  # (..., K)
    R = y.size // K if K else 0
    if R:
        _row_kernel("softmax_backward", y.dtype)((-(-R // _WARPS),), (32 * _WARPS,),
                                                 (y, dout, dx, y.dtype.type(scale), xp.int64(K), xp.int64(R)))
    return dx  # (..., K)


# ----------------------------------------------------------------------------------------
# the elementwise kernels (CuPy ElementwiseKernels: one pass over memory instead of one per
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


def _elementwise(name, generator=""):
    """The ElementwiseKernel minibert_NAME of _KERNEL_SRC, preamble _KERNEL_PREAMBLE (and
    `generator`: the device functions its body calls from elsewhere)."""
    import cupy as xp
    if name not in _kernels:
        in_params, out_params, body = _KERNEL_SRC[name]
        _kernels[name] = xp.ElementwiseKernel(in_params, out_params, body, "minibert_" + name,
                                              preamble=_KERNEL_PREAMBLE + generator)
    return _kernels[name]


def gelu_forward(x):
    """x Phi(x), one pass."""
    return _elementwise("gelu_forward")(x)  # (...)


def gelu_backward(x, dout):
    """dout (Phi(x) + x phi(x)), one pass."""
    return _elementwise("gelu_backward")(x, dout)  # (...)


def dropout_forward(x, p, key, draw, first_row, generator):
    """(out, keep) of dropout_plain in one pass: key (2,) uint32 the stream's Philox key,
    draw its draw number, first_row the global index of x's first row (x's first axis).
    generator: the Philox device function, minibert/philox.py's PHILOX_CUDA (philox.py
    sits above this module, beside its host twin, so kernels.dropout hands it in)."""
    import cupy as xp
    dt = x.dtype.type
    out = xp.empty(x.shape, x.dtype)  # (...)
    keep = xp.empty(x.shape, bool)  # (...)
    _elementwise("dropout_forward", generator)(
        x, numpy.uint32(key[0]), numpy.uint32(key[1]), numpy.uint32(draw), numpy.int64(first_row),
        numpy.int64(x.size // x.shape[0]), dt(p), dt(1.0 / (1.0 - p)), out, keep)
    return out, keep


def dropout_backward(dout, keep, scale):
    """dx = dout * keep * scale, one pass."""
    return _elementwise("dropout_backward")(dout, keep, dout.dtype.type(scale))  # (...)


def adamw(p, g, m, v, decay, b1, b2, step_size, eps_hat):
    """One AdamW step in place on p, m, v, one pass."""
    dt = p.dtype.type
    # the complements 1 - b are taken in float64 here, as the plain path does: 1 - b2 in
    # float32 on the device would be 1.3e-5 relative off (b2 = 0.999 is not a float32)
    _elementwise("adamw")(g, dt(decay), dt(b1), dt(1.0 - b1), dt(b2), dt(1.0 - b2), dt(step_size), dt(eps_hat),
                          p, m, v)


# ----------------------------------------------------------------------------------------
# backend.scatter_add's rows on the device: the sum of each run of equal indices, in order

# a[s[i]] += the rows v[order[j]] of the run of equal sorted indices s[j] that starts at i:
# one block per sorted position, and only the first of each run works (no compaction, so no
# host read); its threads share the row's columns and add the run's rows in sorted order
_SCATTER_ROWS_SRC = r"""
extern "C" __global__ void minibert_scatter_rows(const long long* s, const long long* order, const REAL* v,
                                                 REAL* a, long long N, long long H) {
    const long long i = blockIdx.x;
    if (i > 0 && s[i] == s[i - 1]) return;  // inside a run: its first position sums it
    long long end = i + 1;
    while (end < N && s[end] == s[i]) end++;
    REAL* row = a + s[i] * H;
    for (long long h = threadIdx.x; h < H; h += blockDim.x) {
        REAL acc = 0;
#pragma unroll 8
        for (long long j = i; j < end; j++) acc += v[order[j] * H + h];  // 8 loads in flight, added in order
        row[h] += acc;
    }
}
"""
_scatter_rows = {}  # C type -> compiled RawKernel


def scatter_rows(a, indices, values):
    """In place a[indices[i]] += values[i] for a C-ordered a (M, H), indices (N,), values
    (N, H): the indices sorted (stably), then one block per run of equal indices sums the
    run's rows in order. xp.add.at's atomics add in whatever order the threads arrive, so
    two equal steps could differ in the last bit and a resumed run would not be the run it
    resumes."""
    import cupy as xp
    # CuPy's sort is stable; from CuPy 14 it runs Thrust with par_nosync, so it queues work
    # without waiting for the GPU (CuPy 13's cuda::par synchronised: backend.use refuses it)
    order = xp.argsort(indices)  # (N,)
    sorted_idx = indices[order].astype(xp.int64)  # (N,)
    values = xp.ascontiguousarray(values, dtype=a.dtype)  # (N, H)
    real = C_TYPE[numpy.dtype(a.dtype).name]
    if real not in _scatter_rows:
        _scatter_rows[real] = xp.RawKernel(_SCATTER_ROWS_SRC.replace("REAL", real), "minibert_scatter_rows")
    _scatter_rows[real]((indices.size,), (min(_THREADS, max(a.shape[1], 1)),),
                        (sorted_idx, order.astype(xp.int64), values, a, numpy.int64(indices.size),
                         numpy.int64(a.shape[1])))
    return a


# ----------------------------------------------------------------------------------------
# backend.batched_matmul on the device: cuBLAS's strided batched GEMM, reading views in place

def gemm_layout(a):
    """(batch stride, leading dimension, transposed) of a device array (..., M, K) in
    elements, as cuBLAS's strided batched GEMM reads it: its batch axes must collapse to
    one stride, its matrices be row-major (transposed False) or column-major (True, a
    transpose of a row-major one). None for any other layout."""
    item = a.itemsize
    if a.ndim < 3 or min(a.shape) < 1 or any(s % item or s < 0 for s in a.strides):
        return None
    (sm, sk), (M, K) = (s // item for s in a.strides[-2:]), a.shape[-2:]
    if sk == 1 and sm >= K:
        ld, trans = sm, False
    elif sm == 1 and sk >= M:
        ld, trans = sk, True
    else:
        return None
    stride = None  # of the flattened batch index; axes of length 1 carry none
    for n, s in reversed(list(zip(a.shape[:-2], (s // item for s in a.strides[:-2])))):
        if n == 1:
            continue
        if stride is None:
            stride, span = s, s * n
        elif s != span:
            return None
        else:
            span = s * n
    return (stride or 0), ld, trans


_GEMM_SCALARS = {numpy.dtype(numpy.float32): (numpy.array(1, numpy.float32), numpy.array(0, numpy.float32)),
                 numpy.dtype(numpy.float64): (numpy.array(1, numpy.float64), numpy.array(0, numpy.float64))}
# cudaDataType of 16-bit operands (library_types.h): fp16 arrays are float16, bf16 ones the
# upper 16 bits of the float32 pattern held as uint16 (so no bfloat16 dtype is needed)
CUDA_R_16F, CUDA_R_16BF = 2, 14
_OPERAND_TYPES = {numpy.dtype(numpy.float16): CUDA_R_16F, numpy.dtype(numpy.uint16): CUDA_R_16BF}


def gemm_strided_batched(a, la, b, lb, c, lc):
    """c = a @ b for every matrix of the batch, in one cuBLAS call, reading a and b where
    they lie (transposes included); la, lb, lc their gemm_layout. cuBLAS is column-major:
    a row-major c (M, N) is the column-major c^T = b^T a^T, so b is cuBLAS's first operand
    and a its second. a and b float32 or float64 like c; or both 16-bit (float16 for fp16,
    uint16 bf16 bits, backend.device_operand) with c float32: the products on tensor cores,
    summed in float32 (CUBLAS_COMPUTE_32F), as a mixed-precision GEMM is."""
    import cupy as xp
    from cupy_backends.cuda.libs import cublas
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    (sa, lda, ta), (sb, ldb, tb), (sc, ldc, _) = la, lb, lc
    batch = c.size // (M * N)
    one, zero = _GEMM_SCALARS[c.dtype]
    if c.dtype == numpy.float64:
        dtype, compute = xp.cuda.runtime.CUDA_R_64F, cublas.CUBLAS_COMPUTE_64F
    else:
        dtype = xp.cuda.runtime.CUDA_R_32F
        # CUPY_TF32=1 lets CuPy's own matmul use TF32; the batched products follow it
        compute = cublas.CUBLAS_COMPUTE_32F_FAST_TF32 if os.environ.get("CUPY_TF32", "0") == "1" \
            else cublas.CUBLAS_COMPUTE_32F
    in_type = dtype
    if a.dtype in _OPERAND_TYPES:  # 16-bit operands, float32 result and sums
        assert b.dtype == a.dtype and c.dtype == numpy.float32, (a.dtype, b.dtype, c.dtype)
        in_type, compute = _OPERAND_TYPES[a.dtype], cublas.CUBLAS_COMPUTE_32F
    cublas.gemmStridedBatchedEx(
        xp.cuda.device.get_cublas_handle(), int(tb), int(ta), N, M, K, one.ctypes.data,
        b.data.ptr, in_type, ldb, sb, a.data.ptr, in_type, lda, sa, zero.ctypes.data,
        c.data.ptr, dtype, ldc, sc, batch, compute, cublas.CUBLAS_GEMM_DEFAULT)
