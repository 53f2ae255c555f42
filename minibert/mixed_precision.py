"""Mixed precision: which precision a run trains in, and fp16's dynamic loss scaling.

    --precision fp32   every GEMM in float32 (the default)
    --precision bf16   GEMM operands rounded to bfloat16, float32 accumulation; nothing else changes
    --precision fp16   the same with IEEE half, plus dynamic loss scaling (LossScaler)

The rounding itself is in backend.py (backend.gemm_precision): it applies to the GEMMs
alone, so the weights the optimizer updates ("master weights"), the AdamW moments, the
gradients, layer norm, softmax, GELU and the losses all stay float32. Why each choice, and a
gradient underflowing in fp16 and surviving with scaling: docs/internals.md, "Mixed precision".

One fp16 step (torch.cuda.amp.GradScaler's rules, Micikevicius et al. 2018):

    loss gradient = S instead of 1 (model.backward(cache, dloss=S)): every gradient is S times larger,
                    so the small ones stay above fp16's underflow while they pass through the GEMMs
    grads = sum over micro-batches and processes (float32)
    grads *= 1 / S                              unscale (S is a power of 2: exact)
    finite = the global grad norm is finite     one device flag, never read on the host
    optimizer.step(grads, apply=finite)         skipped, parameters and moments untouched, when not
    S = S * 0.5 if not finite; S * 2 after 2,000 finite steps in a row

S and the count of finite steps are 0-d device arrays updated with xp.where, so a step
waits for nothing on the host. Both go into the checkpoint (state_dict), so resume is exact.
bf16 has float32's exponent range and needs no scaling.
"""
import contextlib
import warnings

from minibert import backend

PRECISIONS = backend.PRECISIONS  # "fp32", "bf16", "fp16"


class LossScaler:
    """Dynamic loss scaling with torch.cuda.amp.GradScaler's defaults: initial scale 2^16,
    doubled after `growth_interval` finite steps in a row, halved at a non-finite one (the
    step itself skipped by the optimizer). `scale` and `growth_tracker` are 0-d float32 /
    int64 arrays on the backend."""

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        xp = backend.xp
        if init_scale <= 0 or growth_factor <= 1.0 or not 0.0 < backoff_factor < 1.0 or growth_interval < 1:
            raise ValueError(f"LossScaler: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 and "
                             f"growth_interval >= 1, got {init_scale}, {growth_factor}, {backoff_factor}, "
                             f"{growth_interval}")
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.scale = xp.full((), init_scale, dtype=xp.float32)  # () S
        self.growth_tracker = xp.zeros((), dtype=xp.int64)  # () finite steps since the last change of S
        self.skipped = xp.zeros((), dtype=xp.int64)  # () steps skipped so far (for the log)

    def unscale(self, grads):
        """grads *= 1 / S in place (float32, as GradScaler: S's reciprocal in float64, then rounded)."""
        inv = (1.0 / self.scale.astype(backend.xp.float64)).astype(backend.xp.float32)  # ()
        for g in grads.values():
            g *= inv.astype(g.dtype)

    def update(self, finite):
        """After a step: finite (0-d bool) says whether its gradients were finite."""
        xp = backend.xp
        tracker = xp.where(finite, self.growth_tracker + 1, 0)  # ()
        grow = tracker >= self.growth_interval  # ()
        # S * growth after growth_interval finite steps, S * backoff at a non-finite one
        factor = xp.where(finite, xp.where(grow, self.growth_factor, 1.0), self.backoff_factor)  # ()
        self.scale = (self.scale * factor).astype(xp.float32)  # ()
        self.growth_tracker = xp.where(grow, 0, tracker).astype(xp.int64)  # ()
        self.skipped = self.skipped + xp.where(finite, 0, 1)  # ()

    def state_dict(self):
        """JSON-able state: the scale, the growth tracker and the skipped count (host reads)."""
        return {"scale": float(self.scale), "growth_tracker": int(self.growth_tracker), "skipped": int(self.skipped),
                "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval}

    def load_state_dict(self, state):
        xp = backend.xp
        for k in ("scale", "growth_tracker", "skipped"):
            if k not in state:
                raise ValueError(f"loss scaler state lacks {k!r}")
        self.scale = xp.full((), state["scale"], dtype=xp.float32)
        self.growth_tracker = xp.full((), state["growth_tracker"], dtype=xp.int64)
        self.skipped = xp.full((), state["skipped"], dtype=xp.int64)
        self.growth_factor = float(state.get("growth_factor", self.growth_factor))
        self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))


def scaler_for(precision):
    """A LossScaler for fp16, None for fp32 and bf16 (which need none)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown --precision {precision!r}: choose from {PRECISIONS}")
    return LossScaler() if precision == "fp16" else None


@contextlib.contextmanager
def run_precision(precision):
    """The context a training run's steps and evaluations run in: backend.gemm_precision, and
    for fp16 a filter for NumPy's overflow / invalid-value warnings, since a step whose scaled
    gradients overflow makes infs and NaNs on purpose (it is then skipped). A filter, not
    numpy.errstate: errstate is per thread, and the host's GEMMs run on threads of their own."""
    with backend.gemm_precision(precision), warnings.catch_warnings():
        if precision == "fp16":
            warnings.filterwarnings("ignore", "(overflow|invalid value) encountered", RuntimeWarning)
        yield


def optimizer_step(opt, grads, lr, norm, scaler):
    """opt.step(grads, lr) of a step whose gradients (unscaled) have the global norm `norm`:
    without a scaler, as it is; with one, skipped on the device when the norm is not finite,
    and the scale updated. Nothing is read on the host."""
    if scaler is None:
        opt.step(grads, lr=lr)
        return
    finite = backend.xp.isfinite(norm)  # () bool
    opt.step(grads, lr=lr, apply=finite)
    scaler.update(finite)
