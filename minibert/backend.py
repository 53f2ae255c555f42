"""The array backend: one switch between NumPy (CPU) and CuPy (CUDA).

Every op in minibert reads its array module from here at call time:

    from minibert import backend
    xp = backend.xp          # numpy or cupy, whichever is selected

Select with the environment variable ``MINIBERT_BACKEND=numpy|cupy`` (read once, at
import; default_name() reads it) or with ``backend.use("cupy")`` at run time. Where NumPy
and CuPy differ, this module exposes one name so that ops have one code path:

    scatter_add(a, idx, v)   a[idx[i]] += v[i] for every i, repeated indices accumulate
    batched_matmul(a, b)     a @ b over a stack of small matrices (attention's per-head products)
    batched_operand(a)       a laid out once for several batched_matmul calls
    matmul(a, b, bias), matmul_pair(a1, b1, a2, b2)   2-D GEMMs (linear layers), split over host threads
    gemm_precision(name)     a context in which every GEMM above rounds its float32 operands to
                             bf16 or fp16 and accumulates in float32 (mixed precision, below)
    erf(x)                   the error function (scipy.special on the host, cupyx on device)
    to_host(a) / to_device(a)   move arrays across the edge (batches in, floats out)
    synchronize()            wait for queued device work (timing)
    check_keys(got, expected, what)   the one "missing [...], unexpected [...]" check of
                             named arrays (params, grads, optimizer state, checkpoints)

Nothing is half-initialised: ``use("cupy")`` first checks that CuPy imports and sees a
GPU, and only then switches. The host halves of these names run on minibert/host.py's two
threads; their device halves that are not plain CuPy calls (the row scatter kernel, the
strided batched GEMM) are in minibert/cuda_kernels.py. The ops with a fast path beside a
plain twin (GELU, layer norm, softmax, dropout, AdamW) are in minibert/kernels.py, dropout's
random numbers in minibert/philox.py.
"""
import contextlib
import os

import numpy
from scipy import special

from minibert import cuda_kernels, host

xp = numpy  # the array module in use: numpy or cupy
name = "numpy"
precision = "fp32"  # the GEMMs' operand precision: "fp32", "bf16" or "fp16" (gemm_precision)
PRECISIONS = ("fp32", "bf16", "fp16")

_INSTALL_HINT = (
    "Install CuPy for your CUDA version, e.g. pip install -e '.[cuda12]' "
    "(cupy-cuda12x) or pip install -e '.[cuda13]' (cupy-cuda13x), on a machine with an "
    "NVIDIA GPU and driver; or use MINIBERT_BACKEND=numpy."
)


def use(backend_name):
    """Select the array backend: "numpy" or "cupy". Raises before changing anything."""
    global xp, name
    if backend_name == "numpy":
        xp, name = numpy, "numpy"
        return xp
    if backend_name != "cupy":
        raise ValueError(f"unknown backend {backend_name!r}: expected 'numpy' or 'cupy'")
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(f"backend 'cupy' asked for, but CuPy is not installed ({e}). {_INSTALL_HINT}") from None
    if int(cupy.__version__.split(".")[0]) < 14:
        # CuPy 13's sort (Thrust with cuda::par) waits for the GPU on every call: the
        # embedding's scatter (cuda_kernels.scatter_rows) would sync the host each step
        raise RuntimeError(f"backend 'cupy' needs CuPy >= 14, found {cupy.__version__}: CuPy 13's argsort "
                           f"synchronises the host with the GPU (and bf16 arrays need CuPy 14). {_INSTALL_HINT}")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # the driver or runtime is missing or broken
        raise RuntimeError(f"backend 'cupy' asked for, but no usable CUDA GPU was found ({e}). {_INSTALL_HINT}") from None
    if n < 1:
        raise RuntimeError(f"backend 'cupy' asked for, but no CUDA GPU is visible. {_INSTALL_HINT}")
    xp, name = cupy, "cupy"
    return xp


