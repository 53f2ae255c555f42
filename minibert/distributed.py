"""Data-parallel training: N processes compute the step one process would, on the same global batch.

Launched as `mpiexec -n N python scripts/pretrain.py ...`. Every process (rank r of N) holds
the whole model, draws the whole global batch that a single process would draw at this
step, keeps its own slice of rows, and runs forward and backward on it. What makes the N
slices add up to exactly the single-process step:

    loss      MLM: sum of the slice's cross-entropies / P, P the labelled positions of the
              *global* batch; NSP: sum / B, B the global batch. Each rank's gradient is then
              its share of the global gradient, and the sum over ranks is the gradient one
              process computes (to floating-point reassociation). Averaging per-rank means,
              as PyTorch DDP does, would weight a rank's P_r positions by 1 / (N P_r): a
              different loss whenever the slices hold different numbers of masked tokens.
    dropout   masks are keyed per sequence (philox.rng: (seed, step, micro, draw, row)),
              so a sequence gets the same mask on whichever rank holds it.
    gradients summed over ranks (all-reduce), in a few large contiguous buckets started as
              soon as their layer's backward is done, while the backward continues into the
              layers below; the step waits for them (DataParallel.reduce) only before clipping.
    clipping  on the global norm: every rank holds the summed gradient, so every rank
              computes the same norm (ZeRO-1: the shards' sums of squares are summed).

The model, the layers and the optimizer know nothing of this: the model's backward calls an
optional on_ready(grads) hook as gradients become final, and this module does the rest.

Transports: MPI (mpi4py; the `mpich` wheel brings the runtime) for host (NumPy) arrays and
for small host figures everywhere; NCCL (cupy.cuda.nccl, its id broadcast over MPI) for
device (CuPy) arrays, one GPU per process chosen by local rank. Without mpiexec, or with
one process, nothing here imports MPI and the training loop runs its plain path.

ZeRO stage 1 (zero.ShardedAdamW, --zero 1): the AdamW moments of 1/N of the parameters on
each rank; DataParallel.reduce then reduce-scatters instead, returning this rank's shard of
the summed gradients, which is clipped and handed to the optimizer's step.

Shapes: a bucket is a flat (n,) array, the concatenation of its gradients' raveled values.
"""
import contextlib
import os
import sys
import time
import traceback

import numpy as np  # host side: flat buffers of figures
from threadpoolctl import threadpool_limits

from minibert import backend, philox
from minibert.model import IGNORE_INDEX
from minibert.optim import accumulate, clip_grad_norm, sum_of_squares
from minibert.zero import ShardedAdamW, optimizer_state_bytes

BUCKET_BYTES = 1 << 20  # gradients per all-reduce: a few large messages, not one per tensor, small
# enough that the first ones leave while the backward still has layers to go (tiny: 5.9 MB in all)

_LAUNCH_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # set by mpiexec (MPICH, Open MPI, MVAPICH)


def launched_size():
    """The number of processes mpiexec started, read from its environment (1 without mpiexec)."""
    for v in _LAUNCH_VARS:
        if v in os.environ:
            return int(os.environ[v])
    return 1


