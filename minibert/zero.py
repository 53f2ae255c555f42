"""ZeRO stage 1: the AdamW or LAMB moments sharded over the data-parallel ranks (`--zero 1`).

Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", stage 1 (optimizer state partitioning); PyTorch's ZeroRedundancyOptimizer. Each
rank keeps the moments of 1/N of the parameters. Per step:

    shard = opt.reduce_scatter(grads)    this rank's part of the gradients summed over ranks
    norm = clip_grad_norm(shard, ...)    the global norm: the shards' sums of squares summed
    opt.step(shard, lr)                  AdamW on its part, then the parameters all-gathered

distributed.DataParallel makes these calls (reduce, clip_grad_norm) for the training loop.
AdamW is elementwise, so a part's update is the unsharded update of those elements, bit for
bit. Checkpoints keep optim.AdamW's unsharded format: any N, sharded or not, resumes them.

LAMB (optimizer="lamb") is elementwise except for its trust ratio ||p|| / ||r||, which needs
the norms of WHOLE tensors while a rank may hold only part of one. Each rank takes the sums
of squares of p and r over the elements it owns (zeros for tensors it holds none of), one
all-reduce (sum) of that (2 * number of tensors,) float64 vector gives every rank the whole
norms, then each rank updates its chunk. The result is optim.LAMB's up to the rounding of
the summed norms (a tensor cut between ranks sums its squares in two parts).

Shapes: n the number of parameter elements, chunk = ceil(n / N); a shard is a (chunk,)
vector, handed around as name -> the 1-D piece of each parameter this rank owns.
"""
import numpy as np  # host side: the layout's offsets, the gathered checkpoint tensors

from minibert import backend
from minibert.optim import LAMB, OPTIMIZERS, AdamW, check_same, default_no_decay