def cupy_available():
    """True when CuPy imports and sees at least one GPU (used by tests to skip cleanly)."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def erf(x, out=None):
    """Elementwise error function on the current backend."""
    if xp is numpy:
        _erf = special.erf
    else:
        from cupyx.scipy.special import erf as _erf
    return _erf(x) if out is None else _erf(x, out=out)


def scatter_add(a, indices, values):
    """In place a[indices[i]] += values[i], accumulating repeated indices."""
    if xp is numpy and a.ndim == 2 and indices.ndim == 1 and indices.size:
        # rows: sort the indices, then add once per distinct row the sum of its run of equal
        # indices (np.add.at adds row by row and is many times slower). A run of one row is
        # that row; the longer runs are summed by one reduceat over their rows alone, which
        # gives the bits of a reduceat over every run in a fifth of the time (most runs are
        # one token: reduceat's cost is per run)
        order = numpy.argsort(indices, kind="stable")  # (N,)
        sorted_idx = indices[order]  # (N,)
        first = numpy.r_[True, sorted_idx[1:] != sorted_idx[:-1]]  # (N,) where a run starts
        starts = numpy.flatnonzero(first)  # (U,)
        lengths = numpy.diff(numpy.r_[starts, indices.size])  # (U,)
        one = lengths == 1  # (U,)
        a[sorted_idx[starts[one]]] += values[order[starts[one]]]  # (U1, H)
        if not one.all():
            rows = numpy.repeat(~one, lengths)  # (N,) the rows of the longer runs
            a[sorted_idx[starts[~one]]] += numpy.add.reduceat(values[order[rows]], numpy.flatnonzero(first[rows]),
                                                              axis=0)  # (U - U1, H)
    elif xp is not numpy and a.ndim == 2 and indices.ndim == 1 and indices.size and a.flags.c_contiguous:
        # rows, on the device: the same sort, then one block per run of equal indices sums
        # the run's rows in order (xp.add.at's atomics add in whatever order the threads arrive)
        cuda_kernels.scatter_rows(a, indices, values)
    else:
        # ufunc.at on both: cupyx.scatter_add warns on every call from CuPy 14 on
        xp.add.at(a, indices, values)
    return a


# ----------------------------------------------------------------------------------------
# mixed precision: 16-bit GEMM operands, float32 everything else (docs/internals.md,
# "Mixed precision")
#
# A tensor core multiplies 16-bit numbers and adds the products in float32. NumPy has no
# such GEMM, so the host emulates one: each float32 operand is rounded to the nearest value
# the 16-bit type holds (ties to even, as a cast does), and the product of the rounded
# operands is computed in float32. The result is what a 16-bit GEMM with float32
# accumulation gives, up to float32's own summation order. Only GEMM operands are rounded:
# layer-norm statistics, softmax, GELU, the losses, bias-gradient sums, the gradients and
# the weights the optimizer updates all stay float32. On CuPy the GEMMs are the real thing
# (device_gemm): 16-bit operand arrays multiplied by cuBLAS on tensor cores, summed in float32.

_BF16_KEEP = numpy.uint32(0xFFFF0000)  # sign, exponent and the 7 fraction bits bf16 keeps


def round_bf16(a):
    """a (float32) rounded to bfloat16's values, ties to even, returned as float32.

    bf16 is float32's top 16 bits: the same 8-bit exponent (range up to 3.4e38), 7 of the
    23 fraction bits. Adding 0x7FFF plus the lowest kept bit to the bit pattern and cutting
    the low 16 bits rounds to nearest, ties to even; a carry out of the fraction moves the
    exponent, up to inf past bf16's largest value. A NaN is kept a NaN (its quiet bit set
    first, else a payload in the cut bits alone would round to inf)."""
    u = a.view(xp.uint32)  # like a
    r = u + (xp.uint32(0x7FFF) + ((u >> 16) & xp.uint32(1)))  # like a, wraps only for NaNs
    r = xp.where(a != a, u | xp.uint32(0x00400000), r)  # like a: NaN -> quiet NaN
    r &= _BF16_KEEP
    return r.view(xp.float32)  # like a


def round_fp16(a):
    """a (float32) rounded to IEEE half's values (ties to even), returned as float32: 10
    fraction bits, and a 5-bit exponent, so values from 65,520 on become inf and values
    below 2^-25 become 0 (below 2^-14, the subnormals, the step is a fixed 2^-24).

    The same bit rounding as round_bf16 with 13 bits cut, for the normal range; below 2^-14
    the magnitude is rounded to a multiple of 2^-24 by adding and subtracting 0.5 (float32's
    own round to nearest even, at 0.5's step of 2^-24). As a.astype(float16) does, without
    NumPy's slow float16 conversion."""
    u = a.view(xp.uint32)  # like a
    r = (u + (xp.uint32(0x0FFF) + ((u >> 13) & xp.uint32(1)))) & xp.uint32(0xFFFFE000)  # like a
    normal = r.view(xp.float32)  # like a: rounded as if the exponent had no limit
    mag = xp.abs(a)  # like a
    with numpy.errstate(invalid="ignore"):  # inf and NaN go through the unused branch too
        sub = xp.copysign((mag + xp.float32(0.5)) - xp.float32(0.5), a)  # like a: multiples of 2^-24
    out = xp.where(mag < xp.float32(2.0 ** -14), sub, normal)  # like a
    out = xp.where(xp.abs(out) > xp.float32(65504.0), xp.copysign(xp.float32(xp.inf), a), out)
    return xp.where(a != a, a, out)  # like a: NaN stays NaN


_ROUND = {"bf16": round_bf16, "fp16": round_fp16}


def low(a):
    """A GEMM operand at the current precision: a itself in fp32 (or when a is not
    float32: float64 gradient checks stay exact), else a rounded to bf16 or fp16: on the
    host one compiled pass (cpu_kernels.round_bf16 / round_fp16) over a C- or F-ordered
    array, split over the host's threads; else the array code above."""
    if precision == "fp32" or a.dtype != numpy.float32:
        return a
    cpu = host.compiled_loops() if xp is numpy and a.size else None
    if cpu is None or not (a.flags.c_contiguous or a.flags.f_contiguous):
        return _ROUND[precision](a)
    if not a.flags.c_contiguous:  # a transpose (w.T, x.T in dw = x^T @ dout): round the C-ordered array under it
        return low(a.T).T
    flat = a.reshape(-1)  # (n,) a view
    out = numpy.empty_like(flat)  # (n,)
    bits, out_bits = flat.view(numpy.uint32), out.view(numpy.uint32)  # (n,) each
    if precision == "bf16":
        host.split_run(lambda lo, hi: cpu.round_bf16(bits, out_bits, lo, hi), a.size, 2 * a.size)
    else:
        host.split_run(lambda lo, hi: cpu.round_fp16(flat, bits, out, out_bits, lo, hi), a.size, 2 * a.size)
    return out.reshape(a.shape)  # like a


def device_operand(a):
    """On the device: float32 a as the 16-bit operand cuBLAS reads, rounded as low(a) rounds
    it (ties to even): float16 for fp16; for bf16 the upper half of round_bf16's bit pattern,
    held as uint16 (cuBLAS's CUDA_R_16BF). An F-ordered a (a transpose) stays F-ordered, so
    the GEMM reads it transposed; any other layout becomes C-ordered."""
    order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    if precision == "fp16":
        return a.astype(xp.float16, order=order)  # like a: CUDA's __float2half_rn, ties to even
    bits = round_bf16(xp.asarray(a, order=order)).view(xp.uint32)  # like a
    return (bits >> 16).astype(xp.uint16, order=order)  # like a


def on_tensor_cores(a, b):
    """Whether a @ b runs as cuBLAS's 16-bit GEMM (device_gemm): on the device under bf16 /
    fp16, both operands float32 (float64 gradient checks stay exact), equal batch axes (not
    a broadcast product), nothing empty. Otherwise the caller rounds with low() and
    multiplies in float32: the same numbers up to the order of the float32 sums."""
    return xp is not numpy and precision != "fp32" and a.dtype == b.dtype == numpy.float32 \
        and a.ndim == b.ndim >= 2 and a.shape[:-2] == b.shape[:-2] and a.size > 0 and b.size > 0


def device_gemm(a, b, a16=None, b16=None):
    """a @ b on the device under bf16 / fp16: the operands made 16-bit (device_operand), one
    cuBLAS GEMM on tensor cores with float32 sums and a float32 result (cuda_kernels.
    gemm_strided_batched); None where on_tensor_cores(a, b) is False. a16 / b16: an operand
    already made 16-bit (matmul_pair's dout, read by both of its GEMMs)."""
    if not on_tensor_cores(a, b):
        return None
    a16 = device_operand(a) if a16 is None else a16  # like a
    b16 = device_operand(b) if b16 is None else b16  # like b
    a3, b3 = (a16, b16) if a.ndim >= 3 else (a16[None], b16[None])  # (..., M, K), (..., K, N)
    c = xp.empty(a3.shape[:-1] + b3.shape[-1:], xp.float32)  # (..., M, N)
    la, lb = cuda_kernels.gemm_layout(a3), cuda_kernels.gemm_layout(b3)
    if la is None or lb is None:  # batch axes with two strides: a C-ordered copy has one
        a3, b3 = xp.ascontiguousarray(a3), xp.ascontiguousarray(b3)
        la, lb = cuda_kernels.gemm_layout(a3), cuda_kernels.gemm_layout(b3)
    cuda_kernels.gemm_strided_batched(a3, la, b3, lb, c, cuda_kernels.gemm_layout(c))
    return c if a.ndim >= 3 else c[0]


@contextlib.contextmanager
def gemm_precision(name):
    """Within the block every GEMM (matmul, matmul_pair, batched_matmul) takes its float32
    operands rounded to `name` ("bf16" or "fp16"; "fp32": unchanged). Restored after."""
    global precision
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}: choose from {PRECISIONS}")
    before, precision = precision, name
    try:
        yield
    finally:
        precision = before