class World:
    """This process's place in the job: size, rank, local_rank, and the collectives.

    With size 1 every collective is the identity and MPI is never imported."""

    def __init__(self, comm=None, nccl_comm=None):
        self.comm = comm  # mpi4py COMM_WORLD, or None for a single process
        self.nccl = nccl_comm  # cupy.cuda.nccl.NcclCommunicator, or None (host arrays)
        self.size = comm.Get_size() if comm is not None else 1
        self.rank = comm.Get_rank() if comm is not None else 0
        self.local_rank, self.local_size = 0, 1
        if comm is not None:
            from mpi4py import MPI  # here only when launched by mpiexec: see module docstring
            node = comm.Split_type(MPI.COMM_TYPE_SHARED)
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()

    def rows(self, batch_size):
        """This rank's slice of a global batch's rows: ranks take consecutive, near-equal runs."""
        return slice(self.rank * batch_size // self.size, (self.rank + 1) * batch_size // self.size)

    # small host collectives (figures, flags, eval sums): MPI on every backend

    def sum_host(self, values):
        """Elementwise sum over ranks of a host float64 vector (the identity for one process)."""
        a = np.asarray(values, dtype=np.float64)  # (k,)
        if self.comm is None:
            return a
        out = np.empty_like(a)
        self.comm.Allreduce(a, out)
        return out

    def barrier(self):
        if self.comm is not None:
            self.comm.Barrier()

    def abort(self, code=1):
        """End every process of the job now (an error on one rank would leave the others
        waiting in a collective forever)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None:
            self.comm.Abort(code)

    @contextlib.contextmanager
    def abort_on_error(self):
        """In a job of several processes, an exception on any rank ends the whole job."""
        try:
            yield
        except BaseException as e:
            if self.size > 1:
                if not isinstance(e, KeyboardInterrupt):
                    print(f"rank {self.rank} of {self.size}: {type(e).__name__}: {e}", file=sys.stderr)
                    traceback.print_exc()
                self.abort(130 if isinstance(e, KeyboardInterrupt) else 1)
            raise

    # gradient transport: host buffers through MPI, device buffers through NCCL

    def start_sum(self, flat):
        """Start summing the flat bucket over ranks, in place; returns a handle for done/wait."""
        if self.nccl is not None:
            return _nccl_start(self.nccl, flat)
        return self.comm.Iallreduce(_in_place(), flat)

    def done(self, handle):
        """Poll: True once the sum has arrived (MPI makes progress inside this call)."""
        if self.nccl is not None:
            return handle[1].done
        return handle.Test()

    def wait(self, handle):
        if self.nccl is not None:  # later device work waits for the sum; the host does not
            backend.xp.cuda.get_current_stream().wait_event(handle[1])
        else:
            handle.Wait()

    def reduce_scatter(self, flat, chunk):
        """(chunk,) sums over ranks of this rank's chunk of flat (N * chunk,)."""
        if self.comm is None:
            return flat
        out = backend.xp.empty(chunk, dtype=flat.dtype)  # (chunk,)
        if self.nccl is not None:
            from cupy.cuda import nccl  # CuPy is there: the NCCL path runs only on it
            stream = backend.xp.cuda.get_current_stream().ptr
            self.nccl.reduceScatter(flat.data.ptr, out.data.ptr, chunk, _nccl_dtype(flat.dtype), nccl.NCCL_SUM, stream)
        else:
            self.comm.Reduce_scatter_block(flat, out)
        return out

    def all_gather(self, shard):
        """(N * chunk,) every rank's (chunk,) shard, in rank order."""
        if self.comm is None:
            return shard
        out = backend.xp.empty(self.size * shard.size, dtype=shard.dtype)  # (N * chunk,)
        if self.nccl is not None:
            stream = backend.xp.cuda.get_current_stream().ptr
            self.nccl.allGather(shard.data.ptr, out.data.ptr, shard.size, _nccl_dtype(shard.dtype), stream)
        else:
            self.comm.Allgather(shard, out)
        return out

    def gather_to_root(self, shard):
        """rank 0: (N * chunk,) every rank's shard on the host; other ranks: None."""
        h = np.ascontiguousarray(backend.to_host(shard))  # (chunk,)
        if self.comm is None:
            return h
        out = np.empty(self.size * h.size, dtype=h.dtype) if self.rank == 0 else None
        self.comm.Gather(h, out, root=0)
        return out


def _in_place():
    from mpi4py import MPI  # only reached with a communicator, i.e. under mpiexec
    return MPI.IN_PLACE


def _nccl_dtype(dtype):
    from cupy.cuda import nccl  # the NCCL path runs only with CuPy
    return {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}[np.dtype(dtype)]


def _nccl_start(comm, flat):
    """All-reduce flat in place on a side stream that first waits for the compute stream to
    have written it; returns (flat, event recorded when the sum is done)."""
    cp = backend.xp
    ready = cp.cuda.Event()
    ready.record(cp.cuda.get_current_stream())
    stream = _comm_stream()
    stream.wait_event(ready)
    from cupy.cuda import nccl  # the NCCL path runs only with CuPy
    comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, _nccl_dtype(flat.dtype), nccl.NCCL_SUM, stream.ptr)
    done = cp.cuda.Event()
    done.record(stream)
    return flat, done


_streams = []


def _comm_stream():
    if not _streams:
        _streams.append(backend.xp.cuda.Stream(non_blocking=True))
    return _streams[0]


_world = [World()]  # the process's World; init() replaces it under mpiexec


