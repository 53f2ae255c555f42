"""The host's compiled float32 loops (minibert/cpu_kernels.py, Numba) against their plain
twins in kernels.py and independent float64 references.

Each test runs the op twice through its kernels.py name: with host.use_numba on (the
compiled loop, its rows shared between the host's two threads) and off (the array code),
and holds both to a float64 reference computed here. The dropout generator must equal the
plain Philox twin bit for bit; exp32 must never return a subnormal."""
import math

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from minibert import backend, host, kernels, philox

cpu_kernels = pytest.importorskip("minibert.cpu_kernels")  # needs Numba
pytestmark = pytest.mark.skipif(backend.name != "numpy", reason="host kernels")
F32_TINY = np.finfo(np.float32).tiny


def both(fn):
    """fn() with the compiled loops on, then off: (fast, plain)."""
    old = host.use_numba
    try:
        host.use_numba = True
        fast = fn()
        host.use_numba = False
        plain = fn()
    finally:
        host.use_numba = old
    return fast, plain


def test_exp32_accuracy_and_no_subnormals():
    x = np.concatenate([np.linspace(-80, 88, 400_001), np.random.default_rng(0).uniform(-5, 5, 10_000)])
    x = x.astype(np.float32)
    out = np.empty_like(x)
    loop = _exp_loop()  # exp32 is inlined into loops: test it through one
    loop(x, out)
    ref = np.exp(x.astype(np.float64))
    assert (np.abs(out - ref) / ref).max() < 6e-7  # a few float32 ulps
    below = np.array([-80.5, -87.0, -100.0, -1e4, -np.inf], np.float32)
    out_b = np.empty_like(below)
    loop(below, out_b)
    assert (out_b == 0.0).all()  # exactly zero, never subnormal


def _exp_loop():
    from numba import njit

    @njit(error_model="numpy")
    def loop(x, out):
        for i in range(x.size):
            out[i] = cpu_kernels.exp32(x[i])
    return loop


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 100_000), seed=st.integers(0, 10**6))
def test_gelu_fast_and_plain_agree_with_float64(n, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    x[0] = -30.0
    dout = rng.standard_normal(n).astype(np.float32)
    ref = kernels.gelu_exact_plain(x.astype(np.float64))
    dref = kernels.gelu_exact_backward_plain(x.astype(np.float64), dout.astype(np.float64))
    scale = np.maximum(np.abs(x), 1)
    (f_out, f_dx), (p_out, p_dx) = both(lambda: (kernels.gelu_exact(x), kernels.gelu_exact_backward(x, dout)))
    for out, dx in ((f_out, f_dx), (p_out, p_dx)):
        assert out.dtype == dx.dtype == np.float32
        assert (np.abs(out - ref) / scale).max() <= 2e-7
        assert (np.abs(dx - dref) / (scale * np.maximum(np.abs(dout), 1e-30))).max() <= 5e-7


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 300), H=st.integers(1, 70), seed=st.integers(0, 10**6),
       offset=st.sampled_from([0.0, 100.0]))