def matmul(a, b, bias=None):
    """a @ b (+ bias, (N,), when given) for 2-D a (M, K) and b (K, N): the linear layers' GEMMs.

    On the host with host_threads() >= 2 the rows are split in two halves, each a GEMM on
    one BLAS thread in its own Python thread. Two BLAS threads inside one GEMM must meet
    at every block; when the machine is busy one waits for the other to be scheduled, and a
    small GEMM took 5-10x its time (measured: (1900, 512) x (512, 128) in 116 ms on two
    BLAS threads at load 5, 14 ms as two one-thread halves). The result may differ from one
    two-thread GEMM in the last bit, but it is the same on every run.
    """
    out = device_gemm(a, b)  # (M, N): on the device under bf16 / fp16, else None
    if out is not None:
        if bias is not None:
            out += bias
        return out
    a, b = low(a), low(b)  # (M, K), (K, N): 16-bit operands under gemm_precision
    if xp is not numpy or host.host_threads() < 2 or a.ndim != 2 or a.shape[0] < 64:
        out = xp.matmul(a, b)  # (M, N)
        if bias is not None:
            out += bias
        return out
    out = numpy.empty((a.shape[0], b.shape[1]), numpy.result_type(a, b))  # (M, N)

    def half(lo, hi):  # the bias is added while the half is still in cache
        numpy.matmul(a[lo:hi], b, out=out[lo:hi])
        if bias is not None:
            out[lo:hi] += bias
    host.split_run(half, a.shape[0], a.size + out.size)
    return out