def world():
    """The World of this process (a single-process one unless init() found mpiexec)."""
    return _world[0]


def init(backend_name="numpy"):
    """Join the job mpiexec started (nothing to do for one process) and return the World.

    Pins this process to GPU local_rank and builds the NCCL communicator on CuPy; limits
    BLAS threads so that the ranks on a node share its cores instead of oversubscribing
    them. Prints one line per rank saying who it is. Idempotent."""
    if _world[0].size > 1 or launched_size() == 1:
        return _world[0]
    try:
        from mpi4py import MPI  # only under mpiexec with N > 1: see module docstring
    except ImportError:
        raise RuntimeError(f"launched as {launched_size()} processes, but mpi4py is not installed: "
                           f"pip install -e '.[mpi]'") from None
    comm = MPI.COMM_WORLD
    w = World(comm)
    nccl_comm = None
    if backend_name == "cupy":
        cp = backend.xp
        check_gpus_per_node(w.local_size, cp.cuda.runtime.getDeviceCount(), w.local_rank)
        cp.cuda.Device(w.local_rank).use()
        from cupy.cuda import nccl  # only with CuPy, under mpiexec
        uid = comm.bcast(nccl.get_unique_id() if w.rank == 0 else None, root=0)
        nccl_comm = nccl.NcclCommunicator(w.size, uid, w.rank)
        w = World(comm, nccl_comm)
    threads = set_threads(w)
    device = f"GPU {backend.xp.cuda.Device().id}" if backend_name == "cupy" else "CPU"
    sys.stdout.write(f"data parallel: rank {w.rank} of {w.size} (local {w.local_rank} of {w.local_size}), "
                     f"pid {os.getpid()}, {device}, {threads} BLAS threads, gradients via "
                     f"{'NCCL' if nccl_comm else 'MPI'}\n")  # one write: the ranks' lines do not interleave
    sys.stdout.flush()
    _world[0] = w
    return w


def check_gpus_per_node(local_size, gpus, local_rank=0):
    """RuntimeError unless each of this node's local_size ranks can have a GPU of its own.

    NCCL refuses two ranks on one GPU, but only later and as "Duplicate GPU detected"; this
    says what is wrong and what to do before anything is built. Raised on every rank alike."""
    if gpus < local_size:
        raise RuntimeError(
            f"data parallel on CuPy needs one GPU per process: this node runs {local_size} processes "
            f"(this one is local rank {local_rank}) but sees {gpus} GPU{'s' if gpus != 1 else ''}. Launch at most "
            f"{gpus} process{'es' if gpus != 1 else ''} per node (mpiexec -n {gpus}), make more GPUs visible "
            f"(CUDA_VISIBLE_DEVICES), or use MINIBERT_BACKEND=numpy")


