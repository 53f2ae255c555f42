"""The array backend: one switch between NumPy (CPU) and CuPy (CUDA).

Every op in minibert reads its array module from here at call time:

    from minibert import backend
    xp = backend.xp          # numpy or cupy, whichever is selected

Select with the environment variable ``MINIBERT_BACKEND=numpy|cupy`` (read once, at
import) or with ``backend.use("cupy")`` at run time. Where NumPy and CuPy differ, this
module exposes one name so that ops have one code path:

    scatter_add(a, idx, v)   a[idx[i]] += v[i] for every i, repeated indices accumulate
    batched_matmul(a, b)     a @ b over a stack of small matrices (attention's per-head products)
    blockwise(f, *arrays)    f(*arrays) for an elementwise f, in cache-sized blocks on the host
    erf(x)                   the error function (scipy.special on the host, cupyx on device)
    rng(seed)                a seeded random Generator on the current device
    to_host(a) / to_device(a)   move arrays across the edge (batches in, floats out)
    check_keys(got, expected, what)   the one "missing [...], unexpected [...]" check of
                             named arrays (params, grads, optimizer state, checkpoints)

Nothing is half-initialised: ``use("cupy")`` first checks that CuPy imports and sees a
GPU, and only then switches. The fast variants of single ops (fused CUDA kernels, the
float32 GELU) live in minibert/kernels.py, each beside its plain twin.
"""
import os

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
        # rows: sort the indices, sum each run of equal indices with one reduceat, then add
        # once per distinct row (np.add.at adds row by row and is many times slower)
        order = numpy.argsort(indices, kind="stable")  # (N,)
        sorted_idx = indices[order]  # (N,)
        starts = numpy.flatnonzero(numpy.r_[True, sorted_idx[1:] != sorted_idx[:-1]])  # (U,)
        a[sorted_idx[starts]] += numpy.add.reduceat(values[order], starts, axis=0)  # (U, H)
    elif xp is numpy:
        numpy.add.at(a, indices, values)
    else:
        import cupyx
        cupyx.scatter_add(a, indices, values)
    return a


_blas_controller = []  # [threadpoolctl.ThreadpoolController] once made, [None] when unavailable


def batched_matmul(a, b, out=None):
    """a @ b for stacks of small matrices, e.g. (B, A, T, D) @ (B, A, D, T).

    NumPy hands each (T, D) product to BLAS separately, and a multi-threaded BLAS spends
    more on waking and joining its threads than the tiny product takes (worst when the
    machine is busy), so on the host these run with one BLAS thread. Results are identical:
    the thread count splits output blocks, not the sums.
    """
    if xp is numpy:
        if not _blas_controller:
            try:
                from threadpoolctl import ThreadpoolController
                _blas_controller.append(ThreadpoolController())
            except Exception:  # threadpoolctl missing: plain matmul, still correct
                _blas_controller.append(None)
        if _blas_controller[0] is not None:
            with _blas_controller[0].limit(limits=1, user_api="blas"):
                return numpy.matmul(a, b, out=out)
    if out is None:
        return xp.matmul(a, b)
    out[...] = xp.matmul(a, b)  # out may be a strided view; a copy on the device is cheap
    return out


BLOCK = 1 << 16  # elements per block in blockwise: a few float32 temporaries fit in L2


def blockwise(f, *arrays):
    """f(*arrays) for an elementwise f of same-shaped arrays; the result has their shape.

    On the host a long chain of array ops (f's temporaries) streams the whole array through
    memory once per op; in blocks of BLOCK elements the temporaries stay in cache, which
    roughly halves the time (each element's result is the same either way). On the device
    f runs on the whole arrays.
    """
    x = arrays[0]
    if xp is not numpy or x.size <= BLOCK:
        return f(*arrays)
    out = numpy.empty_like(x)  # (...)
    flat = [a.reshape(-1) for a in arrays]  # (n,) each
    of = out.reshape(-1)  # (n,) view
    for i in range(0, x.size, BLOCK):
        of[i:i + BLOCK] = f(*(a[i:i + BLOCK] for a in flat))
    return out


def rng(seed):
    """A random Generator on the current device, seeded by an int or a tuple of ints.

    A tuple such as (seed, step, micro_batch) gives an independent stream per step, so a
    resumed run redraws exactly the dropout masks an uninterrupted run would have drawn.
    """
    seeds = numpy.random.SeedSequence(list(seed) if isinstance(seed, (tuple, list)) else seed)
    if xp is numpy:
        return numpy.random.default_rng(seeds)
    return xp.random.default_rng(int(seeds.generate_state(1, numpy.uint64)[0]))


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


_env = os.environ.get("MINIBERT_BACKEND", "numpy").strip().lower() or "numpy"
use(_env)
