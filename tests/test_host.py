"""The host's machinery: output placement modulo a page, malloc's settings, and the two
threads that the GEMMs, the blockwise array code and the per-head products share."""
import ctypes
import threading

import numpy as np
import pytest

from minibert import backend, host

def test_empty_apart_places_outputs_away_from_inputs_modulo_a_page():
    """Compiled loops write into host.empty_apart's arrays: never at an input's offset
    within a 4 KiB page (4K aliasing stalls every store)."""
    rng = np.random.default_rng(0)
    for n in (1, 1000, 3 * 4096 + 5):
        x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal((n, 2))
        out = host.empty_apart(x, x, y)
        assert out.shape == x.shape and out.dtype == x.dtype and out.flags.c_contiguous
        for a in (x, y):
            d = (out.ctypes.data - a.ctypes.data) % 4096
            assert min(d, 4096 - d) >= 960  # two inputs: the middle of a gap of at least 2 KiB
        assert out.ctypes.data % 64 == 0  # on a SIMD boundary
        o2 = host.empty_apart(((3, n), np.float64), x)
        assert o2.shape == (3, n) and o2.dtype == np.float64


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("MINIBERT_MALLOC", "0")
    assert host.keep_freed_memory() is False  # malloc left alone
    monkeypatch.delenv("MINIBERT_MALLOC")
    try:
        has_mallopt = hasattr(ctypes.CDLL(None), "mallopt")
    except (OSError, TypeError):
        has_mallopt = False
    assert host.keep_freed_memory() is has_mallopt  # glibc: the three settings accepted


@pytest.mark.skipif(backend.name != "numpy" or host.host_threads() < 2, reason="the host's two threads")
@pytest.mark.parametrize("op", ["batched_matmul", "blockwise", "matmul"])
def test_large_host_work_runs_on_both_threads(op, monkeypatch):
    """The per-head attention products, the blockwise array code and the GEMMs of a mini-sized
    step are split between the two threads (a split_run call that sized the work by its item
    count instead of its elements once kept the attention products on one core)."""
    threads = set()
    split_run = host.split_run

    def spy(run, n, size):
        def traced(lo, hi):
            threads.add(threading.get_ident())
            return run(lo, hi)
        return split_run(traced, n, size)
    monkeypatch.setattr(host, "split_run", spy)
    rng = np.random.default_rng(0)
    if op == "batched_matmul":  # mini's scores: (B, A, T, D) @ (B, A, D, T)
        q, k = rng.standard_normal((2, 16, 4, 128, 64), dtype=np.float32)
        got, want = backend.batched_matmul(q, k.transpose(0, 1, 3, 2)), q @ k.transpose(0, 1, 3, 2)
    elif op == "blockwise":
        x = rng.standard_normal((16, 128, 1024), dtype=np.float32)
        got, want = host.blockwise(lambda v: v * 2 + 1, x), x * 2 + 1
    else:
        a, b = rng.standard_normal((2048, 256), dtype=np.float32), rng.standard_normal((256, 256), dtype=np.float32)
        got, want = backend.matmul(a, b), a @ b
    assert len(threads) == 2
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