def set_threads(w):
    """BLAS threads for this rank: the node's cores shared by its ranks, unless
    OMP_NUM_THREADS says otherwise. Returns the number."""
    if "OMP_NUM_THREADS" in os.environ:
        return int(os.environ["OMP_NUM_THREADS"])
    n = max(1, (os.cpu_count() or 1) // w.local_size)
    threadpool_limits(limits=n)
    return n


# ----------------------------------------------------------------------------------------
# the global batch, cut into slices


def split_batch(w, batch):
    """(this rank's rows of the global batch, (labelled positions, pairs) of the global batch,
    the global index of its first row). The counts are the loss divisors (see the docstring)."""
    B = len(batch["input_ids"])
    if B < w.size:
        raise ValueError(f"a global batch of {B} sequences cannot be split over {w.size} processes")
    rows = w.rows(B)
    positions = int((np.asarray(batch["labels"]) != IGNORE_INDEX).sum())  # counted on the host
    return {k: v[rows] for k, v in batch.items()}, (positions, B), rows.start


# ----------------------------------------------------------------------------------------
# summing gradients over ranks while the backward runs


class GradientSync:
    """One step's gradient sum over ranks, overlapped with the last micro-batch's backward.

        sync = GradientSync(w, partial, 1 / accum)     # partial: the earlier micro-batches' sum
        grads = sync.send_rest(model.backward(cache, on_ready=sync.ready))   # this rank's sum
        summed = sync.wait()                           # summed over ranks, every rank the same

    ready(g) adds each final gradient to the partial sum (optim.accumulate's arithmetic, so
    one rank gives bitwise the plain loop's sum), queues it, and starts a non-blocking
    all-reduce once BUCKET_BYTES are queued. send_rest() sends what is left and returns this
    rank's sum (the buckets are copies: it stays this rank's); wait() waits and returns the
    summed gradients (views into the buckets). overlap=False sends everything from
    send_rest(): the baseline the benchmark compares against.
    timing: seconds from the first bucket's start to the last one seen done (span) and
    blocked in wait() (exposed)."""

    def __init__(self, w, partial, scale, overlap=True, bucket_bytes=BUCKET_BYTES):
        self.w, self.partial, self.scale = w, partial, scale
        self.overlap, self.bucket_bytes = overlap, bucket_bytes
        self.total = {}  # name -> this rank's full sum for the step
        self.queued = []  # names waiting for the next bucket
        self.buckets = []  # [names, flat, handle, t_start, t_done]
        self.keys = []  # the model's key order, set by send_rest
        self.timing = {}

    def ready(self, grads):
        sub = accumulate(None if self.partial is None else {k: self.partial[k] for k in grads}, grads, self.scale)
        self.total.update(sub)
        self.queued.extend(sub)
        if self.overlap:
            if sum(self.total[k].nbytes for k in self.queued) >= self.bucket_bytes:
                self._send()
            self._poll()

    def _send(self):
        xp = backend.xp
        names, self.queued = self.queued, []
        flat = xp.concatenate([self.total[k].ravel() for k in names])  # (n,) one contiguous message
        self.buckets.append([names, flat, self.w.start_sum(flat), time.perf_counter(), None])

    def _poll(self):
        for b in self.buckets:
            if b[4] is None and self.w.done(b[2]):
                b[4] = time.perf_counter()

    def send_rest(self, grads):
        missing = [k for k in grads if k not in self.total]  # never reported: no overlap for these
        if missing:
            self.overlap = False  # ready() queues without sending; everything left goes now
            self.ready({k: grads[k] for k in missing})
        if self.queued:
            self._send()
        self.keys = list(grads)  # the model's key order
        return {k: self.total[k] for k in self.keys}

    def wait(self):
        t0 = time.perf_counter()
        for b in self.buckets:
            self.w.wait(b[2])
            if b[4] is None:
                b[4] = time.perf_counter()
        t1 = time.perf_counter()
        out = {}
        for names, flat, *_ in self.buckets:
            o = 0
            for k in names:
                n = self.total[k].size
                out[k] = flat[o:o + n].reshape(self.total[k].shape)  # view into the summed bucket
                o += n
        self.timing = {"comm_span_s": max(b[4] for b in self.buckets) - min(b[3] for b in self.buckets),
                       "comm_exposed_s": t1 - t0, "buckets": len(self.buckets)}
        return {k: out[k] for k in self.keys}


# ----------------------------------------------------------------------------------------
# what the training loop calls


class DataParallel:
    """The training loop's view of data parallelism: with one process every method is the
    plain single-process code (the step is bitwise what it was); with N it slices, sums and
    agrees. One per run, opt an optim.AdamW or (ZeRO-1) a ShardedAdamW:

        dp = DataParallel(world(), opt)
        batch, counts, first_row = dp.slice(global_batch)
        out, cache = model.forward(batch, rng=philox.rng(key, first_row), global_counts=counts)
        grads = dp.backward(model, cache, grads, 1 / accum, last=micro == accum - 1)  # this rank's
        grads = dp.reduce(grads)                    # summed over ranks (ZeRO-1: this rank's shard)
        norm = dp.clip_grad_norm(grads, max_norm)   # the global norm, clipping what reduce returned
        opt.step(grads, lr)
    """

    def __init__(self, w, opt=None, overlap=True):
        self.w, self.opt, self.overlap = w, opt, overlap
        self.sharded = isinstance(opt, ShardedAdamW)
        self.comm = {"comm_span_s": 0.0, "comm_exposed_s": 0.0, "steps": 0}
        self.in_flight = None  # (GradientSync, the grads it sums) from the last backward to reduce

    def slice(self, batch):
        if self.w.size == 1:
            return batch, None, 0
        return split_batch(self.w, batch)

    def backward(self, model, cache, grads, scale, last, dloss=None):
        """grads (this rank's sum so far, or None) plus scale * this micro-batch's gradients:
        this rank's sum. With N processes and no sharding, the last micro-batch's backward
        also starts summing them over ranks, bucket by bucket; reduce() waits for the sum.
        dloss: the loss's gradient for model.backward (fp16's loss scale), None for 1."""
        kw = {} if dloss is None else {"dloss": dloss}
        if self.w.size == 1 or not last or self.sharded:
            return accumulate(grads, model.backward(cache, **kw), scale)
        sync = GradientSync(self.w, grads, scale, overlap=self.overlap)
        local = sync.send_rest(model.backward(cache, on_ready=sync.ready, **kw))
        self.in_flight = (sync, local)
        return local

    def reduce(self, grads):
        """The step's gradients summed over ranks, from this rank's sum (backward's): the
        whole sum on every rank, or with ZeRO-1 this rank's shard of it (reduce-scatter),
        which is what ShardedAdamW.step takes. One process, no sharding: grads as they are."""
        if self.sharded:
            return self.opt.reduce_scatter(grads)
        if self.w.size == 1:
            return grads
        sync, local = self.in_flight or (None, None)
        if grads is not local:
            raise ValueError("reduce() takes the gradients the last backward(last=True) returned, once")
        self.in_flight = None
        summed = sync.wait()
        self.comm["comm_span_s"] += sync.timing["comm_span_s"]
        self.comm["comm_exposed_s"] += sync.timing["comm_exposed_s"]
        self.comm["steps"] += 1
        return summed

    def clip_grad_norm(self, grads, max_norm):
        """optim.clip_grad_norm on the global gradient, given what reduce() returned; every
        rank returns the same norm (ZeRO-1: the shards' sums of squares summed over ranks)."""
        if self.sharded:
            return clip_grad_norm(grads, max_norm, sum_squares=self._sum_of_squares_over_ranks)
        return clip_grad_norm(grads, max_norm)

    def _sum_of_squares_over_ranks(self, shard):
        """The squared global norm from this rank's shard: every rank's sum of squares, summed."""
        mine = float(sum_of_squares(shard))  # a host wait: the ranks' sum goes through MPI
        return backend.to_device(self.w.sum_host([mine]).reshape(()))  # ()

    def any(self, flag):
        """True when flag is true on any rank (e.g. Ctrl-C reached one of them): every rank
        then takes the same branch."""
        return bool(flag) if self.w.size == 1 else bool(self.w.sum_host([1.0 if flag else 0.0])[0] > 0)

    def sum_window(self, window):
        """Replace a MetricsWindow's sums (and token count) by their sums over ranks, so the
        log line and metrics.jsonl show the global batch's figures."""
        if self.w.size == 1:
            return
        names = sorted(window.sums)
        total = self.w.sum_host([float(window.sums[k]) for k in names] + [float(window.tokens)])
        window.sums = dict(zip(names, total[:-1].tolist()))
        window.tokens = int(total[-1])

    def timing(self):
        """Figures for metrics.jsonl since the last call (empty for one process):
        comm_ms_per_step           the step blocked waiting for summed gradients (exposed)
        comm_span_ms_per_step      from the first bucket sent to the last one seen summed
        comm_overlapped_ms_per_step  span minus exposed: buckets in flight while the backward ran
        optimizer_state_bytes      AdamW moments held by this rank (1/N of them with ZeRO-1)
        The compute time is ms_per_step minus comm_ms_per_step. On NCCL the three comm
        figures are left out: there `wait` only queues the summed buckets behind the device's
        work and returns at once, so host clocks would read about 0 ms exposed whatever the
        GPUs did (timing them needs CUDA events on the communication stream)."""
        if self.w.size == 1:
            return {}
        out = {"optimizer_state_bytes": optimizer_state_bytes(self.opt)}  # rank 0's: 1/N of all with ZeRO-1
        if not self.sharded and self.w.nccl is None:
            n = max(self.comm["steps"], 1)
            exposed, span = self.comm["comm_exposed_s"] / n, self.comm["comm_span_s"] / n
            out.update(comm_ms_per_step=1000 * exposed, comm_span_ms_per_step=1000 * span,
                       comm_overlapped_ms_per_step=1000 * max(span - exposed, 0.0))
        self.comm = {"comm_span_s": 0.0, "comm_exposed_s": 0.0, "steps": 0}
        return out
