"""backend.rng: the counter-based, per-sequence random numbers behind dropout.

A sequence's numbers depend only on (key, draw number, global row), never on how the batch
is cut; the Philox-4x32-10 twin of the device kernel passes Random123's known answers."""
import numpy as np
import pytest

from minibert import backend


def host(a):
    return np.asarray(backend.to_host(a))


@pytest.mark.parametrize("counter,key,expected", [
    ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
    ([0xffffffff] * 4, [0xffffffff] * 2, [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
    ([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0],
     [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]),
])
def test_philox4x32_known_answers(counter, key, expected):
    """Random123's kat_vectors for philox4x32 with 10 rounds."""
    assert backend.philox4x32([[c] for c in counter], key)[:, 0].tolist() == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_do_not_depend_on_the_split(dtype):
    whole = backend.rng((0, 3, 1))
    a1, a2 = host(whole.random((7, 2, 5), dtype)), host(whole.random((7, 4), dtype))  # two dropout sites
    parts = [backend.rng((0, 3, 1), first_row=lo) for lo in (0, 3, 5)]
    b1 = np.concatenate([host(p.random((hi - lo, 2, 5), dtype)) for p, (lo, hi) in zip(parts, [(0, 3), (3, 5), (5, 7)])])
    b2 = np.concatenate([host(p.random((hi - lo, 4), dtype)) for p, (lo, hi) in zip(parts, [(0, 3), (3, 5), (5, 7)])])
    assert a1.dtype == dtype and np.array_equal(a1, b1) and np.array_equal(a2, b2)
    assert 0.0 <= a1.min() and a1.max() < 1.0
    # rows, sites and keys are distinct streams
    assert not np.array_equal(a1[0], a1[1]) and not np.array_equal(a1[:, 0, :4], a2[:, :4])
    assert not np.array_equal(a1, host(backend.rng((0, 3, 2)).random((7, 2, 5), dtype)))


def test_uniform_enough():
    u = host(backend.rng(1).random((64, 1000), np.float32))
    assert abs(u.mean() - 0.5) < 0.005 and abs((u < 0.1).mean() - 0.1) < 0.005


@pytest.mark.skipif(not backend.cupy_available(), reason="no GPU")
def test_device_kernel_equals_its_plain_twin():
    old = backend.name
    try:
        backend.use("cupy")
        for dtype in (np.float32, np.float64):
            s = backend.rng((5, 6), first_row=3)
            got = host(s.random((4, 3, 5), dtype))
            want = backend.philox_uniform_plain((4, 3, 5), dtype, s.key32, 0, 3)
            assert np.array_equal(got, want)
    finally:
        backend.use(old)
