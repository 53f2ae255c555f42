"""The mean-squared-error pair of minibert/losses.py at its edges, and the cross-entropy's
divisor (count), far-apart rows and empty batch (the cross-entropy pair is
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


def _cross_entropy_reference(logits, targets):
    """Per-row -log softmax(logits)[target] in float64, with each row's own max subtracted."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return -(z[np.arange(len(z)), targets] - np.log(np.exp(z).sum(axis=1)))


@pytest.mark.parametrize("count", [None, 3, 10])
def test_cross_entropy_divides_the_sum_by_count(count):
    """count (the data-parallel global number of rows) divides the summed loss, and the
    gradient with it; None is the mean over this batch's R rows. Found by mutation testing."""
    r = np.random.default_rng(3)
    logits, targets = r.standard_normal((3, 5)) * 3, r.integers(0, 5, 3)
    loss, cache = losses.cross_entropy_forward(backend.to_device(logits), backend.to_device(targets), count)
    per_row = _cross_entropy_reference(logits, targets)
    n = 3 if count is None else count
    np.testing.assert_allclose(float(loss), per_row.sum() / n, rtol=1e-13)
    (dlogits,) = losses.cross_entropy_backward(0.7, cache)  # a non-unit upstream gradient
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    ref = z / z.sum(axis=1, keepdims=True)
    ref[np.arange(3), targets] -= 1
    np.testing.assert_allclose(backend.to_host(dlogits), 0.7 * ref / n, rtol=1e-12, atol=1e-15)


def test_cross_entropy_rows_far_apart_and_no_rows():
    """Each row subtracts its own max: rows at -1000 and +1000 in one batch stay finite; no
    rows gives a 0 of the logits' dtype. Found by mutation testing."""
    logits = np.array([[-1000.0, -1001.0, -1003.0], [1000.0, 999.0, 1002.0]])
    targets = np.array([1, 0])
    loss, _ = losses.cross_entropy_forward(backend.to_device(logits), backend.to_device(targets))
    np.testing.assert_allclose(float(loss), _cross_entropy_reference(logits, targets).mean(), rtol=1e-13)
    empty = backend.to_device(np.zeros((0, 4), dtype=np.float32))
    loss, cache = losses.cross_entropy_forward(empty, backend.to_device(np.zeros(0, dtype=np.int64)))
    assert loss.dtype == np.float32 and float(loss) == 0.0
    (d,) = losses.cross_entropy_backward(1.0, cache)
    assert d.shape == (0, 4) and d.dtype == np.float32
