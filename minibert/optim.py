"""AdamW and LAMB, the learning-rate schedule, gradient clipping and gradient accumulation.

Parameters and gradients are dicts name -> array of the current backend (``backend.xp``),
with the same keys and shapes. The optimizer updates the parameter arrays IN PLACE, so the
model keeps its references; it owns the moment buffers ``m`` and ``v`` (one of each per
parameter, same shape and dtype) and one flat scratch buffer per dtype, sized to the
largest parameter, that every element op writes into with ``out=``.

AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", Algorithm 2), in the
form ``torch.optim.AdamW`` computes, for step t = 1, 2, ...:

    p <- p * (1 - lr * wd)                     decoupled decay, applied before the update
    m <- b1 * m + (1 - b1) * g
    v <- b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)
    p <- p - lr * m_hat / (sqrt(v_hat) + eps)

One-dimensional parameters (biases, layer-norm weights and biases) get no weight decay by
default, as in BERT's original optimizer (``default_no_decay``, the one home of that rule).

LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76
minutes", Algorithm 2) keeps AdamW's moments and bias correction and scales each tensor's
step by a trust ratio (see ``LAMB`` for the conventions):

    r = m_hat / (sqrt(v_hat) + eps) + wd * p       decay inside the update (decayed tensors)
    trust = ||p|| / ||r||                          1 when either norm is 0
    p <- p - lr * trust * r

The schedule (``lr_at``) is linear warmup then a linear or cosine decay; ``clip_grad_norm`` follows
``torch.nn.utils.clip_grad_norm_`` (the squared norm is ``sum_of_squares``); ``accumulate``
averages micro-batch gradients.
"""
import math

import numpy

from minibert import backend, kernels


def check_same(params, grads, what="grads"):
    """Raise ValueError unless grads has exactly the keys and shapes of params."""
    backend.check_keys(grads, params, f"{what} keys differ from params")
    for k, p in params.items():
        if tuple(grads[k].shape) != tuple(p.shape):
            raise ValueError(f"{what}[{k!r}] has shape {tuple(grads[k].shape)}, param has {tuple(p.shape)}")


def default_no_decay(name, p):
    """Biases and layer-norm parameters (anything with fewer than 2 dims) get no decay."""
    return p.ndim < 2


