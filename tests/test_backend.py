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


def test_host_round_trip():
    """On NumPy, to_device is asarray: no copy when the array already is one of the asked
    dtype, a converted copy when another dtype is asked for, NumPy arrays from lists and
    scalars (0-d); to_host passes host arrays and Python scalars through untouched."""
    x = np.arange(6.0).reshape(2, 3)
    old = backend.name
    try:
        backend.use("numpy")
        assert backend.to_device(x) is x and backend.to_device(x, np.float64) is x
        x32 = backend.to_device(x, np.float32)
        assert type(x32) is np.ndarray and x32.dtype == np.float32 and x32.shape == (2, 3)
        assert np.array_equal(x32, x) and x.dtype == np.float64  # a copy: x keeps its dtype
        ids = backend.to_device([[1, 2], [3, 4]], np.int32)
        assert type(ids) is np.ndarray and ids.dtype == np.int32 and ids.tolist() == [[1, 2], [3, 4]]
        zero_d = backend.to_device(2.5, np.float32)
        assert type(zero_d) is np.ndarray and zero_d.shape == () and zero_d.dtype == np.float32 and zero_d == 2.5
        xt = x.T  # a view: passed through as it is, strides and all
        assert backend.to_host(x32) is x32 and backend.to_host(xt) is xt
        assert type(backend.to_host(2.5)) is float and backend.to_host(2.5) == 2.5
    finally:
        backend.use(old)


@pytest.mark.skipif(not backend.cupy_available(), reason="no GPU")
def test_device_round_trip():
    """On CuPy, to_device gives a CuPy array on the current device in the asked dtype (or
    the input's), and to_host a NumPy array with the same values, dtype and shape; host
    arrays and Python scalars come back from to_host as they are."""
    import cupy
    x = np.arange(6.0).reshape(2, 3)
    old = backend.name
    try:
        backend.use("cupy")
        for a, dtype in [(x, None), (x, np.float32), (x.T, None), (np.arange(5), np.int32), (np.float64(2.5), None),
                         (np.array(7, np.int64), np.float16)]:
            want = np.asarray(a, dtype=dtype)
            d = backend.to_device(a, dtype)
            assert isinstance(d, cupy.ndarray) and d.device.id == cupy.cuda.Device().id
            assert d.dtype == want.dtype and d.shape == want.shape
            h = backend.to_host(d)
            assert type(h) is np.ndarray and h.dtype == want.dtype and h.shape == want.shape
            assert np.array_equal(h, want)
        assert backend.to_host(x) is x and backend.to_host(2.5) == 2.5
    finally:
        backend.use(old)