class ShardedAdamW:
    """AdamW whose moments live on the rank that owns them (ZeRO-1). The interface of
    optim.AdamW (step(grads, lr), state_dict(), load_state_dict()), except that step takes
    this rank's shard of the summed gradients, as reduce_scatter returns it:

        shard = opt.reduce_scatter(grads)   # grads: this rank's; shard: its part of the sum
        clip_grad_norm(shard, ...)          # on the global norm: DataParallel.clip_grad_norm
        opt.step(shard, lr)                 # its chunk's update, then the all-gather

    Layout: the parameters, raveled and concatenated in key order, are a flat (n,) vector,
    padded to N * chunk; rank r owns [r * chunk, (r + 1) * chunk). Its AdamW sees 1-D views
    of the parameters it owns (a parameter may be cut between two ranks); the update is
    elementwise, so it is the unsharded update of those elements, bit for bit. no_decay, as
    optim.AdamW's, is asked about the whole parameter, not the view.

    optimizer "lamb": optim.LAMB on the views, its norms summed over the ranks (see the module
    docstring); the class keeps its name, the moments and the hand-off are the same."""

    def __init__(self, w, params, no_decay=None, optimizer="adamw", **adamw_kwargs):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}: choose from {OPTIMIZERS}")
        self.w, self.params = w, params
        self.names = list(params)
        self.sizes = [params[k].size for k in self.names]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)  # (len + 1,)
        self.n = int(self.offsets[-1])
        self.chunk = -(-self.n // w.size)
        lo, hi = w.rank * self.chunk, min(self.n, (w.rank + 1) * self.chunk)
        self.own = {}  # name -> (start, stop) within the parameter's raveled values
        for k, off, size in zip(self.names, self.offsets, self.sizes):
            a, b = max(lo, off), min(hi, off + size)
            if a < b:
                self.own[k] = (int(a - off), int(b - off))
        views = {k: params[k].reshape(-1)[a:b] for k, (a, b) in self.own.items()}  # 1-D views into params
        pred = no_decay or default_no_decay
        self.no_decay = sorted(k for k in self.names if pred(k, params[k]))  # all of them, not just ours
        keep = lambda k, view: k in self.no_decay  # noqa: E731
        if optimizer == "lamb":
            self.inner = LAMB(views, no_decay=keep, sum_over_shards=self._sum_over_ranks, **adamw_kwargs)
        else:
            self.inner = AdamW(views, no_decay=keep, **adamw_kwargs)

    def _sum_over_ranks(self, sums):
        """LAMB's partial sums of squares ("p.<name>", "r.<name>" -> () over this rank's
        elements) summed over the ranks: one all-reduce of a (2 * len(names),) vector laid
        out over every parameter, zeros where this rank owns none of it."""
        if self.w.size == 1:
            return sums
        xp = backend.xp
        keys = [f"{which}.{k}" for k in self.names for which in ("p", "r")]
        zero = xp.zeros((), xp.float64)
        vec = xp.stack([sums.get(key, zero) for key in keys])  # (2 * len(names),) float64
        self.w.wait(self.w.start_sum(vec))  # in place, on the device with NCCL
        return {key: vec[i] for i, key in enumerate(keys) if key in sums}

    def _flat(self, arrays):
        xp = backend.xp
        flat = xp.zeros(self.w.size * self.chunk, dtype=arrays[self.names[0]].dtype)  # (N * chunk,) padded
        for k, off, size in zip(self.names, self.offsets, self.sizes):
            flat[off:off + size] = arrays[k].ravel()
        return flat

    def _shard_views(self, shard):
        """name -> the part of this rank's (chunk,) shard that belongs to that parameter."""
        base = self.w.rank * self.chunk
        off = dict(zip(self.names, self.offsets))
        return {k: shard[off[k] + a - base:off[k] + b - base] for k, (a, b) in self.own.items()}

    def reduce_scatter(self, grads):
        """This rank's shard of the sum over ranks of grads (each rank's own, whole): name ->
        the 1-D part of that sum over the elements this rank owns, the grads step() takes."""
        check_same(self.params, grads)  # whole gradients, not a shard
        return self._shard_views(self.w.reduce_scatter(self._flat(grads), self.chunk))

    def step(self, grads, lr=None, apply=None):
        """Update this rank's chunk from grads (its shard of the summed gradients, see
        reduce_scatter; anything else of other keys or shapes is refused), then all-gather
        the parameters. apply: the inner optimizer's skip flag (fp16), the same on every
        rank (it comes from the global grad norm)."""
        self.inner.step(grads, lr=lr, **({} if apply is None else {"apply": apply}))
        base = self.w.rank * self.chunk
        shard = self._flat(self.params)[base:base + self.chunk]  # (chunk,) this rank's updated values
        full = self.w.all_gather(shard)  # (N * chunk,)
        for k, off, size in zip(self.names, self.offsets, self.sizes):
            self.params[k][...] = full[off:off + size].reshape(self.params[k].shape)

    @property
    def t(self):
        return self.inner.t

    def state_bytes(self):
        """Bytes of AdamW moments held by this rank."""
        return sum(a.nbytes for a in (*self.inner.m.values(), *self.inner.v.values()))

    def state_dict(self):
        """optim.AdamW.state_dict's format, whole: every rank takes part, rank 0 gets the
        tensors (other ranks get an empty dict) and everyone the meta."""
        tensors = {}
        for which in ("m", "v"):
            moments = getattr(self.inner, which)
            shard = backend.xp.zeros(self.chunk, dtype=self.params[self.names[0]].dtype)  # (chunk,)
            for k, view in self._shard_views(shard).items():
                view[...] = moments[k]
            full = self.w.gather_to_root(shard)
            if full is not None:
                for k, off, size in zip(self.names, self.offsets, self.sizes):
                    tensors[f"{which}.{k}"] = full[off:off + size].reshape(self.params[k].shape).copy()
        _, meta = self.inner.state_dict()
        meta["no_decay"] = self.no_decay
        return tensors, meta

    def load_state_dict(self, tensors, meta):
        """Take this rank's chunk of a whole (unsharded) optimizer state."""
        backend.check_keys(tensors, {f"{p}.{k}" for k in self.names for p in ("m", "v")}, "optimizer state names differ")
        mine = {}
        for k, (a, b) in self.own.items():
            for p in ("m", "v"):
                mine[f"{p}.{k}"] = np.asarray(tensors[f"{p}.{k}"]).reshape(-1)[a:b]
        if "no_decay" in meta:  # every rank checks all the names, so that all refuse together
            if sorted(meta["no_decay"]) != self.no_decay:
                raise ValueError(f"saved no-decay parameters {sorted(meta['no_decay'])} differ from "
                                 f"this optimizer's {self.no_decay}")
            meta = dict(meta, no_decay=[k for k in self.no_decay if k in self.own])
        self.inner.load_state_dict(mine, meta)


def optimizer_state_bytes(opt):
    """Bytes of AdamW moments this process holds (m and v), for either optimizer."""
    if isinstance(opt, ShardedAdamW):
        return opt.state_bytes()
    return sum(a.nbytes for a in (*opt.m.values(), *opt.v.values()))