class AdamW:
    """AdamW with decoupled weight decay, updating ``params`` in place.

    params: dict name -> array (numpy or cupy, whichever ``backend.xp`` is).
    no_decay: optional predicate ``(name, array) -> bool``; True means no weight decay for
    that parameter. Default: parameters with ndim < 2.
    """

    name = "adamw"  # written into the state's meta: a checkpoint of another optimizer is refused

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, no_decay=None):
        xp = backend.xp
        if not params:
            raise ValueError("AdamW needs at least one parameter")
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        self.params = params
        self.lr = float(lr)
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0  # step() calls so far (all of them steps taken, unless some were skipped: skipped)
        self.skipped = xp.zeros((), dtype=xp.int64)  # () of them skipped on the device (step's apply; fp16)
        pred = default_no_decay if no_decay is None else no_decay
        self.decay = {k: not pred(k, p) for k, p in params.items()}
        self.m = {k: xp.zeros_like(p) for k, p in params.items()}  # first moment, like p
        self.v = {k: xp.zeros_like(p) for k, p in params.items()}  # second moment, like p
        # one scratch buffer per dtype, as large as the largest parameter of that dtype;
        # each step reshapes a prefix of it, so no element op allocates
        sizes = {}
        for p in params.values():
            sizes[p.dtype] = max(sizes.get(p.dtype, 0), p.size)
        self._scratch = {dt: xp.empty(n, dtype=dt) for dt, n in sizes.items()}  # (max size,)

    def step(self, grads, lr=None, apply=None):
        """One AdamW update of every parameter from ``grads`` (same keys and shapes).

        lr, when given, replaces the base learning rate for this step (the schedule).
        apply, when given, is a 0-d device bool (fp16's "the gradients are finite",
        mixed_precision.py): where it is False the step is skipped on the device, with no host
        read: the parameters and moments keep their bits and the step does not count in the
        bias corrections (as torch's GradScaler, which does not call the optimizer then).
        """
        check_same(self.params, grads)
        if apply is not None:
            self._step_or_skip(grads, float(self.lr if lr is None else lr), apply)
            return
        lr = self.lr if lr is None else float(lr)
        b1, b2 = self.betas
        self.t += 1
        bc1 = 1.0 - b1 ** self.t
        bc2_sqrt = math.sqrt(1.0 - b2 ** self.t)
        # lr * m_hat / (sqrt(v_hat) + eps) = (lr * bc2_sqrt / bc1) * m / (sqrt(v) + eps * bc2_sqrt),
        # which folds both bias corrections into two scalars and saves a pass over the data
        step_size = lr * bc2_sqrt / bc1
        eps_hat = self.eps * bc2_sqrt
        decay_factor = 1.0 - lr * self.weight_decay
        for k, p in self.params.items():
            scratch = self._scratch[p.dtype][: p.size].reshape(p.shape)  # view, like p
            # one fused CUDA pass on the device; on the host a compiled loop (cpu_kernels.py, Numba)
            # in float32, the array code of kernels.adamw_update_plain in float64 or with MINIBERT_NUMBA=0
            kernels.adamw_update(p, grads[k], self.m[k], self.v[k], decay_factor if self.decay[k] else 1.0,
                                 b1, b2, step_size, eps_hat, scratch)

    def _step_or_skip(self, grads, lr, apply):
        """step() with a device flag: the same update where apply is True, none where False.
        The constants are 0-d device arrays (skippable_step), the gradients zeroed when skipped."""
        xp = backend.xp
        bc1, bc2, b1_step, b2_step, lr_step = self.skippable_step(grads, lr, apply)
        bc2_sqrt = xp.sqrt(bc2)  # ()
        step_size = lr_step * bc2_sqrt / bc1  # () as step() folds it; 0 when skipped
        eps_hat = self.eps * bc2_sqrt  # ()
        decay_factor = 1.0 - lr_step * self.weight_decay  # () 1 when skipped
        for k, p in self.params.items():
            scratch = self._scratch[p.dtype][: p.size].reshape(p.shape)  # view, like p
            kernels.adamw_update(p, grads[k], self.m[k], self.v[k], decay_factor if self.decay[k] else 1.0,
                                 b1_step, b2_step, step_size, eps_hat, scratch)

    def skippable_step(self, grads, lr, apply):
        """The constants of a step that apply (a 0-d device bool) may cancel, as 0-d device
        arrays, without a host read: (1 - b1^t, 1 - b2^t, b1, b2, lr) for a step taken, and
        for a skipped one b1 = b2 = 1 (the moments keep their values: m <- 1 m + 0 g) and
        lr 0 (the parameters keep theirs, no decay either). The gradients of a skipped step,
        which may hold inf or NaN, are zeroed in place (0 * inf would be NaN). self.t counts
        the calls, self.skipped the skipped ones; t in the bias corrections is their
        difference, the steps taken (at least 1, so that a skip before any step still has
        finite, unused, constants). state_dict saves that difference as t."""
        xp = backend.xp
        b1, b2 = self.betas
        self.t += 1
        self.skipped = self.skipped + xp.where(apply, 0, 1)  # ()
        t = xp.maximum(self.t - self.skipped, 1).astype(xp.float64)  # ()
        for g in grads.values():
            xp.copyto(g, 0, where=~apply)  # like g: zero when skipped
        return (1.0 - b1 ** t, 1.0 - b2 ** t, xp.where(apply, b1, 1.0), xp.where(apply, b2, 1.0),
                xp.where(apply, lr, 0.0))

    def state_dict(self):
        """The optimizer state as (tensors, meta).

        tensors: flat dict of host numpy arrays, "m.<name>" and "v.<name>" (copies).
        meta: JSON-able dict: t, lr (the base lr), betas, eps, weight_decay, and no_decay
        (sorted names of parameters without weight decay, checked again on load).
        """
        tensors = {}
        for k in self.params:
            tensors["m." + k] = numpy.array(backend.to_host(self.m[k]), copy=True)
            tensors["v." + k] = numpy.array(backend.to_host(self.v[k]), copy=True)
        meta = {
            "optimizer": self.name,
            "t": self.t - int(self.skipped),  # the steps taken (skipped ones, under fp16, not counted)
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "no_decay": sorted(k for k, d in self.decay.items() if not d),
        }
        return tensors, meta

    def load_state_dict(self, tensors, meta):
        """Restore the state written by ``state_dict`` exactly (bitwise).

        Raises ValueError, before changing anything, when names, shapes, dtypes or meta
        fields do not match this optimizer's parameters.
        """
        saved = meta.get("optimizer", "adamw")  # states written before the field were AdamW's
        if saved != self.name:
            raise ValueError(f"the optimizer state is {saved}'s, this run's optimizer is {self.name} "
                             f"(resume with --optimizer {saved}, or start a new run)")
        expected = {f"{prefix}.{k}" for k in self.params for prefix in ("m", "v")}
        backend.check_keys(tensors, expected, "optimizer state names differ")
        for key, a in tensors.items():
            p = self.params[key[2:]]
            if tuple(a.shape) != tuple(p.shape) or a.dtype != p.dtype:
                raise ValueError(
                    f"optimizer state {key!r} is {a.dtype}{tuple(a.shape)}, parameter is {p.dtype}{tuple(p.shape)}"
                )
        for field in ("t", "lr", "betas", "eps", "weight_decay"):
            if field not in meta:
                raise ValueError(f"optimizer meta lacks {field!r}")
        t = meta["t"]
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise ValueError(f"optimizer meta 't' must be an int >= 0, got {t!r}")
        if len(meta["betas"]) != 2:
            raise ValueError(f"optimizer meta 'betas' must have two values, got {meta['betas']!r}")
        if "no_decay" in meta:
            ours = sorted(k for k, d in self.decay.items() if not d)
            if sorted(meta["no_decay"]) != ours:
                raise ValueError(
                    f"saved no-decay parameters {sorted(meta['no_decay'])} differ from this optimizer's {ours}"
                )
        for k in self.params:
            self.m[k][...] = backend.to_device(tensors["m." + k])
            self.v[k][...] = backend.to_device(tensors["v." + k])
        self.t = t
        self.skipped = backend.xp.zeros((), dtype=backend.xp.int64)
        self.lr = float(meta["lr"])
        self.betas = (float(meta["betas"][0]), float(meta["betas"][1]))
        self.eps = float(meta["eps"])
        self.weight_decay = float(meta["weight_decay"])


