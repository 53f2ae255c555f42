"""The array backend: one switch between NumPy (CPU) and CuPy (CUDA).

Every op in minibert reads its array module from here at call time:

    from minibert import backend
    xp = backend.xp          # numpy or cupy, whichever is selected

Select with the environment variable ``MINIBERT_BACKEND=numpy|cupy`` (read once, at
import) or with ``backend.use("cupy")`` at run time. Where NumPy and CuPy differ, this
module exposes one name so that ops have one code path:

    scatter_add(a, idx, v)   a[idx[i]] += v[i] for every i, repeated indices accumulate
    batched_matmul(a, b)     a @ b over a stack of small matrices (attention's per-head products)
    matmul(a, b, bias), matmul_pair(a1, b1, a2, b2)   2-D GEMMs (linear layers), split over host threads
    blockwise(f, *arrays)    f(*arrays) for an elementwise f, in cache-sized blocks on the host
    host_threads()           threads that share blockwise's blocks and batched_matmul's stack
    split_run(run, n, size)  run(lo, hi) over [0, n) in halves on those threads (size: elements touched)
    empty_apart(like, *streams)  an output array placed away from its inputs modulo 4 KiB
    erf(x)                   the error function (scipy.special on the host, cupyx on device)
    rng(key, first_row)      counter-based random numbers keyed per sequence (dropout)
    to_host(a) / to_device(a)   move arrays across the edge (batches in, floats out)
    check_keys(got, expected, what)   the one "missing [...], unexpected [...]" check of
                             named arrays (params, grads, optimizer state, checkpoints)

Nothing is half-initialised: ``use("cupy")`` first checks that CuPy imports and sees a
GPU, and only then switches. The fast variants of single ops (fused CUDA kernels, the
float32 GELU) live in minibert/kernels.py, each beside its plain twin.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy

xp = numpy  # the array module in use: numpy or cupy
name = "numpy"

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
        from scipy.special import erf as _erf
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
        # the run's rows in order. xp.add.at's atomics add in whatever order the threads
        # arrive, so two equal steps could differ in the last bit and a resumed run would
        # not be the run it resumes.
        order = xp.argsort(indices)  # (N,) CuPy's sort is stable
        sorted_idx = indices[order].astype(xp.int64)  # (N,)
        values = xp.ascontiguousarray(values, dtype=a.dtype)  # (N, H)
        _scatter_rows_kernel(a.dtype)((indices.size,), (min(256, max(a.shape[1], 1)),),
                                      (sorted_idx, order.astype(xp.int64), values, a,
                                       numpy.int64(indices.size), numpy.int64(a.shape[1])))
    else:
        # ufunc.at on both: cupyx.scatter_add warns on every call from CuPy 14 on
        xp.add.at(a, indices, values)
    return a


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
_scatter_rows = {}  # dtype name -> compiled RawKernel


def _scatter_rows_kernel(dtype):
    real = {"float32": "float", "float64": "double"}[numpy.dtype(dtype).name]
    if real not in _scatter_rows:
        _scatter_rows[real] = xp.RawKernel(_SCATTER_ROWS_SRC.replace("REAL", real), "minibert_scatter_rows")
    return _scatter_rows[real]


_blas_controller = []  # [threadpoolctl.ThreadpoolController] once made, [None] when unavailable
_pool = []  # [ThreadPoolExecutor] of host_threads() - 1 workers, once made
_blas_limit = []  # [threadpoolctl limit] holding BLAS to one thread once host_threads() is 2


def _controller():
    if not _blas_controller:
        try:
            from threadpoolctl import ThreadpoolController
            _blas_controller.append(ThreadpoolController())
        except Exception:  # threadpoolctl missing: plain calls, still correct
            _blas_controller.append(None)
    return _blas_controller[0]


def host_threads():
    """Threads for the host's GEMMs, elementwise blocks and per-head products:
    MINIBERT_HOST_THREADS, else as many as BLAS may use (at most 2), so a process held to one
    BLAS thread (a data-parallel worker, OMP_NUM_THREADS=1) stays on one core. Read at
    first use.

    With two, minibert shares every GEMM between its own two threads, and BLAS is held to
    one thread for the rest of the process: an OpenBLAS worker thread spins on its core for
    a while after each multi-threaded call, and on 2 cores that spinning took the core from
    the next op's second half (measured: the tiny preset's step 238 -> 205 ms with BLAS held
    to one thread). NumPy GEMMs of your own in the same process then use one thread too."""
    if not _pool:
        n = int(os.environ.get("MINIBERT_HOST_THREADS", "0") or 0)
        c = _controller()
        if n <= 0:
            n = min(2, max([m.num_threads for m in c.lib_controllers if m.user_api == "blas"] or [1])) if c else 1
        if n > 1 and c is not None and xp is numpy:
            _blas_limit.append(c.limit(limits=1, user_api="blas"))  # kept: the limit holds while it lives
        _pool.append(ThreadPoolExecutor(n - 1) if n > 1 else None)
    return 1 if _pool[0] is None else _pool[0]._max_workers + 1


SPLIT_MIN = 1 << 15  # elements: below this, handing half to the other thread costs more than it saves


def split_run(run, n, size):
    """run(lo, hi) over [0, n), the upper half on the pool's worker when there is one: NumPy
    releases the GIL inside ufuncs and BLAS calls (and the compiled loops of cpu_kernels.py
    inside theirs), so the two halves use both cores. size: the elements the work touches
    (not n, which may count rows or matrices); under SPLIT_MIN it runs whole on the calling
    thread."""
    if host_threads() < 2 or n < 2 or size < SPLIT_MIN:
        run(0, n)
        return
    mid = n // 2
    upper = _pool[0].submit(run, mid, n)
    run(0, mid)
    upper.result()


_PAGE = 4096  # bytes: addresses equal modulo this alias in the CPU's store-to-load forwarding


def empty_apart(like, *streams):
    """An uninitialised C-order array shaped like `like` (an array, or a (shape, dtype) pair), placed so that its address is far,
    modulo 4 KiB, from the address of every array in `streams` (the arrays the compiled loop
    reads while it writes this one).

    A loop that reads x[i] and writes out[i] while the two addresses are equal modulo 4 KiB
    stalls on every store: the CPU takes the load for one that depends on the store ("4K
    aliasing"). Large NumPy arrays often sit at the same offset within a page, and the
    float32 GELU ran 5x slower for it (measured: 19-26 ms against 3.6-4.9 ms, alternately,
    on one (16, 128, 1024) input, depending only on where its output landed)."""
    shape, dtype = (like.shape, like.dtype) if hasattr(like, "shape") else (tuple(like[0]), numpy.dtype(like[1]))
    size = int(numpy.prod(shape))
    item = dtype.itemsize
    spare = _PAGE // item  # elements of slack: one page
    buf = numpy.empty(size + spare, dtype)  # (n + spare,)
    if not streams:
        return buf[:size].reshape(shape)  # (...)
    # the inputs' offsets within their pages, around the page as a circle: the output goes to
    # the middle of the widest gap between neighbours, on a 64-byte (SIMD) boundary
    offs = sorted(a.ctypes.data % _PAGE for a in streams)
    width, lo = max(((offs[(i + 1) % len(offs)] - o) % _PAGE or _PAGE, o) for i, o in enumerate(offs))
    target = (lo + width // 2 + 32) // 64 * 64  # the middle, rounded to the nearest 64 bytes
    best = (target - buf.ctypes.data) % _PAGE // item  # elements into buf
    return buf[best:best + size].reshape(shape)  # (...) a view into buf


def matmul(a, b, bias=None):
    """a @ b (+ bias, (N,), when given) for 2-D a (M, K) and b (K, N): the linear layers' GEMMs.

    On the host with host_threads() >= 2 the rows are split in two halves, each a GEMM on
    one BLAS thread in its own Python thread. Two BLAS threads inside one GEMM must meet
    at every block; when the machine is busy one waits for the other to be scheduled, and a
    small GEMM took 5-10x its time (measured: (1900, 512) x (512, 128) in 116 ms on two
    BLAS threads at load 5, 14 ms as two one-thread halves). The result may differ from one
    two-thread GEMM in the last bit, but it is the same on every run.
    """
    if xp is not numpy or host_threads() < 2 or a.ndim != 2 or a.shape[0] < 64:
        out = xp.matmul(a, b)  # (M, N)
        if bias is not None:
            out += bias
        return out
    out = numpy.empty((a.shape[0], b.shape[1]), numpy.result_type(a, b))  # (M, N)

    def half(lo, hi):  # the bias is added while the half is still in cache
        numpy.matmul(a[lo:hi], b, out=out[lo:hi])
        if bias is not None:
            out[lo:hi] += bias
    split_run(half, a.shape[0], a.size + out.size)
    return out


def matmul_pair(a1, b1, a2, b2):
    """(a1 @ b1, a2 @ b2), two independent 2-D GEMMs (a linear layer's dx and dw): on the
    host with host_threads() >= 2 each runs on one BLAS thread, the two at once."""
    if xp is not numpy or host_threads() < 2:
        return xp.matmul(a1, b1), xp.matmul(a2, b2)
    second = _pool[0].submit(numpy.matmul, a2, b2)
    first = numpy.matmul(a1, b1)
    return first, second.result()


def batched_matmul(a, b, out=None):
    """a @ b for stacks of small matrices, e.g. (B, A, T, D) @ (B, A, D, T).

    NumPy hands each (T, D) product to BLAS separately, and a multi-threaded BLAS spends
    more on waking and joining its threads than the tiny product takes (worst when the
    machine is busy), so on the host these run with one BLAS thread each, the stack split
    between host_threads() Python threads (halves of the first axis). Results are identical:
    every product is computed whole by one thread either way.
    """
    if xp is numpy:
        c = _controller()
        if c is not None:
            shape = numpy.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
            res = numpy.empty(shape, numpy.result_type(a, b)) if out is None else out  # (..., M, N)
            split = a.ndim == b.ndim == res.ndim >= 3 and a.shape[0] == b.shape[0] == res.shape[0]
            with c.limit(limits=1, user_api="blas"):  # a no-op once host_threads() holds BLAS to one
                if split:
                    split_run(lambda lo, hi: numpy.matmul(a[lo:hi], b[lo:hi], out=res[lo:hi]), res.shape[0],
                              a.size + b.size + res.size)
                else:
                    numpy.matmul(a, b, out=res)
            return res
    elif a.ndim >= 3 and a.shape[:-2] == b.shape[:-2] and a.dtype == b.dtype and a.dtype in (numpy.float32, numpy.float64):
        la, lb = _gemm_layout(a), _gemm_layout(b)
        if la is not None and lb is not None:
            # on the device: one cuBLAS call reading a and b where they lie, transposes included
            shape = a.shape[:-1] + b.shape[-1:]
            lc = None if out is None or out.shape != shape or out.dtype != a.dtype else _gemm_layout(out)
            if lc is None or lc[2]:  # no out, or a view cuBLAS cannot write (batch axes with two strides)
                c = xp.empty(shape, a.dtype)  # (..., M, N)
                _gemm_strided_batched(a, la, b, lb, c, _gemm_layout(c))
                if out is None:
                    return c
                out[...] = c
            else:
                _gemm_strided_batched(a, la, b, lb, out, lc)
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
    if xp is numpy or _gemm_layout(a) is not None:
        return a
    return xp.ascontiguousarray(a)


def _gemm_layout(a):
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


def _gemm_strided_batched(a, la, b, lb, c, lc):
    """c = a @ b for every matrix of the batch, in one cuBLAS call, reading a and b where
    they lie (transposes included); la, lb, lc their _gemm_layout. cuBLAS is column-major:
    a row-major c (M, N) is the column-major c^T = b^T a^T, so b is cuBLAS's first operand
    and a its second."""
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
    cublas.gemmStridedBatchedEx(
        xp.cuda.device.get_cublas_handle(), int(tb), int(ta), N, M, K, one.ctypes.data,
        b.data.ptr, dtype, ldb, sb, a.data.ptr, dtype, lda, sa, zero.ctypes.data,
        c.data.ptr, dtype, ldc, sc, batch, compute, cublas.CUBLAS_GEMM_DEFAULT)


BLOCK = 1 << 16  # elements per block in blockwise: a few float32 temporaries fit in L2


def blockwise(f, *arrays):
    """f(*arrays) for an elementwise f of same-shaped arrays; the result has their shape.

    On the host a long chain of array ops (f's temporaries) streams the whole array through
    memory once per op; in blocks of BLOCK elements the temporaries stay in cache, which
    roughly halves the time (each element's result is the same either way). The blocks are
    shared between host_threads() Python threads (the first half of them and the second).
    On the device f runs on the whole arrays.
    """
    x = arrays[0]
    if xp is not numpy or x.size <= BLOCK:
        return f(*arrays)
    out = numpy.empty_like(x)  # (...)
    flat = [a.reshape(-1) for a in arrays]  # (n,) each
    of = out.reshape(-1)  # (n,) view

    def run(lo, hi):  # blocks lo..hi-1
        for i in range(lo * BLOCK, min(hi * BLOCK, x.size), BLOCK):
            of[i:i + BLOCK] = f(*(a[i:i + BLOCK] for a in flat))

    split_run(run, -(-x.size // BLOCK), x.size)
    return out


# ----------------------------------------------------------------------------------------
# random numbers keyed per sequence (dropout masks)
#
# A mask drawn for a whole (B, ...) batch from one stream depends on how the batch is cut:
# split it over two processes and each half draws other numbers. So row b of every draw
# comes from its own counter-based stream, keyed by (key, draw number, global row index):
# the same sequence gets the same mask whichever process holds it, and nothing is set up
# per micro-batch but a key (Salmon et al. 2011, "Parallel random numbers: as easy as
# 1, 2, 3"). The generator is Philox-4x32-10, the same numbers on the host (a compiled
# loop, minibert/cpu_kernels.py, or philox_uniform_plain below) and on the device (a CUDA
# kernel): a run's dropout masks do not depend on where it runs.

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # Philox-4x32 round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # Weyl key increments (golden ratio, sqrt(3) - 1)


def philox4x32(counter, key, rounds=10):
    """Philox-4x32-10 in plain array code: counter (4, n) uint32, key (2,) uint32 -> (4, n)
    uint32. The reference the compiled and device kernels must equal (Random123's known
    answers pass)."""
    c = [numpy.asarray(w, dtype=numpy.uint64) for w in counter]  # 4 x (n,) widened for the products
    k0, k1 = numpy.uint64(key[0]), numpy.uint64(key[1])
    mask = numpy.uint64(0xFFFFFFFF)
    for _ in range(rounds):
        p0 = numpy.uint64(PHILOX_M[0]) * c[0]  # (n,) full 64-bit products
        p1 = numpy.uint64(PHILOX_M[1]) * c[2]
        c = [((p1 >> numpy.uint64(32)) ^ c[1] ^ k0) & mask, p1 & mask,
             ((p0 >> numpy.uint64(32)) ^ c[3] ^ k1) & mask, p0 & mask]
        k0 = (k0 + numpy.uint64(PHILOX_W[0])) & mask
        k1 = (k1 + numpy.uint64(PHILOX_W[1])) & mask
    return numpy.stack(c).astype(numpy.uint32)  # (4, n)


# One Philox call gives four 32-bit words: float32 uses each word (24 bits), float64 two
# words per number (53 bits). `words` is how many numbers one counter value serves (4 or 2).
# Element i of an array whose rows (first axis) hold row_size elements; the result is
# double, exactly the float32 value when words is 4. kernels.dropout's fused kernel calls it too.
PHILOX_CUDA = r"""
__device__ inline double minibert_philox_uniform(long long i, long long row_size, int words, unsigned int key0,
                                                 unsigned int key1, unsigned int draw, long long first_row) {
    const long long j = i % row_size;
    unsigned int c0 = (unsigned int)(j / words), c1 = (unsigned int)(first_row + i / row_size);
    unsigned int c2 = draw, c3 = 0, k0 = key0, k1 = key1;
    for (int r = 0; r < 10; r++) {
        unsigned int hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        unsigned int hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        c0 = hi1 ^ c1 ^ k0; c1 = lo1; c2 = hi0 ^ c3 ^ k1; c3 = lo0;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    const unsigned int w[4] = {c0, c1, c2, c3};
    if (words == 2) {
        const int s = 2 * (int)(j % 2);
        return ((double)(w[s] >> 5) * 67108864.0 + (double)(w[s + 1] >> 6)) * (1.0 / 9007199254740992.0);
    }
    return (double)((float)(w[j % 4] >> 8) * (1.0f / 16777216.0f));
}
"""
_philox_kernels = {}


def philox_uniform_plain(shape, dtype, key, draw, first_row):
    """The generator's numbers in plain array code: element j of row b (the first axis) is
    word j % 4 (24 bits, float32) of Philox-4x32-10 at counter (j // 4, first_row + b,
    draw, 0), or words 2 (j % 2), 2 (j % 2) + 1 (53 bits, float64) of counter
    (j // 2, first_row + b, draw, 0); uniform in [0, 1)."""
    rows = shape[0] if shape else 1
    row_size = int(numpy.prod(shape[1:])) if shape else 1
    per = 2 if numpy.dtype(dtype) == numpy.float64 else 4  # numbers per counter value
    calls = -(-row_size // per)
    i = numpy.arange(rows * calls, dtype=numpy.uint64)  # (rows * calls,) one per Philox call
    ctr = [i % calls, first_row + i // calls, numpy.full(i.size, draw, numpy.uint64), numpy.zeros(i.size, numpy.uint64)]
    w = philox4x32(ctr, key).T.reshape(rows, calls * 4)  # (rows, 4 calls) the words in order
    if per == 2:
        w = w.reshape(rows, calls * 2, 2)  # (rows, 2 calls, 2) word pairs
        u = ((w[..., 0] >> 5).astype(numpy.float64) * 67108864.0 + (w[..., 1] >> 6)) / 9007199254740992.0
    else:
        u = (w >> 8).astype(numpy.float32) * numpy.float32(1.0 / 16777216.0)
    return u[:, :row_size].reshape(shape).astype(dtype)  # (...)


class SequenceStreams:
    """Uniform numbers whose row b (the first axis is the batch) depends only on the key,
    the draw number and the global row index first_row + b: how a batch is split over
    processes changes none of them. `.random(shape, dtype)` is what dropout calls, once
    per dropout site, in forward order."""

    def __init__(self, key, first_row=0):
        words = numpy.random.SeedSequence(list(key) if isinstance(key, (tuple, list)) else key)
        self.key32 = words.generate_state(2, numpy.uint32)  # the Philox-4x32 key
        self.first_row = int(first_row)
        self.draws = 0  # .random calls so far: the draw number is part of every counter

    def next_draw(self):
        """The draw number of the next dropout site, counted: what .random uses, and what a
        fused kernel that draws its own numbers (kernels.dropout) takes instead."""
        self.draws += 1
        return self.draws - 1

    def random(self, shape, dtype=numpy.float64):
        shape = (shape,) if isinstance(shape, (int, numpy.integer)) else tuple(shape)
        draw = self.next_draw()
        if xp is not numpy:
            return self._random_device(shape, dtype, draw)
        from minibert import kernels  # kernels imports this module
        return kernels.philox_uniform(shape, dtype, self.key32, draw, self.first_row)  # (B, ...)

    def _random_device(self, shape, dtype, draw):
        dt = numpy.dtype(dtype)
        kern = _philox_kernels.get(dt)
        if kern is None:
            # parameter types are NumPy's names: "float" there would mean float64
            words = 2 if dt == numpy.float64 else 4
            kern = xp.ElementwiseKernel(
                "uint32 key0, uint32 key1, uint32 draw, int64 first_row, int64 row_size", f"{dt.name} out",
                f"out = minibert_philox_uniform(i, row_size, {words}, key0, key1, draw, first_row);",
                f"minibert_philox_{dt.name}", preamble=PHILOX_CUDA)
            _philox_kernels[dt] = kern
        out = xp.empty(shape, dtype=dt)  # (B, ...)
        row_size = int(numpy.prod(shape[1:])) if shape else 1
        kern(numpy.uint32(self.key32[0]), numpy.uint32(self.key32[1]), numpy.uint32(draw),
             numpy.int64(self.first_row), numpy.int64(row_size), out)
        return out


def rng(key, first_row=0):
    """The random stream of one forward's dropout masks, keyed by an int or a tuple of ints
    such as (seed, step, micro_batch); first_row is the global index of this process's
    first sequence. See SequenceStreams: a resumed run, or a run split over N processes,
    redraws exactly the masks of an uninterrupted single-process run."""
    return SequenceStreams(key, first_row)


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


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse (Linux; elsewhere nothing happens).

    A training step allocates and frees its activations, megabytes each. By default glibc
    hands such blocks back to the kernel (munmap, or trimming the top of the heap) and the
    next step page-faults them in again, zeroed. Serving them from the heap (mmap only above
    32 MB), never trimming it, and growing it 64 MB at a time made the tiny preset's step
    about 9% faster here (medians of 5 runs each, 148 -> 134 ms). Resident memory stays at
    the peak instead of shrinking between steps. MINIBERT_MALLOC=0 leaves malloc alone;
    called once at import."""
    if os.environ.get("MINIBERT_MALLOC", "1").strip() == "0":
        return False
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt  # glibc's; musl and macOS have none
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest allowed on 64-bit
    ok &= mallopt(M_TRIM_THRESHOLD, 1 << 30)
    ok &= mallopt(M_TOP_PAD, 64 << 20)
    return bool(ok)


def default_name():
    """The backend the environment asks for: MINIBERT_BACKEND ("numpy" when unset). Run
    configs (TrainConfig, FinetuneConfig) default to it, so MINIBERT_BACKEND=cupy reaches them."""
    return os.environ.get("MINIBERT_BACKEND", "numpy").strip().lower() or "numpy"


use(default_name())
keep_freed_memory()
