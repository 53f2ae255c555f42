"""The speed paths of minibert/kernels.py against their plain twins and independent references.

On the host: the float32 normal CDF behind the exact GELU (a rational erfc in float32
arithmetic, run in cache-sized blocks) against scipy's float64 ndtr; `gelu_exact` and
`gelu_exact_backward` against the plain erf formulas; `adamw_update_plain` against the
textbook AdamW step with its bias corrections written out; the row scatter-add against
np.add.at; the softmax pair (scale, mask) against softmax written out in float64. On a CUDA
machine (CuPy with a GPU): the fused CUDA kernels (GELU forward and backward, AdamW, the
softmax row kernels) and the device's float32 erfc route against the plain array code on the
same device, and the fused GELU under the float64 gradient check. The device tests skip
cleanly when CuPy or a GPU is absent.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import erf as np_erf, ndtr

from minibert import backend, cuda_kernels, host, kernels, layers, philox
from minibert.gradcheck import check_gradients

gpu = pytest.mark.skipif(not backend.cupy_available(), reason="CuPy with a CUDA GPU is not available")


def test_float32_normal_cdf_is_at_float32_rounding_level():
    x = np.linspace(-14, 14, 1_400_001).astype(np.float32)  # more than one block
    ref = ndtr(x.astype(np.float64))  # independent, float64
    got = kernels.normal_cdf(backend.to_device(x))
    assert got.dtype == np.float32
    got = backend.to_host(got).astype(np.float64)
    # the device's expf is documented within 2 ulp (CUDA C++ Programming Guide, "Mathematical
    # Functions"), NumPy's float32 exp within 1: the device gets its documented bound
    device = backend.name == "cupy"
    assert np.abs(got - ref).max() < (5e-7 if device else 3e-7)  # a few float32 ulps of values near 1
    small = np.abs(x) <= 4
    assert (np.abs(got - ref) / ref)[small].max() < 3e-6  # relative, into the lower tail
    # GELU's error relative to its scale is no worse than the float32 erf route it replaced
    gelu_ref = x.astype(np.float64) * ref
    ours = np.abs(x.astype(np.float64) * got - gelu_ref) / np.maximum(np.abs(x), 1)
    old = x * (0.5 * (1 + np_erf(x * np.float32(1 / math.sqrt(2)))))  # float32 throughout
    old_err = np.abs(old.astype(np.float64) - gelu_ref) / np.maximum(np.abs(x), 1)
    if device:
        assert ours.max() < 3e-7
    else:
        assert ours.max() <= old_err.max() * 1.05 and ours.max() < 1.2e-7


def test_float32_normal_cdf_edges():
    x = backend.to_device(np.array([-np.inf, -1e30, -40.0, 0.0, 40.0, 1e30, np.inf], dtype=np.float32))
    got = backend.to_host(kernels.normal_cdf(x))
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0])
    assert np.isnan(backend.to_host(kernels.normal_cdf(backend.to_device(np.array([np.nan], np.float32)))))[0]


def test_float64_normal_cdf_is_the_plain_formula():
    x = np.linspace(-9, 9, 1001)
    np.testing.assert_allclose(backend.to_host(kernels.normal_cdf(backend.to_device(x))), ndtr(x),
                               rtol=1e-13, atol=1e-16)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), K=st.integers(1, 40), scale=st.sampled_from([1.0, 0.125, 0.5]),
       masked=st.floats(0, 1), extreme=st.booleans(), seed=st.integers(0, 10**6))
def test_softmax_matches_the_float64_reference(rows, K, scale, masked, extreme, seed):
    """kernels.softmax / softmax_backward (whichever variant the backend picks), float32,
    against softmax written out in float64 here; includes fully masked rows and [-1000, 1]."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, 2, K)) * 3).astype(np.float32)
    if extreme:
        x[0, 0, :2] = [-1000.0, 1.0][:min(K, 2)]
    bias = np.where(rng.random((rows, 1, K)) < masked, -10000.0, 0.0).astype(np.float32)  # some rows fully masked
    dout = rng.standard_normal(x.shape).astype(np.float32)  # random upstream, never ones
    # the scaled, masked scores as float32 holds them (a fully masked row keeps x's
    # differences only to float32's spacing near -10000), then softmax in float64
    z = (x * np.float32(scale) + bias).astype(np.float64)
    ref = np.exp(z - z.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    dref = scale * ref * (dout - (dout * ref).sum(-1, keepdims=True))
    xd = backend.to_device(x)
    y = kernels.softmax(xd, scale, backend.to_device(bias))
    np.testing.assert_array_equal(backend.to_host(xd), x)  # x is left as it was
    dx = kernels.softmax_backward(y, backend.to_device(dout), scale)
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(backend.to_host(y), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.to_host(dx), dref, rtol=1e-4, atol=1e-5)


def test_softmax_overwrite_reuses_the_scores_and_equals_the_copy():
    rng = np.random.default_rng(1)
    x = backend.to_device(rng.standard_normal((3, 4, 9)).astype(np.float32))
    bias = backend.to_device(np.zeros((3, 1, 9), np.float32))
    keep = kernels.softmax_plain(x, 0.5, bias)
    y = kernels.softmax_plain(x, 0.5, bias, overwrite=True)
    assert y is x
    np.testing.assert_array_equal(backend.to_host(y), backend.to_host(keep))


@pytest.mark.skipif(backend.name != "numpy", reason="host threads: the device runs one cuBLAS call")
@settings(max_examples=25, deadline=None)
@given(lead=st.lists(st.integers(1, 5), min_size=1, max_size=2), M=st.integers(1, 9), K=st.integers(1, 9),
       N=st.integers(1, 9), strided_out=st.booleans(), seed=st.integers(0, 10**6))
def test_batched_matmul_split_over_threads_is_bitwise_matmul(lead, M, K, N, strided_out, seed):
    """The stack split between host threads (one BLAS thread each) gives exactly np.matmul,
    into a new array or a strided view like attention's dq/dk."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((*lead, M, K)).astype(np.float32)
    b = rng.standard_normal((*lead, N, K)).astype(np.float32).swapaxes(-1, -2)  # a transposed view, as k^T
    ref = np.matmul(a, b)
    if strided_out:
        buf = np.zeros((*lead, N, M, 2), np.float32)
        out = buf[..., 0].swapaxes(-1, -2)  # (..., M, N), strided
        got = backend.batched_matmul(backend.to_device(a), backend.to_device(b), out=out)
        np.testing.assert_array_equal(backend.to_host(out), ref)
    else:
        got = backend.batched_matmul(backend.to_device(a), backend.to_device(b))
    np.testing.assert_array_equal(backend.to_host(got), ref)


@settings(max_examples=25, deadline=None)
@given(M=st.integers(1, 300), K=st.integers(1, 40), N=st.integers(1, 40), seed=st.integers(0, 10**6))
def test_matmul_and_pair_split_over_threads_equal_matmul(M, K, N, seed):
    """The linear layers' GEMMs, rows split between host threads (one BLAS thread each) and
    dx/dw run at once: the same products as np.matmul (to float32 rounding: the split may
    change which BLAS kernel sums a row), and the same on every call."""
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
    dy = rng.standard_normal((M, N)).astype(np.float32)
    got = backend.to_host(backend.matmul(backend.to_device(x), backend.to_device(w)))
    np.testing.assert_allclose(got, x.astype(np.float64) @ w, rtol=1e-4, atol=1e-4 * math.sqrt(K))
    np.testing.assert_array_equal(got, backend.to_host(backend.matmul(backend.to_device(x), backend.to_device(w))))
    dx, dw = backend.matmul_pair(backend.to_device(dy), backend.to_device(w).T, backend.to_device(x).T,
                                 backend.to_device(dy))
    np.testing.assert_allclose(backend.to_host(dx), dy.astype(np.float64) @ w.T, rtol=1e-4, atol=1e-4 * math.sqrt(N))
    np.testing.assert_allclose(backend.to_host(dw), x.T.astype(np.float64) @ dy, rtol=1e-4, atol=1e-4 * math.sqrt(M))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3 * host.BLOCK), seed=st.integers(0, 10**6))
def test_blockwise_equals_whole_array(n, seed):
    x = backend.to_device(np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 3)
    whole = kernels.normal_cdf_float32(x)
    np.testing.assert_array_equal(backend.to_host(host.blockwise(kernels.normal_cdf_float32, x)),
                                  backend.to_host(whole))


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 2 * host.BLOCK + 7), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 10**6))
def test_gelu_exact_matches_its_plain_twin(n, dtype, seed):
    """Whichever variant the current backend picks, against the plain formula in float64."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 4).astype(dtype)
    if n > 1:
        x[0] = -30.0  # deep in the lower tail, where 1 + erf cancels
    dout = rng.standard_normal(n).astype(dtype)  # random upstream, never ones
    ref = backend.to_host(kernels.gelu_exact_plain(backend.to_device(x.astype(np.float64))))
    dref = backend.to_host(kernels.gelu_exact_backward_plain(backend.to_device(x.astype(np.float64)),
                                                             backend.to_device(dout.astype(np.float64))))
    out = kernels.gelu_exact(backend.to_device(x))
    dx = kernels.gelu_exact_backward(backend.to_device(x), backend.to_device(dout))
    assert out.dtype == dtype and dx.dtype == dtype and out.shape == dx.shape == (n,)
    scale = np.maximum(np.abs(x), 1).astype(np.float64)
    tol = 2e-7 if dtype == np.float32 else 1e-13  # float32: a couple of ulps of GELU's scale
    assert (np.abs(backend.to_host(out) - ref) / scale).max() <= tol
    assert (np.abs(backend.to_host(dx) - dref) / (scale * np.maximum(np.abs(dout), 1e-30))).max() <= 2.5 * tol


def test_adamw_update_plain_is_the_textbook_step():
    """adamw_update_plain with optim.AdamW's folded scalars equals AdamW written out with
    m_hat and v_hat (Loshchilov & Hutter, Algorithm 2), three steps in float64."""
    rng = np.random.default_rng(0)
    lr, wd, b1, b2, eps = 1e-2, 0.1, 0.9, 0.999, 1e-6
    p0 = rng.standard_normal((4, 3))
    p, m, v = backend.to_device(p0.copy()), backend.to_device(np.zeros((4, 3))), backend.to_device(np.zeros((4, 3)))
    rp, rm, rv = p0.copy(), np.zeros((4, 3)), np.zeros((4, 3))
    for t in (1, 2, 3):
        g = rng.standard_normal((4, 3))
        bc2_sqrt = math.sqrt(1 - b2 ** t)
        kernels.adamw_update(p, backend.to_device(g), m, v, 1 - lr * wd, b1, b2,
                             lr * bc2_sqrt / (1 - b1 ** t), eps * bc2_sqrt)
        rp = rp * (1 - lr * wd)
        rm = b1 * rm + (1 - b1) * g
        rv = b2 * rv + (1 - b2) * g * g
        rp = rp - lr * (rm / (1 - b1 ** t)) / (np.sqrt(rv / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(backend.to_host(p), rp, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.to_host(m), rm, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.to_host(v), rv, rtol=1e-12, atol=1e-14)


@settings(max_examples=20, deadline=None)
@given(N=st.integers(0, 50), V=st.integers(1, 9), H=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_row_scatter_add_matches_add_at(N, V, H, seed):
    rng = np.random.default_rng(seed)
    idx, vals = rng.integers(0, V, N), rng.standard_normal((N, H))
    ref = rng.standard_normal((V, H))
    a = backend.to_device(ref.copy())
    np.add.at(ref, idx, vals)
    backend.scatter_add(a, backend.to_device(idx), backend.to_device(vals))
    np.testing.assert_allclose(backend.to_host(a), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(backend.name != "numpy", reason="the host's path")
@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 2000), V=st.integers(1, 3000), H=st.integers(1, 300), hot=st.integers(0, 2000),
       dtype=st.sampled_from(["float32", "float64"]), zero_start=st.booleans(), seed=st.integers(0, 10**6))
def test_row_scatter_add_has_the_bits_of_one_reduceat_over_every_run(N, V, H, hot, dtype, zero_start, seed):
    """The host adds runs of one row directly and sums only the longer runs with reduceat;
    the result must be, bit for bit, the sort and one reduceat over every run (written out
    here), the order whose float32 sums the default run's checkpoints were made with."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, N)
    idx[:min(hot, N)] = rng.integers(0, min(3, V), min(hot, N))  # a few ids repeated many times, as [PAD] and '.'
    vals = (rng.standard_normal((N, H)) * np.exp(3 * rng.standard_normal((N, 1)))).astype(dtype)
    start = np.zeros((V, H), dtype) if zero_start else rng.standard_normal((V, H)).astype(dtype)
    order = np.argsort(idx, kind="stable")
    s = idx[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ref = start.copy()
    ref[s[starts]] += np.add.reduceat(vals[order], starts, axis=0)
    got = backend.scatter_add(start.copy(), idx, vals)
    assert np.array_equal(got, ref) and np.array_equal(np.signbit(got), np.signbit(ref))


@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 3000), V=st.integers(1, 40), H=st.integers(1, 300), dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 10**6))
def test_row_scatter_add_is_deterministic(N, V, H, dtype, seed):
    """The same bits on every call, on both backends: on the device each row's values are
    summed in the order they come, then added once (atomics would add in any order, and a
    resumed run would drift from the run it resumes); the host sums each row's run with
    NumPy's add.reduceat, whose float32 sums are not always sequential."""
    rng = np.random.default_rng(seed)
    idx, vals = rng.integers(0, V, N), rng.standard_normal((N, H)).astype(dtype)
    start = rng.standard_normal((V, H)).astype(dtype)
    ref = start.copy()
    for u in np.unique(idx):
        acc = np.zeros(H, dtype)
        for j in np.flatnonzero(idx == u):  # in index order
            acc += vals[j]
        ref[u] += acc
    got = []
    for _ in range(2):
        a = backend.to_device(start.copy())
        backend.scatter_add(a, backend.to_device(idx), backend.to_device(vals))
        got.append(backend.to_host(a))
    np.testing.assert_array_equal(got[0], got[1])
    if backend.name == "cupy":
        np.testing.assert_array_equal(got[0], ref)
    else:
        tol = dict(rtol=1e-5, atol=1e-4) if dtype == "float32" else dict(rtol=1e-12, atol=1e-11)
        np.testing.assert_allclose(got[0], ref, **tol)


# ----------------------------------------------------------------------------------------
# the device variants (CuPy with a GPU only)


@pytest.fixture
def on_cupy():
    before = backend.name
    backend.use("cupy")
    yield backend.xp
    backend.use(before)
    kernels.use_fused = True


@gpu
@pytest.mark.parametrize("fused", [True, False])  # False: the float32 erfc route on the device
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_gelu_matches_plain(on_cupy, dtype, fused):
    xp = on_cupy
    kernels.use_fused = fused
    x = xp.asarray(np.random.default_rng(0).standard_normal(100_003) * 4, dtype=dtype)
    dout = xp.asarray(np.random.default_rng(1).standard_normal(100_003), dtype=dtype)
    x64, dout64 = x.astype(xp.float64), dout.astype(xp.float64)
    tol = dict(rtol=2e-6, atol=3e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(xp.asnumpy(kernels.gelu_exact(x)), xp.asnumpy(kernels.gelu_exact_plain(x64)), **tol)
    np.testing.assert_allclose(xp.asnumpy(kernels.gelu_exact_backward(x, dout)),
                               xp.asnumpy(kernels.gelu_exact_backward_plain(x64, dout64)), **tol)


@gpu
def test_fused_gelu_gradient_check(on_cupy):
    xp = on_cupy
    x = xp.asarray(np.random.default_rng(2).standard_normal(17) * 3)
    dout = xp.asarray(np.random.default_rng(3).standard_normal(17))  # random, never ones
    dx = kernels.gelu_exact_backward(x, dout)
    check_gradients(lambda: float((kernels.gelu_exact(x) * dout).sum()), {"x": x}, {"x": dx})


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adamw_matches_plain(on_cupy, dtype):
    xp = on_cupy
    r = np.random.default_rng(4)
    host = {k: r.standard_normal((7, 5)).astype(dtype) for k in ("p", "m", "v")}
    host["v"] = np.abs(host["v"])  # a second moment is never negative
    fused = {k: xp.asarray(a.copy()) for k, a in host.items()}
    plain = {k: xp.asarray(a.copy()) for k, a in host.items()}
    for t in range(1, 6):
        g = xp.asarray(r.standard_normal((7, 5)).astype(dtype))
        decay = 1.0 - 1e-2 * 0.1 if t % 2 else 1.0  # with and without weight decay
        scalars = (decay, 0.9, 0.999, 1e-2 * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t), 1e-6)
        kernels.adamw_update(fused["p"], g, fused["m"], fused["v"], *scalars)
        kernels.adamw_update_plain(plain["p"], g, plain["m"], plain["v"], *scalars)
    # float32: a few ulps (the complements 1 - b reach the kernel as float64-rounded scalars;
    # 1 - b2 taken in float32 was 1.3e-5 relative off)
    tol = dict(rtol=3e-6, atol=3e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for k in host:
        np.testing.assert_allclose(xp.asnumpy(fused[k]), xp.asnumpy(plain[k]), **tol)


@gpu
@pytest.mark.parametrize("K", [1, 7, 128, 300, 513])  # one element, under and over a block of 256 threads
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_softmax_matches_plain(on_cupy, dtype, K):
    xp = on_cupy
    r = np.random.default_rng(5)
    B, A, T = 3, 2, 4
    x = xp.asarray(r.standard_normal((B, A, T, K)) * 4, dtype=dtype)
    bias = xp.asarray(np.where(r.random((B, 1, 1, K)) < 0.3, -10000.0, 0.0), dtype=dtype)
    bias[1] = -10000.0  # a fully masked row
    dout = xp.asarray(r.standard_normal((B, A, T, K)), dtype=dtype)  # random upstream, never ones
    tol = dict(rtol=2e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
    for b in (bias, None, bias[:1]):  # per-sequence mask, none, one mask for all
        y = kernels.softmax(x, 0.125, b)
        np.testing.assert_allclose(xp.asnumpy(y), xp.asnumpy(kernels.softmax_plain(x, 0.125, b)), **tol)
        np.testing.assert_allclose(xp.asnumpy(kernels.softmax_backward(y, dout, 0.125)),
                                   xp.asnumpy(kernels.softmax_backward_plain(y, dout, 0.125)), **tol)


@gpu
@pytest.mark.parametrize("H", [1, 7, 128, 300, 768])  # under and over a block of 256 threads
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_layernorm_matches_plain(on_cupy, dtype, H):
    xp = on_cupy
    r = np.random.default_rng(7)
    x = xp.asarray(r.standard_normal((3, 5, H)) * 3 + 10, dtype=dtype)  # a large mean
    w, b = xp.asarray(r.standard_normal(H), dtype=dtype), xp.asarray(r.standard_normal(H), dtype=dtype)
    dout = xp.asarray(r.standard_normal((3, 5, H)), dtype=dtype)  # random upstream, never ones
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    got, want = kernels.layernorm(x, w, b, 1e-12), kernels.layernorm_plain(x, w, b, 1e-12)
    for g, e in zip(got, want):
        assert g.shape == e.shape
        np.testing.assert_allclose(xp.asnumpy(g), xp.asnumpy(e), **tol)
    gb = kernels.layernorm_backward(dout, x, w, want[1], want[2])
    eb = kernels.layernorm_backward_plain(dout, x, w, want[1], want[2])
    for g, e in zip(gb, eb):
        np.testing.assert_allclose(xp.asnumpy(g), xp.asnumpy(e), **tol)


@gpu
@pytest.mark.parametrize("shape", [(3, 5), (7, 2, 9), (16, 4, 33, 33), (1,), (6, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_dropout_equals_plain_bit_for_bit(on_cupy, shape, dtype):
    """The fused pass draws the generator's own numbers: the same mask and output bits as
    rng.random followed by the array code, and the same draw count afterwards."""
    xp = on_cupy
    x = xp.asarray(np.random.default_rng(1).standard_normal(shape).astype(dtype))

    def run(f):
        s = philox.rng((4, 2), first_row=5)
        s.random((2, 3), dtype)  # an earlier dropout site: the draw number moves on
        out, keep = f(x, 0.1, s)
        return xp.asnumpy(out), xp.asnumpy(keep), s.draws
    (fo, fk, fd), (po, pk, pd) = run(kernels.dropout), run(kernels.dropout_plain)
    assert fo.dtype == po.dtype == dtype and fk.dtype == pk.dtype == bool and fd == pd == 2
    assert np.array_equal(fk, pk) and np.array_equal(fo, po)
    assert np.array_equal(np.signbit(fo), np.signbit(po))  # dropped negatives stay -0.0
    if x.size > 100:
        assert 0.8 < fk.mean() < 0.97


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_batched_matmul_reads_views_where_they_lie(on_cupy, dtype):
    """cuBLAS's strided batched GEMM on transposed and sliced operands, and into a slice
    of a bigger output, against CuPy's matmul of C-ordered copies; a view whose batch
    axes need two strides goes through batched_operand's copy or the temporary output."""
    xp = on_cupy
    r = np.random.default_rng(3)
    B, A, T, D = 3, 2, 7, 4
    qkv = xp.asarray(r.standard_normal((B, T, 3, A, D)), dtype=dtype)
    heads = qkv.transpose(2, 0, 3, 1, 4)  # (3, B, A, T, D) view: batch axes with two strides
    h = backend.batched_operand(heads)
    assert cuda_kernels.gemm_layout(heads[0]) is None and cuda_kernels.gemm_layout(h[0]) is not None
    q, k, v = h[0], h[1], h[2]
    p = xp.asarray(r.standard_normal((B, A, T, T)), dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for a, b in [(q, k.transpose(0, 1, 3, 2)), (p, v), (p.transpose(0, 1, 3, 2), v), (p, heads[1]),
                 (k.transpose(0, 1, 3, 2), p.transpose(0, 1, 3, 2))]:
        want = xp.matmul(xp.ascontiguousarray(a), xp.ascontiguousarray(b))
        np.testing.assert_allclose(xp.asnumpy(backend.batched_matmul(a, b)), xp.asnumpy(want), **tol)
    big = xp.zeros((2, B, A, T, D), dtype=dtype)  # out: a C-ordered slice, then a strided view
    backend.batched_matmul(p, k, out=big[1])
    np.testing.assert_allclose(xp.asnumpy(big[1]), xp.asnumpy(xp.matmul(p, k)), **tol)
    assert not xp.asnumpy(big[0]).any()
    dqkv = xp.zeros((B, T, 3, A, D), dtype=dtype)
    backend.batched_matmul(p, q, out=dqkv.transpose(2, 0, 3, 1, 4)[0])
    np.testing.assert_allclose(xp.asnumpy(dqkv[:, :, 0].transpose(0, 2, 1, 3)), xp.asnumpy(xp.matmul(p, q)), **tol)


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_sum_rows_is_the_column_sum(on_cupy, dtype):
    xp = on_cupy
    a = xp.asarray(np.random.default_rng(4).standard_normal((1000, 37)), dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    got = kernels.sum_rows(a)
    assert got.shape == (37,) and got.dtype == dtype
    np.testing.assert_allclose(xp.asnumpy(got), xp.asnumpy(a).astype(np.float64).sum(axis=0), **tol)
    np.testing.assert_array_equal(xp.asnumpy(kernels.sum_rows(a)), xp.asnumpy(got))  # the same on every call


@gpu
def test_fused_softmax_gradient_check(on_cupy):
    xp = on_cupy
    x = xp.asarray(np.random.default_rng(6).standard_normal((2, 3, 5)))
    bias = xp.asarray(np.array([[[0.0, 0, -10000, 0, 0]], [[0, 0, 0, 0, 0]]]))
    dout = xp.asarray(np.random.default_rng(7).standard_normal((2, 3, 5)))  # random, never ones
    y, cache = layers.softmax_forward(x, 0.5, bias)
    (dx,) = layers.softmax_backward(dout, cache)
    check_gradients(lambda: float((layers.softmax_forward(x, 0.5, bias)[0] * dout).sum()), {"x": x}, {"x": dx})


def test_float32_normal_cdf_far_tails_without_overflow():
    """|x| is clamped before z * z, so even float32's largest values give 0 and 1 without an
    overflow warning (Phi(-1e30) and 1 - Phi(1e30) are far below float32's smallest value)."""
    x = np.array([-3e38, -1e30, -40.0, 40.0, 1e30, 3e38], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise"):  # exp underflowing to 0 is the right answer
        out = np.asarray(backend.to_host(kernels.normal_cdf_float32(backend.to_device(x))))
    np.testing.assert_array_equal(out, np.array([0, 0, 0, 1, 1, 1], dtype=np.float32))


def _softmax_reference(x, scale=1.0, bias=None):
    """softmax(x * scale + bias) over the last axis in float64, written out here."""
    z = np.asarray(x, dtype=np.float64) * scale + (0.0 if bias is None else np.asarray(bias, dtype=np.float64))
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("f", [kernels.softmax, kernels.softmax_plain])
def test_softmax_defaults_scale_and_overwrite(f):
    """The defaults are scale 1 and x left as it was; any scale (2 included) is applied;
    overwrite=True gives the result in x's own memory. Found by mutation testing."""
    x = np.random.default_rng(8).standard_normal((3, 4, 5))
    saved = x.copy()
    np.testing.assert_allclose(backend.to_host(f(backend.to_device(x))), _softmax_reference(x), rtol=1e-13)
    for scale in (2.0, 0.125):
        xd = backend.to_device(x)
        np.testing.assert_allclose(backend.to_host(f(xd, scale)), _softmax_reference(x, scale), rtol=1e-13)
        np.testing.assert_array_equal(backend.to_host(xd), saved)  # not overwritten by default
    xd = backend.to_device(x.copy())
    y = f(xd, 0.5, None, overwrite=True)
    np.testing.assert_allclose(backend.to_host(xd), _softmax_reference(saved, 0.5), rtol=1e-13)  # in place
    np.testing.assert_allclose(backend.to_host(y), _softmax_reference(saved, 0.5), rtol=1e-13)


@pytest.mark.parametrize("f", [kernels.softmax_backward, kernels.softmax_backward_plain])
def test_softmax_backward_default_scale_and_scale_two(f):
    """dx = scale * y * (dout - sum(dout * y)) against the formula written here, with the
    default scale (1) and scale 2. Found by mutation testing."""
    r = np.random.default_rng(9)
    y = _softmax_reference(r.standard_normal((2, 3, 6)))
    dout = r.standard_normal((2, 3, 6))  # random upstream, never ones
    ref = y * (dout - (dout * y).sum(axis=-1, keepdims=True))
    yd, dd = backend.to_device(y), backend.to_device(dout)
    np.testing.assert_allclose(backend.to_host(f(yd, dd)), ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(backend.to_host(f(yd, dd, 2.0)), 2.0 * ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shape", [(3, 5), (16, 4, 33, 33), (70_000,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_backward_equals_plain_bit_for_bit(shape, dtype):
    rng = np.random.default_rng(2)
    dout = backend.to_device(rng.standard_normal(shape).astype(dtype))
    keep = backend.to_device(rng.random(shape) >= 0.1)
    scale = dtype(1 / 0.9)
    got = backend.to_host(kernels.dropout_backward(dout, keep, scale))
    plain = backend.to_host(kernels.dropout_backward_plain(dout, keep, scale))
    want = np.where(backend.to_host(keep), backend.to_host(dout).astype(np.float64) * np.float64(scale), 0.0)
    assert got.dtype == plain.dtype == dtype and got.shape == shape
    assert np.array_equal(got, plain) and np.array_equal(np.signbit(got), np.signbit(plain))  # -0.0 kept
    np.testing.assert_allclose(got, want, rtol=2 * np.finfo(dtype).eps, atol=0)
