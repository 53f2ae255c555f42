"""philox.rng: the counter-based, per-sequence random numbers behind dropout.

A sequence's numbers depend only on (key, draw number, global row), never on how the batch
is cut; the Philox-4x32-10 twin of the device kernel passes Random123's known answers; the
numbers are uniform and show no dependence between neighbouring words, counters, rows or
draws (statistical tests, and a test that those tests catch broken generators)."""
import numpy as np
import pytest
from scipy import stats

from minibert import backend, philox


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
    assert philox.philox4x32([[c] for c in counter], key)[:, 0].tolist() == expected


def test_rng_is_seeded_by_tuples():
    a = host(philox.rng((1, 2)).random(5))
    b = host(philox.rng((1, 2)).random(5))
    c = host(philox.rng((1, 3)).random(5))
    assert (a == b).all() and not (a == c).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_do_not_depend_on_the_split(dtype):
    whole = philox.rng((0, 3, 1))
    a1, a2 = host(whole.random((7, 2, 5), dtype)), host(whole.random((7, 4), dtype))  # two dropout sites
    parts = [philox.rng((0, 3, 1), first_row=lo) for lo in (0, 3, 5)]
    b1 = np.concatenate([host(p.random((hi - lo, 2, 5), dtype)) for p, (lo, hi) in zip(parts, [(0, 3), (3, 5), (5, 7)])])
    b2 = np.concatenate([host(p.random((hi - lo, 4), dtype)) for p, (lo, hi) in zip(parts, [(0, 3), (3, 5), (5, 7)])])
    assert a1.dtype == dtype and np.array_equal(a1, b1) and np.array_equal(a2, b2)
    assert 0.0 <= a1.min() and a1.max() < 1.0
    # rows, sites and keys are distinct streams
    assert not np.array_equal(a1[0], a1[1]) and not np.array_equal(a1[:, 0, :4], a2[:, :4])
    assert not np.array_equal(a1, host(philox.rng((0, 3, 2)).random((7, 2, 5), dtype)))


# ----------------------------------------------------------------------------------------
# uniformity and independence

# Each statistic below fails at significance ALPHA = 1e-6: a correct generator would fail it
# with probability 1e-6, and one of the 14 that test_uniform_and_independent computes with
# probability below 1.4e-5 (Bonferroni). The keys are fixed, so the outcome is too: it does
# not flicker between runs; a failure means these keys' numbers are that unlikely.
ALPHA = 1e-6
ROWS, COLS = 512, 2048  # one draw: 1,048,576 numbers, as (B, n) dropout sees them


def _chi2_fails(counts):
    """Pearson's chi-square test of equal cell probabilities, at ALPHA."""
    counts = np.asarray(counts, np.float64).ravel()
    expected = counts.sum() / counts.size
    stat = ((counts - expected) ** 2 / expected).sum()
    return stats.chi2.sf(stat, counts.size - 1) < ALPHA


def _pairs_fail(a, b, bins=16):
    """Chi-square test of independence of the pairs (a[i], b[i]) on a 16 x 16 table: it
    fails when a and b depend on each other, however each is distributed on its own."""
    counts = np.histogram2d(a.ravel(), b.ravel(), bins=bins, range=[[0, 1], [0, 1]])[0]  # (bins, bins)
    return stats.chi2_contingency(counts, correction=False).pvalue < ALPHA


def failed_checks(u, u_next, per):
    """The names of the checks that two successive draws u, u_next (ROWS, COLS) of one stream
    fail; per: the numbers one Philox counter value gives (4 for float32, 2 for float64)."""
    x = u.ravel().astype(np.float64)  # (n,)
    bits = 24 if u.dtype == np.float32 else 53  # the generator's bits per number
    pair = 2 * per  # non-overlapping pairs of counters: columns c and c + per, c = 0, 2 per, 4 per, ...
    checks = {
        # the numbers: equal-width bins, the empirical CDF, and the lowest 8 of their bits
        "bins": lambda: _chi2_fails(np.bincount((x * 1024).astype(np.int64), minlength=1024)),
        "ks": lambda: stats.kstest(x, "uniform").pvalue < ALPHA,
        "low bits": lambda: _chi2_fails(np.bincount((x * 2.0 ** bits).astype(np.int64) & 255, minlength=256)),
        # neighbours: words of one counter value, neighbouring counters in a row, neighbouring
        # rows (sequences) at one position, and one position in two successive draws
        "words of one counter": lambda: _pairs_fail(u[:, 0::per], u[:, 1::per]),
        "neighbouring counters": lambda: _pairs_fail(u[:, 0::pair], u[:, per::pair]),
        "neighbouring rows": lambda: _pairs_fail(u[0::2], u[1::2]),
        "successive draws": lambda: _pairs_fail(u, u_next),
    }
    return [name for name, fails in checks.items() if fails()]


@pytest.mark.parametrize("dtype,per", [(np.float32, 4), (np.float64, 2)])
def test_uniform_and_independent(dtype, per):
    s = philox.rng((20240229, 17, 3), first_row=1000)
    u, u_next = host(s.random((ROWS, COLS), dtype)), host(s.random((ROWS, COLS), dtype))
    assert u.dtype == dtype and 0.0 <= min(u.min(), u_next.min()) and max(u.max(), u_next.max()) < 1.0
    assert failed_checks(u, u_next, per) == []


def test_the_uniformity_checks_catch_broken_generators():
    """Each check fails on a generator broken in the way it looks for (and the correct
    numbers they start from pass them all, test_uniform_and_independent)."""
    s = philox.rng(5)
    u, u_next = host(s.random((ROWS, COLS), np.float32)), host(s.random((ROWS, COLS), np.float32))
    same_words = u.copy()
    same_words[:, 1::4] = u[:, 0::4]  # a counter's second word repeats its first
    broken = {
        "ks": (u ** np.float32(1.02), u_next),  # skewed by about 1% towards 0
        "bins": (np.where(u < 0.5, u, u ** np.float32(0.9)), u_next),  # the upper half's density tilted by ~10%
        "low bits": (np.floor(u * 2 ** 16) / np.float32(2 ** 16), u_next),  # 16 random bits, not 24
        "words of one counter": (same_words, u_next),
        "neighbouring counters": (np.tile(u[:, :4], (1, COLS // 4)), u_next),  # the counter ignored in a row
        "neighbouring rows": (np.repeat(u[0::2], 2, axis=0), u_next),  # row b + 1 a copy of row b
        "successive draws": (u, u),  # the draw number ignored
    }
    for name, (a, b) in broken.items():
        assert name in failed_checks(a.astype(np.float32), b.astype(np.float32), 4), name


@pytest.mark.skipif(not backend.cupy_available(), reason="no GPU")
def test_device_kernel_equals_its_plain_twin():
    old = backend.name
    try:
        backend.use("cupy")
        for dtype in (np.float32, np.float64):
            s = philox.rng((5, 6), first_row=3)
            got = host(s.random((4, 3, 5), dtype))
            want = philox.philox_uniform_plain((4, 3, 5), dtype, s.key32, 0, 3)
            assert np.array_equal(got, want)
    finally:
        backend.use(old)