def sums_of_squares(tensors):
    """name -> the sum of a ** 2 over the elements of tensors[name]: () float64 device arrays,
    never read on the host."""
    xp = backend.xp
    # a dot product per tensor, without a squared temporary
    return {k: xp.vdot(a.ravel(), a.ravel()).astype(xp.float64) for k, a in tensors.items()}  # each ()


def whole(sums):
    """LAMB's default sum_over_shards: the tensors are whole, their sums are the totals."""
    return sums


OPTIMIZERS = ("adamw", "lamb")


class LAMB(AdamW):
    """LAMB (You et al. 2019, Algorithm 2), updating ``params`` in place; AdamW's interface,
    moments and state format (meta "optimizer": "lamb", so that either refuses the other's).

    For step t = 1, 2, ..., per tensor p with gradient g:

        m <- b1 * m + (1 - b1) * g,  v <- b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * p    (wd 0 for no_decay tensors)
        trust = ||p|| / ||r||, or 1 when ||p|| = 0 or ||r|| = 0
        p <- p - lr * trust * r

    Conventions, against NVIDIA apex's FusedLAMB (the optimizer of DeepLearningExamples' BERT):
    - bias correction on (FusedLAMB's bias_correction=True; the paper's Algorithm 2 has none);
    - eps added to sqrt(v_hat), outside the root, as FusedLAMB does;
    - weight decay inside r, so it enters the trust ratio (FusedLAMB's adam_w_mode=True);
    - a zero norm gives trust 1 (FusedLAMB), e.g. a tensor initialised to zeros;
    - no_decay tensors (default_no_decay: ndim < 2) also take trust 1, i.e. a plain Adam
      step, as FusedLAMB with use_nvlamb=False does for its zero-decay group (in
      DeepLearningExamples: biases and LayerNorm); trust_all=True gives them the trust ratio
      too, the paper's rule and FusedLAMB's use_nvlamb=True;
    - no clipping inside: FusedLAMB divides the gradients by max(1, ||g|| / max_grad_norm)
      (global norm, max_grad_norm 1.0) before the moments; here the training loop's
      clip_grad_norm does that before step(), as for AdamW (the same rule up to its 1e-6);
    - no bound on ||p||: the paper's phi and torch_optimizer.Lamb clamp it (at 10); FusedLAMB
      and this class do not.

    Norms: each trusted tensor's sums of squares of p and r are taken as it is updated
    (sums_of_squares, () float64 on the device, keys "p.<name>" and "r.<name>"); then one call
    sum_over_shards(sums) -> sums gives the whole tensors' sums. The default (whole) returns
    them as they are; ZeRO-1 passes one that sums each rank's partial sums over the ranks in
    one all-reduce (zero.py). The norms and trust ratios stay on the device: no host read.
    """

    name = "lamb"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, no_decay=None,
                 trust_all=False, sum_over_shards=whole):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, no_decay=no_decay)
        self.trust_all = bool(trust_all)
        self.sum_over_shards = sum_over_shards

    def _direction(self, k, bc1, bc2, out):
        """out <- r for parameter k from its moments: m_hat / (sqrt(v_hat) + eps) + wd * p."""
        xp = backend.xp
        xp.divide(self.v[k], bc2, out=out)  # v_hat, like p
        xp.sqrt(out, out=out)
        out += self.eps  # sqrt(v_hat) + eps
        xp.divide(self.m[k], out, out=out)  # m / (sqrt(v_hat) + eps)
        out /= bc1  # m_hat / (sqrt(v_hat) + eps), like p
        if self.decay[k] and self.weight_decay:
            out += self.weight_decay * self.params[k]  # the decay inside the update; one temporary
        return out

    def step(self, grads, lr=None, apply=None):
        """One LAMB update of every parameter from ``grads`` (same keys and shapes).

        Two passes: the moments and the sums of squares of p and r of every tensor, then the
        whole norms (sum_over_shards: one all-reduce under ZeRO-1) and the trust-scaled
        updates. The second pass recomputes r from the new moments (the same operations, so
        the same values) into the scratch buffer: no buffer the size of the parameters
        beyond m and v.

        lr, when given, replaces the base learning rate for this step (the schedule).
        apply: as AdamW.step's, a 0-d device bool that skips the step where False (fp16).
        """
        xp = backend.xp
        check_same(self.params, grads)
        lr = self.lr if lr is None else float(lr)
        if apply is None:
            b1, b2 = self.betas
            self.t += 1
            bc1, bc2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        else:  # 0-d device arrays: a skipped step keeps the moments (b = 1) and the parameters (lr 0)
            bc1, bc2, b1, b2, lr = self.skippable_step(grads, lr, apply)
        trusted = [k for k in self.params if self.decay[k] or self.trust_all]
        sums = {}
        for k, p in self.params.items():
            scratch = self._scratch[p.dtype][: p.size].reshape(p.shape)  # view, like p
            g, m, v = grads[k], self.m[k], self.v[k]
            m *= b1  # m <- b1 m + (1 - b1) g
            xp.multiply(g, 1.0 - b1, out=scratch)
            m += scratch
            v *= b2  # v <- b2 v + (1 - b2) g^2
            xp.multiply(g, g, out=scratch)
            scratch *= 1.0 - b2
            v += scratch
            if k in trusted:  # taken now: the next tensor overwrites the scratch (device order keeps it)
                sums.update(sums_of_squares({"p." + k: p, "r." + k: self._direction(k, bc1, bc2, scratch)}))
        sums = self.sum_over_shards(sums)
        for k, p in self.params.items():
            scratch = self._direction(k, bc1, bc2, self._scratch[p.dtype][: p.size].reshape(p.shape))  # r, like p
            if k in trusted:
                p_norm, r_norm = xp.sqrt(sums["p." + k]), xp.sqrt(sums["r." + k])  # () float64 each
                # trust 1 when either norm is 0 (the divisor is made 1 there so nothing divides by 0)
                ok = (p_norm > 0) & (r_norm > 0)  # ()
                trust = xp.where(ok, p_norm / xp.where(ok, r_norm, 1.0), 1.0)  # ()
                scratch *= (lr * trust).astype(p.dtype)  # lr * trust * r, the scalar rounded to p's dtype
            else:
                scratch *= lr  # trust 1: a plain Adam step with the bias corrections
            p -= scratch

    def state_dict(self):
        """AdamW's state format; the meta also says "optimizer": "lamb" and trust_all."""
        tensors, meta = super().state_dict()
        meta["trust_all"] = self.trust_all
        return tensors, meta

    def load_state_dict(self, tensors, meta):
        """AdamW's checks (an AdamW state is refused), and trust_all must match."""
        if meta.get("optimizer") == self.name and bool(meta.get("trust_all", False)) != self.trust_all:
            raise ValueError(f"the saved LAMB state has trust_all={meta.get('trust_all')}, this optimizer "
                             f"{self.trust_all}")
        super().load_state_dict(tensors, meta)