def matmul_pair(a1, b1, a2, b2):
    """(a1 @ b1, a2 @ b2), two independent 2-D GEMMs (a linear layer's dx and dw): on the
    host with host_threads() >= 2 each runs on one BLAS thread, the two at once."""
    if on_tensor_cores(a1, b1) and on_tensor_cores(a2, b2):  # cuBLAS 16-bit GEMMs
        d16 = device_operand(a1) if b2 is a1 else None  # a linear layer's dout: made 16-bit once
        return device_gemm(a1, b1, a16=d16), device_gemm(a2, b2, b16=d16)
    # 16-bit operands under gemm_precision; a linear layer's dout is both a1 and b2: rounded once
    b2 = None if b2 is a1 else low(b2)
    a1, b1, a2 = low(a1), low(b1), low(a2)
    b2 = a1 if b2 is None else b2
    if xp is not numpy or host.host_threads() < 2:
        return xp.matmul(a1, b1), xp.matmul(a2, b2)
    return host.run_both(lambda: numpy.matmul(a1, b1), lambda: numpy.matmul(a2, b2))


def batched_matmul(a, b, out=None):
    """a @ b for stacks of small matrices, e.g. (B, A, T, D) @ (B, A, D, T).

    NumPy hands each (T, D) product to BLAS separately, and a multi-threaded BLAS spends
    more on waking and joining its threads than the tiny product takes (worst when the
    machine is busy), so on the host these run with one BLAS thread each, the stack split
    between host_threads() Python threads (halves of the first axis). Results are identical:
    every product is computed whole by one thread either way.
    """
    c = device_gemm(a, b)  # (..., M, N): on the device under bf16 / fp16, else None
    if c is not None:
        if out is None:
            return c
        out[...] = c
        return out
    a, b = low(a), low(b)  # (..., M, K), (..., K, N): 16-bit operands under gemm_precision
    if xp is numpy:
        shape = numpy.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        res = numpy.empty(shape, numpy.result_type(a, b)) if out is None else out  # (..., M, N)
        split = a.ndim == b.ndim == res.ndim >= 3 and a.shape[0] == b.shape[0] == res.shape[0]
        with host.one_blas_thread():
            if split:
                host.split_run(lambda lo, hi: numpy.matmul(a[lo:hi], b[lo:hi], out=res[lo:hi]), res.shape[0],
                               a.size + b.size + res.size)
            else:
                numpy.matmul(a, b, out=res)
        return res
    elif a.ndim >= 3 and a.shape[:-2] == b.shape[:-2] and a.dtype == b.dtype and a.dtype in (numpy.float32, numpy.float64):
        la, lb = cuda_kernels.gemm_layout(a), cuda_kernels.gemm_layout(b)
        if la is not None and lb is not None:
            # on the device: one cuBLAS call reading a and b where they lie, transposes included
            shape = a.shape[:-1] + b.shape[-1:]
            lc = None if out is None or out.shape != shape or out.dtype != a.dtype else cuda_kernels.gemm_layout(out)
            if lc is None or lc[2]:  # no out, or a view cuBLAS cannot write (batch axes with two strides)
                c = xp.empty(shape, a.dtype)  # (..., M, N)
                cuda_kernels.gemm_strided_batched(a, la, b, lb, c, cuda_kernels.gemm_layout(c))
                if out is None:
                    return c
                out[...] = c
            else:
                cuda_kernels.gemm_strided_batched(a, la, b, lb, out, lc)
            return out
    if out is None:
        return xp.matmul(a, b)
    out[...] = xp.matmul(a, b)  # out may be a strided view; a copy on the device is cheap
    return out


