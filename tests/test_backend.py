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