SCHEDULES = ("linear", "one-cycle", "cosine")


def lr_at(step, max_lr, warmup_steps, total_steps, min_lr=0.0, schedule="linear"):
    """The learning rate for optimizer step ``step`` (0-based: the step about to be taken).

    Warmup:  step < warmup_steps             lr = max_lr * (step + 1) / warmup_steps
             (step 0 gets max_lr / warmup_steps, never 0; step warmup_steps - 1 gets max_lr)
    Decay:   warmup_steps <= step < total    frac = (total - step) / (total - warmup), 1 -> 0
             schedule "linear":   lr = min_lr + (max_lr - min_lr) * frac
             schedule "cosine":   lr = min_lr + (max_lr - min_lr) * (1 - cos(pi * frac)) / 2
             (step warmup_steps gets max_lr; both reach min_lr at step == total_steps)
    After:   step >= total_steps             lr = min_lr

    "one-cycle" (the triangle of Smith 2018 and Geiping and Goldstein 2022) is "linear" with
    the peak in the middle of the run: the caller passes warmup_steps = a fraction of
    total_steps (train.lr_for does); the shape here is the same line up and line down.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose from {SCHEDULES}")
    if warmup_steps < 0 or total_steps < warmup_steps or step < 0:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and step >= 0, got {warmup_steps}, {total_steps}, {step}")
    if step < warmup_steps:
        return float(max_lr) * (step + 1) / warmup_steps
    if step >= total_steps:
        return float(min_lr)
    frac = (total_steps - step) / (total_steps - warmup_steps)  # 1 at the end of warmup, -> 0
    if schedule == "cosine":
        frac = (1.0 - math.cos(math.pi * frac)) / 2.0
    return float(min_lr) + (float(max_lr) - float(min_lr)) * frac


def sum_of_squares(grads):
    """The sum over every gradient element of g^2: a () float64 array on the device."""
    xp = backend.xp
    # per-tensor sums of squares on the device, without a squared temporary
    sq = [xp.vdot(g.ravel(), g.ravel()) for g in grads.values()]  # each ()
    return xp.stack(sq).astype(xp.float64).sum() if sq else xp.zeros((), xp.float64)


def clip_grad_norm(grads, max_norm, sum_squares=sum_of_squares):
    """Scale ``grads`` in place so that their global L2 norm is at most max_norm.

    Returns the global norm before clipping (inf or nan when some gradient is not finite,
    so the caller can skip the step): a Python float on the host, a 0-d device array on
    CuPy, so that clipping never waits for the device (read it with float() at the log
    line). The rule is torch.nn.utils.clip_grad_norm_'s: coef = max_norm / (norm + 1e-6),
    and the grads are multiplied by min(coef, 1), computed on the device; multiplying by
    exactly 1 leaves them bitwise unchanged. max_norm None or <= 0: measure only.
    sum_squares(grads): the squared norm, () float64; data parallel passes one that also
    sums over the ranks, each holding a shard of the gradients.
    """
    xp = backend.xp
    norm = xp.sqrt(sum_squares(grads))  # () float64, still on the device
    if max_norm is not None and max_norm > 0:
        coef = xp.minimum(max_norm / (norm + 1e-6), 1.0)  # () no host wait
        for g in grads.values():
            g *= coef.astype(g.dtype)  # the coefficient rounded to the gradient's dtype, as torch does
    return float(norm) if xp is numpy else norm


def accumulate(total, grads, scale=1.0):
    """Add one micro-batch's gradients to a running sum: total[k] += scale * grads[k].

    total None starts the sum with scale * grads (grads itself when scale == 1, so a step
    of one micro-batch copies nothing); otherwise total is updated in place. Returns the
    sum. The training loop passes scale = 1 / accum: a step's gradient is the plain mean of
    its micro-batches' gradients, each already a mean over that micro-batch's own labelled
    positions and pairs.
    """
    if total is None:
        return grads if scale == 1.0 else {k: scale * g for k, g in grads.items()}
    check_same(total, grads, "grads")
    for k, t in total.items():
        if scale == 1.0:
            t += grads[k]
        else:
            t += scale * grads[k]  # one temporary per tensor; grads stays untouched
    return total
