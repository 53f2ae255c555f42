"""The speed paths against the plain versions they replace.

On the host: the float32 normal CDF behind the exact GELU (a rational erfc in float32
arithmetic, run in cache-sized blocks) against scipy's float64 ndtr, and the row
scatter-add against np.add.at. On a CUDA machine (MINIBERT_BACKEND=cupy, or CuPy with a
GPU present): the fused CuPy kernels (GELU forward/backward, AdamW) against the plain
array code on the same device, and the fused GELU under the float64 gradient check. The
device tests skip cleanly when CuPy or a GPU is absent.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import erf as np_erf, ndtr

from minibert import backend, layers
from minibert.gradcheck import check_gradients
from minibert.optim import AdamW

gpu = pytest.mark.skipif(not backend.cupy_available(), reason="CuPy with a CUDA GPU is not available")


def test_float32_normal_cdf_is_at_float32_rounding_level():
    x = np.linspace(-14, 14, 1_400_001).astype(np.float32)  # more than one block
    ref = ndtr(x.astype(np.float64))  # independent, float64
    got = backend.to_host(layers.normal_cdf(backend.to_device(x))).astype(np.float64)
    assert layers.normal_cdf(backend.to_device(x)).dtype == np.float32
    assert np.abs(got - ref).max() < 3e-7  # a few float32 ulps of values near 1
    small = np.abs(x) <= 4
    assert (np.abs(got - ref) / ref)[small].max() < 3e-6  # relative, into the lower tail
    # GELU's error relative to its scale is no worse than the float32 erf route it replaced
    gelu_ref = x.astype(np.float64) * ref
    ours = np.abs(x.astype(np.float64) * got - gelu_ref) / np.maximum(np.abs(x), 1)
    old = x * (0.5 * (1 + np_erf(x * np.float32(1 / math.sqrt(2)))))  # float32 throughout
    old_err = np.abs(old.astype(np.float64) - gelu_ref) / np.maximum(np.abs(x), 1)
    assert ours.max() <= old_err.max() * 1.05 and ours.max() < 1.2e-7


def test_float32_normal_cdf_edges():
    x = backend.to_device(np.array([-np.inf, -1e30, -40.0, 0.0, 40.0, 1e30, np.inf], dtype=np.float32))
    got = backend.to_host(layers.normal_cdf(x))
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0])
    assert np.isnan(backend.to_host(layers.normal_cdf(backend.to_device(np.array([np.nan], np.float32)))))[0]


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3 * backend.BLOCK), seed=st.integers(0, 10**6))
def test_blockwise_equals_whole_array(n, seed):
    x = backend.to_device(np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 3)
    whole = layers._normal_cdf_float32(x)
    np.testing.assert_array_equal(backend.to_host(backend.blockwise(layers._normal_cdf_float32, x)),
                                  backend.to_host(whole))


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


# ----------------------------------------------------------------------------------------
# fused CuPy kernels (device only)


@pytest.fixture
def on_cupy():
    before = backend.name
    backend.use("cupy")
    yield backend.xp
    backend.use(before)
    backend.use_fused = True


def _plain(f, *args):
    backend.use_fused = False
    try:
        return f(*args)
    finally:
        backend.use_fused = True


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_gelu_matches_plain(on_cupy, dtype):
    xp = on_cupy
    x = xp.asarray(np.random.default_rng(0).standard_normal(100_003) * 4, dtype=dtype)
    dout = xp.asarray(np.random.default_rng(1).standard_normal(100_003), dtype=dtype)
    tol = dict(rtol=2e-6, atol=3e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    out, cache = layers.gelu_forward(x)
    ref, ref_cache = _plain(layers.gelu_forward, x)
    np.testing.assert_allclose(xp.asnumpy(out), xp.asnumpy(ref), **tol)
    np.testing.assert_allclose(xp.asnumpy(layers.gelu_backward(dout, cache)[0]),
                               xp.asnumpy(_plain(layers.gelu_backward, dout, ref_cache)[0]), **tol)


@gpu
def test_fused_gelu_gradient_check(on_cupy):
    xp = on_cupy
    x = xp.asarray(np.random.default_rng(2).standard_normal(17) * 3)
    dout = xp.asarray(np.random.default_rng(3).standard_normal(17))  # random, never ones
    (dx,) = layers.gelu_backward(dout, layers.gelu_forward(x)[1])
    check_gradients(lambda: float((layers.gelu_forward(x)[0] * dout).sum()), {"x": x}, {"x": dx})


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adamw_matches_plain(on_cupy, dtype):
    xp = on_cupy
    r = np.random.default_rng(4)
    shapes = {"w": (7, 5), "b": (5,)}
    host = {k: r.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = [{k: xp.asarray(r.standard_normal(s).astype(dtype)) for k, s in shapes.items()} for _ in range(5)]
    fused_p = {k: xp.asarray(v.copy()) for k, v in host.items()}
    plain_p = {k: xp.asarray(v.copy()) for k, v in host.items()}
    fused_opt, plain_opt = AdamW(fused_p, lr=1e-2, weight_decay=0.1), AdamW(plain_p, lr=1e-2, weight_decay=0.1)
    for g in grads:
        fused_opt.step(g)
        _plain(plain_opt.step, g)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for k in shapes:
        np.testing.assert_allclose(xp.asnumpy(fused_p[k]), xp.asnumpy(plain_p[k]), **tol)
        np.testing.assert_allclose(xp.asnumpy(fused_opt.v[k]), xp.asnumpy(plain_opt.v[k]), **tol)
