"""The host's machinery: its two threads, cache-sized blocks, memory placement, and the
BLAS, malloc and Numba settings the host's speed paths run under.

Nothing here knows about the array backend; backend.py and kernels.py call these on their
NumPy paths only:

    compiled_loops()         minibert.cpu_kernels (Numba's compiled float32 loops) when use_numba, else None
    host_threads()           threads that share the host's GEMMs, blocks and per-head products (1 or 2)
    split_run(run, n, size)  run(lo, hi) over [0, n) in halves on those threads (size: elements touched)
    run_both(f, g)           (f(), g()), g on the other thread: two independent GEMMs at once
    one_blas_thread()        a context in which BLAS runs single-threaded (threadpoolctl)
    blockwise(f, *arrays)    f(*arrays) for an elementwise f, in cache-sized blocks on both threads
    empty_apart(like, *streams)  an output array placed away from its inputs modulo 4 KiB
    keep_freed_memory()      glibc's malloc keeps freed blocks for the next step (called at import)

Shapes: split_run and blockwise cut the first axis (or the flattened elements) in two; each
half is computed whole by one thread, so the results are the bits of one unsplit call.
"""
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

import numpy
from threadpoolctl import ThreadpoolController

# False: the host runs the array code in float32 too (tests compare the two). MINIBERT_NUMBA=0
# in the environment starts with it off: no Numba import, ~120 MB less resident memory
use_numba = os.environ.get("MINIBERT_NUMBA", "1").strip() != "0"
_cpu_module = []  # [minibert.cpu_kernels] or [None] when Numba is missing: imported at first use


def compiled_loops():
    """minibert.cpu_kernels, the host's compiled float32 loops, when use_numba is on and
    Numba is installed; else None (the callers run their plain array code)."""
    if not use_numba:
        return None
    if not _cpu_module:
        try:
            from minibert import cpu_kernels  # imports Numba: optional, and only when the loops run
        except ImportError:  # Numba is not installed: the array code, slower, same results
            cpu_kernels = None
        _cpu_module.append(cpu_kernels)
    return _cpu_module[0]


_blas_controller = []  # [threadpoolctl.ThreadpoolController], made at first use (after BLAS is loaded)
_pool = []  # [ThreadPoolExecutor] of host_threads() - 1 workers, once made
_blas_limit = []  # [threadpoolctl limit] holding BLAS to one thread once host_threads() is 2


def _controller():
    if not _blas_controller:
        _blas_controller.append(ThreadpoolController())
    return _blas_controller[0]


def one_blas_thread():
    """A context in which BLAS runs on one thread: a no-op once host_threads() holds BLAS to one."""
    return _controller().limit(limits=1, user_api="blas")


def host_threads():
    """Threads for the host's GEMMs, elementwise blocks and per-head products:
    MINIBERT_HOST_THREADS, else as many as BLAS may use (at most 2), so a process held to one
    BLAS thread (a data-parallel worker, OMP_NUM_THREADS=1) stays on one core. Read at
    first use, which is always on the NumPy backend (only the host paths call it).

    With two, minibert shares every GEMM between its own two threads, and BLAS is held to
    one thread for the rest of the process: an OpenBLAS worker thread spins on its core for
    a while after each multi-threaded call, and on 2 cores that spinning took the core from
    the next op's second half (measured: the tiny preset's step 238 -> 205 ms with BLAS held
    to one thread). NumPy GEMMs of your own in the same process then use one thread too."""
    if not _pool:
        n = int(os.environ.get("MINIBERT_HOST_THREADS", "0") or 0)
        c = _controller()
        if n <= 0:
            n = min(2, max([m.num_threads for m in c.lib_controllers if m.user_api == "blas"] or [1]))
        if n > 1:
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


def run_both(first, second):
    """(first(), second()) for two independent calls, second on the pool's worker when there
    is one (each call is whole on one thread: the same bits as running them in turn)."""
    if host_threads() < 2:
        return first(), second()
    other = _pool[0].submit(second)
    return first(), other.result()


BLOCK = 1 << 16  # elements per block in blockwise: a few float32 temporaries fit in L2


def blockwise(f, *arrays):
    """f(*arrays) for an elementwise f of same-shaped arrays; the result has their shape.

    On the host a long chain of array ops (f's temporaries) streams the whole array through
    memory once per op; in blocks of BLOCK elements the temporaries stay in cache, which
    roughly halves the time (each element's result is the same either way). The blocks are
    shared between host_threads() Python threads (the first half of them and the second).
    Device arrays (anything but a NumPy array) go to f whole.
    """
    x = arrays[0]
    if not isinstance(x, numpy.ndarray) or x.size <= BLOCK:
        return f(*arrays)
    out = numpy.empty_like(x)  # (...)
    flat = [a.reshape(-1) for a in arrays]  # (n,) each
    of = out.reshape(-1)  # (n,) view

    def run(lo, hi):  # blocks lo..hi-1
        for i in range(lo * BLOCK, min(hi * BLOCK, x.size), BLOCK):
            of[i:i + BLOCK] = f(*(a[i:i + BLOCK] for a in flat))

    split_run(run, -(-x.size // BLOCK), x.size)
    return out


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
        mallopt = ctypes.CDLL(None).mallopt  # glibc's; musl and macOS have none
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest allowed on 64-bit
    ok &= mallopt(M_TRIM_THRESHOLD, 1 << 30)
    ok &= mallopt(M_TOP_PAD, 64 << 20)
    return bool(ok)


keep_freed_memory()
