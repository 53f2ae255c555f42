"""Data-parallel throughput on this machine: 1 process x T BLAS threads against N processes x
1 thread (mpiexec), on a fixed random global batch, and where the step's time goes.

    python scripts/bench_dp.py                          # tiny and mini, 2 processes, B=32 T=128
    python scripts/bench_dp.py --presets mini --steps 8 --procs 2

For each preset it runs (each in fresh processes):
    single    1 process, --threads BLAS threads: the plain step (forward, backward, clip, AdamW)
    dp        N processes x 1 thread, gradients all-reduced in buckets during the backward
    dp-sync   the same, all buckets sent after the backward (no overlap), once both ranks
              are there (the wait for the slower rank is reported apart, as skew): the
              full communication time of the step, which dp hides part of
and it times a blocking all-reduce of the gradient bytes alone (the ring's 2(N-1)/N bytes
model is in docs/scaling.md). Printed: the best step's ms (least disturbed by other load) and
the median, pos/s (B x T positions per second, padding
included: these batches have none), the communication the step waited for, and the
overlapped share = 1 - waited(dp) / waited(dp-sync). On a loaded machine waited(dp) also holds
the ranks' skew (one rank descheduled), so the share is a lower bound.

Worker mode (--worker) is what mpiexec runs; it prints one JSON line from rank 0.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from minibert import distributed, philox, zero  # noqa: E402
from minibert.model import IGNORE_INDEX, PRESETS, BertConfig, BertForPreTraining  # noqa: E402
from minibert.optim import AdamW  # noqa: E402


def make_batch(c, B, T, seed=0):
    """A global batch with 15% of positions labelled and random NSP labels."""
    r = np.random.default_rng(seed)
    ids = r.integers(5, c.vocab_size, size=(B, T))  # (B, T)
    labels = np.where(r.random((B, T)) < 0.15, r.integers(5, c.vocab_size, size=(B, T)), IGNORE_INDEX)  # (B, T)
    tt = np.zeros((B, T), dtype=np.int64)
    tt[:, T // 2:] = 1
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": np.ones((B, T), dtype=np.int64),
            "labels": labels, "next_sentence_label": r.integers(0, 2, size=B)}


def worker(a):
    w = distributed.init("numpy")
    c = BertConfig(**PRESETS[a.preset], vocab_size=a.vocab)
    model = BertForPreTraining(c, seed=0)
    opt = zero.ShardedAdamW(w, model.params, lr=1e-4) if a.zero else AdamW(model.params, lr=1e-4)
    dp = distributed.DataParallel(w, opt, overlap=not a.no_overlap)
    batch = make_batch(c, a.batch_size, a.seq_len)
    times, fb, waited, span, skew = [], [], [], [], []
    for i in range(a.warmup + a.steps):
        w.barrier()
        t0 = time.perf_counter()
        b, counts, first = dp.slice(batch)
        out, cache = model.forward(b, rng=philox.rng((0, i, 0), first), global_counts=counts)
        if a.no_overlap and w.size > 1:
            # wait for the slower rank first, so that the sum's time is communication alone
            g = model.backward(cache)
            tb = time.perf_counter()
            w.barrier()
            skew.append(1000 * (time.perf_counter() - tb))
            sync = distributed.GradientSync(w, None, 1.0, overlap=False)
            sync.send_rest(g)
            grads = sync.wait()
            tm_sync = sync.timing
        else:
            grads = dp.backward(model, cache, None, 1.0, last=True)
            if not a.zero:  # the wait for the sum the backward started: part of the backward's time
                grads = dp.reduce(grads)
            tm_sync = None
        t1 = time.perf_counter()
        if a.zero:  # the reduce-scatter, after the backward: timed with the sharded update
            grads = dp.reduce(grads)
        dp.clip_grad_norm(grads, 1.0)
        opt.step(grads, lr=1e-4)
        t2 = time.perf_counter()
        tm = dp.timing()
        if tm_sync:
            tm = {"comm_ms_per_step": 1000 * tm_sync["comm_exposed_s"], "comm_span_ms_per_step": 1000 * tm_sync["comm_span_s"]}
        if i >= a.warmup:
            times.append(t2 - t0)
            fb.append(t1 - t0)
            waited.append(tm.get("comm_ms_per_step", 0.0))
            span.append(tm.get("comm_span_ms_per_step", 0.0))
    # the gradient bytes alone, blocking, as one message: the cost model's measured side
    nbytes = sum(p.nbytes for p in model.params.values())
    flat = np.ones(nbytes // 4, dtype=np.float32)
    ar = []
    for _ in range(5 if w.size > 1 else 0):
        w.barrier()
        t0 = time.perf_counter()
        w.comm.Allreduce(distributed._in_place(), flat)
        ar.append(time.perf_counter() - t0)
    res = {"preset": a.preset, "procs": w.size, "threads": distributed.set_threads(w) if w.size > 1 else a.threads,
           "overlap": not a.no_overlap, "zero": a.zero, "ms_per_step": 1000 * float(np.min(times)),
           "ms_per_step_median": 1000 * float(np.median(times)),
           "fwd_bwd_ms": 1000 * float(np.min(fb)), "comm_waited_ms": float(np.min(waited)),
           "comm_span_ms": float(np.min(span)), "skew_ms": float(np.min(skew)) if skew else 0.0,
           "pos_per_s": a.batch_size * a.seq_len / float(np.min(times)),
           "grad_mb": nbytes / 2**20, "allreduce_ms": 1000 * float(np.min(ar)) if ar else None,
           "optimizer_state_mb": zero.optimizer_state_bytes(opt) / 2**20}
    if w.rank == 0:
        print("RESULT " + json.dumps(res), flush=True)


def machine():
    """CPU model, AVX-512 or not, BLAS kernel, load: where the figures come from."""
    cpu = platform.processor()
    flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    from threadpoolctl import threadpool_info
    blas = [f"{d.get('internal_api')} {d.get('version')} {d.get('architecture')}" for d in threadpool_info()
            if d.get("user_api") == "blas"]
    return (f"{cpu}, {os.cpu_count()} cores, {'AVX-512' if 'avx512f' in flags else 'no AVX-512'}, "
            f"BLAS {', '.join(blas)}, load average {os.getloadavg()[0]:.1f} at start")


def launch(a, preset, procs, threads, extra=()):
    me = os.path.abspath(__file__)
    args = [sys.executable, me, "--worker", "--preset", preset, "--steps", str(a.steps), "--warmup", str(a.warmup),
            "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len), "--vocab", str(a.vocab),
            "--threads", str(threads), *extra]
    if procs > 1:
        args = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(procs), *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1800)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "mini"], choices=sorted(PRESETS))
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="BLAS threads of the single process")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--zero", action="store_true", help="(worker) ZeRO-1")
    p.add_argument("--no-overlap", action="store_true", help="(worker) send every bucket after the backward")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--preset", default="tiny", help="(worker)")
    p.add_argument("--json", default="", help="also write the results to this file")
    a = p.parse_args()
    if a.worker:
        return worker(a)
    print(f"machine: {machine()}")
    print(f"global batch {a.batch_size} x {a.seq_len}, {a.steps} timed steps after {a.warmup}; each figure the "
          f"best step (the least disturbed on a shared machine), ms/step median beside it")
    rows = []
    for preset in a.presets:
        single = launch(a, preset, 1, a.threads)
        dp = launch(a, preset, a.procs, 1)
        sync = launch(a, preset, a.procs, 1, ["--no-overlap"])
        sharded = launch(a, preset, a.procs, 1, ["--zero"])
        overlapped = 1 - dp["comm_waited_ms"] / sync["comm_waited_ms"] if sync["comm_waited_ms"] > 0 else float("nan")
        rows.append({"preset": preset, "single": single, "dp": dp, "dp_sync": sync, "zero": sharded,
                     "overlapped_share": overlapped})
        print(f"\n{preset}: gradients {dp['grad_mb']:.1f} MB, blocking all-reduce of them {dp['allreduce_ms']:.1f} ms "
              f"({dp['grad_mb'] * 2 * (a.procs - 1) / a.procs / 1024 / (dp['allreduce_ms'] / 1000):.2f} GB/s "
              f"ring-equivalent)")
        print(f"  {'run':<28} {'ms/step':>8} {'median':>8} {'pos/s':>8} {'fwd+bwd':>8} {'comm waited':>11} "
              f"{'in flight':>9} {'AdamW MB':>8}")
        for name, r in (("1 proc x %d threads" % a.threads, single), (f"{a.procs} procs x 1, overlap", dp),
                        (f"{a.procs} procs x 1, no overlap", sync), (f"{a.procs} procs x 1, ZeRO-1", sharded)):
            print(f"  {name:<28} {r['ms_per_step']:8.1f} {r['ms_per_step_median']:8.1f} {r['pos_per_s']:8.0f} "
                  f"{r['fwd_bwd_ms']:8.1f} "
                  f"{r['comm_waited_ms']:11.1f} {r['comm_span_ms']:9.1f} {r['optimizer_state_mb']:8.2f}")
        print(f"  no-overlap run: {sync['skew_ms']:.1f} ms/step waiting for the slower rank before the sum")
        print(f"  speed-up {a.procs} procs / 1 proc: {single['ms_per_step'] / dp['ms_per_step']:.2f}x; communication "
              f"{sync['comm_waited_ms'] / sync['ms_per_step']:.0%} of the step without overlap, "
              f"{dp['comm_waited_ms'] / dp['ms_per_step']:.0%} with; overlapped share {overlapped:.0%}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