def test_layernorm_fast_and_plain_agree_with_float64(rows, H, seed, offset):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, H)) + offset).astype(np.float32)  # offset: a large mean
    w, b = rng.standard_normal(H).astype(np.float32), rng.standard_normal(H).astype(np.float32)
    dout = rng.standard_normal((rows, H)).astype(np.float32)
    x64, w64, b64, d64 = (a.astype(np.float64) for a in (x, w, b, dout))
    out_r, mean_r, rstd_r = kernels.layernorm_plain(x64, w64, b64, 1e-12)
    dx_r, dw_r, db_r = kernels.layernorm_backward_plain(d64, x64, w64, mean_r, rstd_r)

    def run():
        out, mean, rstd = kernels.layernorm(x, w, b, 1e-12)
        return (out, mean, rstd) + kernels.layernorm_backward(dout, x, w, mean, rstd)
    for out, mean, rstd, dx, dw, db in both(run):
        assert out.dtype == dx.dtype == dw.dtype == db.dtype == np.float32 and mean.shape == (rows, 1)
        # float32 rounds x - mean to eps32 |x|, so x_hat (and rstd, relatively) is off by
        # eps32 |x| rstd, out by that times |w|, dw by that times sum |dout|, and dx by that
        # times rstd |dout w| (a few terms of each): the bound when the mean is large and the
        # row nearly constant (H = 2: dx is exactly 0, and what remains is that rounding)
        cond = 30 * 6e-8 * np.abs(x64).max() * rstd_r.max()
        np.testing.assert_allclose(out, out_r, rtol=2e-4, atol=2e-4 * (1 + np.abs(b).max()) + cond * np.abs(w).max())
        np.testing.assert_allclose(rstd, rstd_r, rtol=1e-4 + cond)
        eps_dx = cond * rstd_r.max() * np.abs(d64 * w64).max()
        np.testing.assert_allclose(dx, dx_r, rtol=1e-3, atol=1e-3 * np.abs(dx_r).max() + eps_dx + 1e-6)
        np.testing.assert_allclose(db, db_r, rtol=1e-4, atol=1e-4 * math.sqrt(rows))
        np.testing.assert_allclose(dw, dw_r, rtol=1e-3, atol=1e-3 * math.sqrt(rows) + cond * np.abs(d64).sum(0).max())


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 5), A=st.integers(1, 3), T=st.integers(1, 40), seed=st.integers(0, 10**6),
       masked=st.booleans())
