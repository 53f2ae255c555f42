"""The backend switch: one name per NumPy/CuPy difference, clear errors, nothing half-set."""
import numpy as np
import pytest

from minibert import backend


def test_unknown_backend_is_refused_and_nothing_changes():
    before = backend.xp
    with pytest.raises(ValueError, match="unknown backend"):
        backend.use("jax")
    assert backend.xp is before


@pytest.mark.skipif(backend.cupy_available(), reason="CuPy with a GPU is present")
def test_cupy_without_gpu_says_how_to_install():
    before = backend.xp
    with pytest.raises(RuntimeError, match="pip install"):
        backend.use("cupy")
    assert backend.xp is before


def test_scatter_add_accumulates_repeats():
    a = backend.xp.zeros((4, 2))
    backend.scatter_add(a, backend.to_device(np.array([1, 1, 3])), backend.to_device(np.ones((3, 2))))
    assert backend.to_host(a).tolist() == [[0, 0], [2, 2], [0, 0], [1, 1]]


def test_erf_matches_math():
    import math
    x = np.linspace(-4, 4, 17)
    got = backend.to_host(backend.erf(backend.to_device(x)))
    np.testing.assert_allclose(got, [math.erf(v) for v in x], rtol=1e-12, atol=1e-15)


def test_rng_is_seeded_by_tuples():
    a = backend.to_host(backend.rng((1, 2)).random(5))
    b = backend.to_host(backend.rng((1, 2)).random(5))
    c = backend.to_host(backend.rng((1, 3)).random(5))
    assert (a == b).all() and not (a == c).all()


def test_host_round_trip():
    x = np.arange(6.0).reshape(2, 3)
    y = backend.to_host(backend.to_device(x))
    assert isinstance(y, np.ndarray) and (y == x).all()


def test_empty_apart_places_outputs_away_from_inputs_modulo_a_page():
    """Compiled loops write into backend.empty_apart's arrays: never at an input's offset
    within a 4 KiB page (4K aliasing stalls every store)."""
    rng = np.random.default_rng(0)
    for n in (1, 1000, 3 * 4096 + 5):
        x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal((n, 2))
        out = backend.empty_apart(x, x, y)
        assert out.shape == x.shape and out.dtype == x.dtype and out.flags.c_contiguous
        for a in (x, y):
            d = (out.ctypes.data - a.ctypes.data) % 4096
            assert min(d, 4096 - d) >= 960  # two inputs: the middle of a gap of at least 2 KiB
        assert out.ctypes.data % 64 == 0  # on a SIMD boundary
        o2 = backend.empty_apart(((3, n), np.float64), x)
        assert o2.shape == (3, n) and o2.dtype == np.float64


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("MINIBERT_MALLOC", "0")
    assert backend.keep_freed_memory() is False  # malloc left alone
    monkeypatch.delenv("MINIBERT_MALLOC")
    import ctypes
    try:
        has_mallopt = hasattr(ctypes.CDLL(None), "mallopt")
    except (OSError, TypeError):
        has_mallopt = False
    assert backend.keep_freed_memory() is has_mallopt  # glibc: the three settings accepted


@pytest.mark.skipif(backend.name != "numpy" or backend.host_threads() < 2, reason="the host's two threads")
@pytest.mark.parametrize("op", ["batched_matmul", "blockwise", "matmul"])
def test_large_host_work_runs_on_both_threads(op, monkeypatch):
    """The per-head attention products, the blockwise array code and the GEMMs of a mini-sized
    step are split between the two threads (a split_run call that sized the work by its item
    count instead of its elements once kept the attention products on one core)."""
    import threading
    threads = set()
    split_run = backend.split_run

    def spy(run, n, size):
        def traced(lo, hi):
            threads.add(threading.get_ident())
            return run(lo, hi)
        return split_run(traced, n, size)
    monkeypatch.setattr(backend, "split_run", spy)
    rng = np.random.default_rng(0)
    if op == "batched_matmul":  # mini's scores: (B, A, T, D) @ (B, A, D, T)
        q, k = rng.standard_normal((2, 16, 4, 128, 64), dtype=np.float32)
        got, want = backend.batched_matmul(q, k.transpose(0, 1, 3, 2)), q @ k.transpose(0, 1, 3, 2)
    elif op == "blockwise":
        x = rng.standard_normal((16, 128, 1024), dtype=np.float32)
        got, want = backend.blockwise(lambda v: v * 2 + 1, x), x * 2 + 1
    else:
        a, b = rng.standard_normal((2048, 256), dtype=np.float32), rng.standard_normal((256, 256), dtype=np.float32)
        got, want = backend.matmul(a, b), a @ b
    assert len(threads) == 2
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
