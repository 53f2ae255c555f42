"""The gradient checker itself must be able to fail."""
import numpy as np
import pytest

from minibert import backend, layers
from minibert.gradcheck import GradientCheckError, check_directional, check_gradients


def _setup():
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.standard_normal((3, 5)))
    w = backend.to_device(rng.standard_normal(5))
    b = backend.to_device(rng.standard_normal(5))
    dout = backend.to_device(rng.standard_normal((3, 5)))
    f = lambda: float((layers.layernorm_forward(x, w, b, 1e-5)[0] * dout).sum())
    return x, w, b, dout, f


def test_checker_passes_correct_backward():
    x, w, b, dout, f = _setup()
    dx, dw, db = layers.layernorm_backward(dout, layers.layernorm_forward(x, w, b, 1e-5)[1])
    check_gradients(f, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


def test_checker_fails_on_wrong_backward():
    """A classic layer-norm bug: forgetting that mean and rstd depend on x."""
    x, w, b, dout, f = _setup()
    _, (_, _, mean, rstd) = layers.layernorm_forward(x, w, b, 1e-5)
    wrong_dx = dout * w * rstd  # treats mean and rstd as constants
    with pytest.raises(GradientCheckError, match=r"'x' at index"):
        check_gradients(f, {"x": x}, {"x": wrong_dx})
    with pytest.raises(GradientCheckError, match="directional"):
        check_directional(f, {"x": x}, {"x": wrong_dx})


def test_checker_restores_inputs():
    x, w, b, dout, f = _setup()
    before = backend.to_host(x).copy()
    dx, dw, db = layers.layernorm_backward(dout, layers.layernorm_forward(x, w, b, 1e-5)[1])
    check_gradients(f, {"x": x}, {"x": dx})
    check_directional(f, {"x": x}, {"x": dx})
    assert (backend.to_host(x) == before).all()