def batched_operand(a):
    """a laid out for batched_matmul: on the device a C-ordered copy when its batch axes do
    not share one stride (cuBLAS's strided batched GEMM needs one, and CuPy's matmul copies
    every operand that is not C-ordered, transposes included, at every product), else a
    itself. Attention makes q, k, v and dctx this way once and reuses them in several
    products. On the host, a itself: NumPy hands BLAS each matrix with its row stride."""
    if xp is numpy or cuda_kernels.gemm_layout(a) is not None:
        return a
    return xp.ascontiguousarray(a)


def to_host(a):
    """A NumPy array (or Python scalar passed through) from an array on either backend."""
    if xp is numpy or isinstance(a, numpy.ndarray) or numpy.isscalar(a):
        return a
    return xp.asnumpy(a)


def to_device(a, dtype=None):
    """An array of the current backend from a host array (no copy on NumPy when possible)."""
    return xp.asarray(a, dtype=dtype)


def synchronize():
    """Wait for queued device work (for timing); a no-op on NumPy."""
    if xp is not numpy:
        xp.cuda.Device().synchronize()


def check_keys(got, expected, what, error=ValueError):
    """Raise error("WHAT: missing [...], unexpected [...]") unless the two collections of
    names (params, grads, optimizer state, checkpoint tensors: any dicts or sets) agree.

    The one comparison of named arrays in minibert, so that every such mismatch reads alike."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise error(f"{what}: missing {missing}, unexpected {unexpected}")


def default_name():
    """The backend the environment asks for: MINIBERT_BACKEND ("numpy" when unset). Run
    configs (TrainConfig, FinetuneConfig) default to it, so MINIBERT_BACKEND=cupy reaches them."""
    return os.environ.get("MINIBERT_BACKEND", "numpy").strip().lower() or "numpy"


use(default_name())
