"""The mean-squared-error pair of minibert/losses.py at its edges (the cross-entropy pair is
gradient-checked in test_layers.py over drawn shapes).

float64, a non-unit upstream gradient, references written here from the formula
loss = 1/B sum (pred - target)^2, dpred = 2 (pred - target) dloss / B.
"""
import numpy as np
import pytest

from minibert import backend, losses


def host(a):
    return np.asarray(backend.to_host(a))


@pytest.mark.parametrize("B", [0, 1, 5])
def test_mse_pair_matches_the_formula(B):
    rng = np.random.default_rng(B)
    pred, target = rng.standard_normal(B), rng.standard_normal(B)
    dloss = 0.37  # a non-unit upstream gradient
    loss, cache = losses.mse_forward(backend.to_device(pred), backend.to_device(target))
    (dpred,) = losses.mse_backward(dloss, cache)
    ref_loss = float(np.sum((pred - target) ** 2) / B) if B else 0.0  # no rows: a defined 0
    assert host(loss).shape == () and host(loss).dtype == np.float64
    assert float(loss) == pytest.approx(ref_loss, rel=1e-14, abs=0)
    assert host(dpred).shape == (B,)
    np.testing.assert_allclose(host(dpred), 2.0 * (pred - target) * dloss / max(B, 1), rtol=1e-14, atol=0)


def test_mse_of_no_rows_keeps_the_dtype():
    empty = backend.to_device(np.zeros(0, dtype=np.float32))
    loss, cache = losses.mse_forward(empty, empty)
    assert host(loss).dtype == np.float32 and float(loss) == 0.0
    assert host(losses.mse_backward(1.0, cache)[0]).shape == (0,)
