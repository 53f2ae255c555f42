"""A small finite-difference gradient checker, for the tests and for readers.

The check a backward must pass: for a scalar f(x) = sum(forward(x) * dout) with a random
upstream gradient dout (never all ones: ones hide errors in softmax and layer norm, whose
gradients sum to zero along a row), the analytic gradient from the backward must match the
central difference

    df/dx_i ~ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)        error O(eps^2)

within a combined tolerance |analytic - numeric| <= atol + rtol * |numeric|. Run it in
float64: in float32 the rounding error of f swamps the difference quotient.

    check_gradients(f, {"x": x, "w": w}, {"x": dx, "w": dw})

perturbs the arrays in place (restoring them) and raises GradientCheckError, naming the
worst element, when any coordinate is off. For large tensors, `max_coords` samples
coordinates, and `check_directional` compares one random-direction derivative
d/dt f(x + t u) = <grad, u> that involves every coordinate at once.
"""
import numpy as np

from minibert import backend


class GradientCheckError(AssertionError):
    pass


def _flat_view(a):
    assert a.flags.c_contiguous, "gradient check needs contiguous arrays"
    return a.reshape(-1)


def numerical_gradient(f, arrays, eps=1e-6, max_coords=None, seed=0):
    """Central differences of scalar f() w.r.t. the given arrays, perturbed in place.

    Returns {name: (flat indices checked, numeric derivatives)} as host arrays.
    """
    rng = np.random.default_rng(seed)
    result = {}
    for name, a in arrays.items():
        flat = _flat_view(a)
        n = flat.size
        idx = np.arange(n) if max_coords is None or n <= max_coords else np.sort(rng.choice(n, max_coords, replace=False))
        num = np.empty(len(idx))
        for j, i in enumerate(idx):
            old = flat[i].item()
            flat[i] = old + eps
            fp = float(f())
            flat[i] = old - eps
            fm = float(f())
            flat[i] = old  # restore exactly
            num[j] = (fp - fm) / (2 * eps)
        result[name] = (idx, num)
    return result


def check_gradients(f, arrays, analytic, eps=1e-6, atol=1e-6, rtol=1e-5, max_coords=None, seed=0):
    """Raise GradientCheckError unless analytic[name] matches central differences of f()."""
    backend.check_keys(analytic, arrays, "analytic gradient names differ from the arrays'", GradientCheckError)
    numeric = numerical_gradient(f, arrays, eps, max_coords, seed)
    worst = None
    for name, (idx, num) in numeric.items():
        ana_full = backend.to_host(analytic[name])
        if tuple(ana_full.shape) != tuple(arrays[name].shape):
            raise GradientCheckError(f"{name}: gradient shape {ana_full.shape} != array shape {arrays[name].shape}")
        ana = np.asarray(ana_full, dtype=np.float64).reshape(-1)[idx]
        excess = np.abs(ana - num) - (atol + rtol * np.abs(num))
        if len(excess) and excess.max() > 0:
            j = int(excess.argmax())
            if worst is None or excess[j] > worst[0]:
                pos = np.unravel_index(idx[j], arrays[name].shape)
                worst = (excess[j], name, pos, ana[j], num[j], int((excess > 0).sum()), len(idx))
    if worst is not None:
        _, name, pos, a, n, bad, total = worst
        raise GradientCheckError(
            f"gradient mismatch in {name!r} at index {tuple(int(i) for i in pos)}: analytic {a:.10g}, "
            f"numeric {n:.10g} (|diff| {abs(a - n):.3g} > atol {atol:g} + rtol {rtol:g} * |numeric|); "
            f"{bad} of {total} checked coordinates of {name!r} fail")


def check_directional(f, arrays, analytic, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0):
    """Compare d/dt f(arrays + t u) at t=0 with sum <analytic, u> for a random direction u."""
    xp = backend.xp
    rng = np.random.default_rng(seed)
    dirs = {k: xp.asarray(rng.standard_normal(a.shape)).astype(a.dtype) for k, a in arrays.items()}
    saved = {k: a.copy() for k, a in arrays.items()}
    for k, a in arrays.items():
        a += eps * dirs[k]
    fp = float(f())
    for k, a in arrays.items():
        a -= 2 * eps * dirs[k]
    fm = float(f())
    for k, a in arrays.items():
        a[...] = saved[k]  # restore exactly
    num = (fp - fm) / (2 * eps)
    ana = sum(float((analytic[k] * dirs[k]).sum()) for k in arrays)
    if abs(ana - num) > atol + rtol * abs(num):
        raise GradientCheckError(f"directional derivative mismatch: analytic {ana:.10g}, numeric {num:.10g}")
    return ana, num