def test_softmax_fast_and_plain_agree_with_float64(B, A, T, seed, masked):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((B, A, T, T)) * 5).astype(np.float32)
    bias = None
    if masked:
        keep = rng.random((B, 1, 1, T)) < 0.7
        keep[..., 0] = True
        bias = np.where(keep, 0.0, -10000.0).astype(np.float32)  # (B, 1, 1, T) as attention's
    dout = rng.standard_normal(x.shape).astype(np.float32)
    z = x.astype(np.float64) * 0.25 + (0.0 if bias is None else bias.astype(np.float64))
    ref = np.exp(z - z.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    dref = 0.25 * ref * (dout - (dout * ref).sum(-1, keepdims=True))
    for y, dx in both(lambda: (kernels.softmax(x, 0.25, bias), kernels.softmax_backward(kernels.softmax(x, 0.25, bias),
                                                                                           dout, 0.25))):
        assert y.dtype == dx.dtype == np.float32
        np.testing.assert_allclose(y, ref, atol=3e-7)
        np.testing.assert_allclose(dx, dref, atol=2e-6 * (1 + np.abs(dout).max()))
        if masked:  # padded keys get exactly 0: no subnormal ever reaches the GEMMs after
            assert (y[np.broadcast_to(bias, y.shape) < 0] == 0).all()
            assert not ((y != 0) & (np.abs(y) < F32_TINY)).any()


def test_softmax_rows_with_nan_or_inf_stay_non_finite_and_the_rest_are_exact():
    """The compiled softmax takes its row max as an integer max of order-preserving keys;
    a NaN of either sign, or +inf, must still make its row non-finite (the training loop's
    non-finite check reads the loss that comes from it), -inf must count as a zero weight,
    and the other rows must equal the float max's result: signed zeros, huge, tiny and
    subnormal scores included, against the plain array code row by row."""
    x = np.random.default_rng(3).standard_normal((8, 37)).astype(np.float32)
    x[0, 5] = np.nan
    x[1, 7] = np.uint32(0xFFC00000).view(np.float32)  # a NaN with its sign bit set
    x[2, 3] = np.inf
    x[3, 9] = -np.inf
    x[4] = -0.0
    x[4, ::3] = 0.0
    x[5] = -3e38
    x[5, 11] = -2e38
    x[6] = np.float32(1e-40)  # subnormal
    x[6, 2] = -1e-40
    x[7] = -x[7] * 1e30
    with np.errstate(invalid="ignore"):  # the plain code's inf - inf, NaN - NaN
        fast, plain = both(lambda: kernels.softmax_lse(x))
    for y, lse in (fast, plain):
        assert np.isnan(y[:3]).all(axis=1).all() and np.isnan(lse[:3]).all()
        assert y[3, 9] == 0 and np.isfinite(y[3]).all()
    np.testing.assert_allclose(fast[0][3:], plain[0][3:], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(fast[1][3:], plain[1][3:], rtol=1e-6)
    np.testing.assert_array_equal(fast[0][4], np.full(37, 1 / 37, np.float32))  # a row of zeros of both signs


@settings(max_examples=20, deadline=None)
@given(R=st.integers(1, 60), K=st.integers(1, 3000), seed=st.integers(0, 10**6))
@example(R=4, K=149, seed=232)  # y = 0.99831 off by 7 ulps: past the old atol=3e-7
def test_softmax_lse_fast_and_plain_agree_with_float64(R, K, seed):
    x = (np.random.default_rng(seed).standard_normal((R, K)) * 8).astype(np.float32)
    x64 = x.astype(np.float64)
    m = x64.max(-1, keepdims=True)
    lse_ref = (m + np.log(np.exp(x64 - m).sum(-1, keepdims=True)))[:, 0]
    for y, lse in both(lambda: kernels.softmax_lse(x)):
        np.testing.assert_allclose(lse, lse_ref, rtol=1e-6, atol=1e-5)
        # relative: exp32's few ulps, the row sum's rounding and 1/s; over 400 random
        # cases the fast path's worst was 7.3 float32 epsilons (8.7e-7), near y = 1
        np.testing.assert_allclose(y, np.exp(x64 - lse_ref[:, None]), rtol=1.5e-6, atol=1e-10)


def test_adamw_fast_equals_plain_within_rounding():
    rng = np.random.default_rng(0)
    shape = (300, 257)  # split between the threads
    p0 = rng.standard_normal(shape).astype(np.float32)
    gs = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]

    def run():
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        for t, g in enumerate(gs, 1):
            s = math.sqrt(1 - 0.999 ** t)
            kernels.adamw_update(p, g, m, v, 1 - 1e-3 * 0.01, 0.9, 0.999, 1e-3 * s / (1 - 0.9 ** t), 1e-6 * s)
        return p, m, v
    fast, plain = both(run)
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    assert not np.array_equal(fast[0], p0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5), (7, 2, 9), (40, 4, 33, 33), (1,), (6, 1), (5, 64)])
def test_philox_compiled_equals_plain_bit_for_bit(shape, dtype):
    key = np.array([0x12345678, 0x9ABCDEF0], np.uint32)
    fast, plain = both(lambda: philox.philox_uniform(shape, dtype, key, 3, 11))
    assert fast.dtype == plain.dtype == dtype and fast.shape == shape
    assert np.array_equal(fast, plain)
    assert 0.0 <= fast.min() and fast.max() < 1.0


@pytest.mark.parametrize("shape", [(3, 5), (7, 2, 9), (16, 4, 33, 33), (1,), (4, 3, 128)])
def test_dropout_compiled_equals_plain_bit_for_bit(shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)

    def run():
        s = philox.rng((4, 2), first_row=5)
        s.random((2, 3), np.float32)  # an earlier dropout site: the draw number moves on
        out, keep = kernels.dropout(x, 0.1, s)
        return out, keep, s.draws
    (fo, fk, fd), (po, pk, pd) = both(run)
    assert fo.dtype == po.dtype == np.float32 and fk.dtype == pk.dtype == bool and fd == pd == 2
    assert np.array_equal(fk, pk) and np.array_equal(fo, po)
    assert np.array_equal(np.signbit(fo), np.signbit(po))  # dropped negatives stay -0.0, as the array code
    if x.size > 100:
        assert 0.8 < fk.mean() < 0.97

