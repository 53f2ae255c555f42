"""Where minibert's training step goes: its time op by op, a cProfile of it, or every CUDA
kernel it launches. The step is scripts/bench.py's (same presets, batch, optimizer and
machine options); this script prints no comparison table.

    python scripts/profile_step.py --preset mini                     # op by op (--profile-ops, the default)
    python scripts/profile_step.py --preset mini --profile           # cProfile of the timed steps
    python scripts/profile_step.py --backend cupy --preset base -V 30522 -B 64 --profile-ops
    python scripts/profile_step.py --backend cupy --preset base -B 64 --profile-kernels --compare-torch
                                                                     # every CUDA kernel of both steps

--profile-ops wraps each op the model calls through backend.NAME and kernels.NAME (PROFILED_OPS):
each outermost call is timed by the host clock on NumPy (both threads' work inside it) and by
CUDA events on the device's stream on CuPy, where the host's time to issue the steps is printed
beside the device's. The steps run as in training, with no synchronisation between forward,
backward and update. What no profiled op holds (bias sums, residual adds, copies, losses,
clipping, and on a GPU the idle device) is the "everything else" row.

--profile-kernels (on --backend cupy; needs PyTorch with CUDA for its profiler) reads the CUPTI
trace torch.profiler records for the whole process, CuPy's and cuBLAS's kernels included: device
time per kernel name, how busy the device was and its idle gaps; with --compare-torch, PyTorch's
step too (one run per attention in --torch-attn).

Each profile runs in a child process with the environment scripts/bench.py gives its children
(threads, backend, TF32, the --avx2 variables).
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

from bench_common import (add_config_arguments, child_command, child_config, child_env, configs,
                          minibert_timed_step, minibert_training_step, setup_torch)

# the ops --profile-ops times: every call the model makes through these module names
# (layers, model, losses and optim call them as backend.NAME / kernels.NAME)
PROFILED_OPS = {"backend": ("matmul", "matmul_pair", "batched_matmul", "scatter_add"),
                "kernels": ("softmax", "softmax_backward", "softmax_lse", "layernorm", "layernorm_backward",
                            "gelu_exact", "gelu_exact_backward", "dropout", "dropout_backward", "adamw_update")}


def profile_ops(c):
    """Where minibert's step goes, op by op: each call of PROFILED_OPS is timed by CUDA events
    on the device's stream (the time the GPU spends between them) or by the host clock on
    NumPy. The steps run with no synchronisation between forward, backward and update, as
    in training; on the device, the host's time to issue the steps is printed beside the
    device's, so a step that waits on Python shows."""
    from minibert import backend, kernels
    step = minibert_training_step(c)
    if backend.name == "cupy":
        import cupy

        def mark():
            e = cupy.cuda.Event()
            e.record()
            return e
        elapsed = lambda a, b: cupy.cuda.get_elapsed_time(a, b) / 1e3  # ms -> s
    else:
        mark, elapsed = time.perf_counter, lambda a, b: b - a
    for i in range(c.warmup):
        float(step(i))
    marks, depth = [], [0]  # (op, start, end); depth: only the outermost profiled call is timed

    def timed(name, f):
        def call(*args, **kw):
            if depth[0]:
                return f(*args, **kw)
            depth[0] += 1
            t0 = mark()
            try:
                return f(*args, **kw)
            finally:
                marks.append((name, t0, mark()))
                depth[0] -= 1
        return call
    modules = {"backend": backend, "kernels": kernels}
    saved = {(m, n): getattr(modules[m], n) for m, names in PROFILED_OPS.items() for n in names}
    for (m, n), f in saved.items():
        setattr(modules[m], n, timed(f"{m}.{n}", f))
    try:
        h0 = time.perf_counter()
        t0 = mark()
        for i in range(c.steps):
            loss = step(c.warmup + i)
        t1 = mark()
        host = time.perf_counter() - h0
        float(loss)  # waits for the device
    finally:
        for (m, n), f in saved.items():
            setattr(modules[m], n, f)
    backend.synchronize()
    total = elapsed(t0, t1) / c.steps
    per = {}
    for name, a, b in marks:
        calls, t = per.get(name, (0, 0.0))
        per[name] = (calls + 1, t + elapsed(a, b))
    clock = "device time (CUDA events)" if backend.name == "cupy" else "host time"
    print(f"# {c.name} on {backend.name}: {1e3 * total:.1f} ms a step of {clock}, over {c.steps} steps"
          + (f"; the host issued them in {1e3 * host / c.steps:.1f} ms a step" if backend.name == "cupy" else ""))
    print(f"{'op':<28} {'calls':>6} {'ms/step':>8} {'share':>6}")
    rest = total
    for name, (calls, t) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        rest -= t / c.steps
        print(f"{name:<28} {calls / c.steps:6.0f} {1e3 * t / c.steps:8.2f} {100 * t / c.steps / total:5.1f}%")
    print(f"{'everything else':<28} {'':>6} {1e3 * rest:8.2f} {100 * rest / total:5.1f}%"
          "   (bias sums, residual adds, copies, losses, clipping" + (", idle device)" if backend.name == "cupy" else ")"))


def profile_kernels(c, impl):
    """Every CUDA kernel of the step of impl ("minibert" or "torch"), from the CUPTI trace
    that torch.profiler records for the whole process (CuPy's kernels and cuBLAS's too):
    device time per kernel name, how busy the device was, and its longest idle gaps. Needs
    PyTorch with CUDA for the profiler, whichever side is profiled."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    if impl == "minibert":
        step, wait = minibert_training_step(c), lambda loss: float(loss)
    else:
        torch_step, _ = setup_torch(c)
        step, wait = lambda i: torch_step(), lambda loss: None  # its step reads the loss and synchronizes
    for i in range(c.warmup):
        wait(step(i))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for i in range(c.steps):
            loss = step(c.warmup + i)
        wait(loss)
        wall = (time.perf_counter() - t0) / c.steps
    with tempfile.TemporaryDirectory() as d:
        prof.export_chrome_trace(os.path.join(d, "trace.json"))
        with open(os.path.join(d, "trace.json")) as f:
            events = json.load(f)["traceEvents"]
    ks = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e),
                key=lambda e: e["ts"])  # times in microseconds
    if not ks:
        print(f"# {c.name}, {impl}: the trace holds no CUDA kernels (--profile-kernels is for --backend cupy)")
        return
    busy, gaps, end = 0.0, [], ks[0]["ts"]
    for e in ks:
        if e["ts"] - end > 20:
            gaps.append((e["ts"] - end, e["name"]))
        busy += max(0.0, e["ts"] + e["dur"] - max(e["ts"], end))
        end = max(end, e["ts"] + e["dur"])
    per = collections.defaultdict(lambda: [0, 0.0])
    for e in ks:
        per[e["name"]][0] += 1
        per[e["name"]][1] += e["dur"]
    name = impl if impl == "minibert" else f"torch/{c.torch_attn}"
    n = c.steps
    print(f"# {c.name}, {name}: {1e3 * wall:.1f} ms a step under the profiler; the device was busy "
          f"{busy / 1e3 / n:.1f} ms a step, in {len(ks) / n:.0f} kernels and copies; "
          f"{len(gaps) / n:.0f} idle gaps over 20 us, {sum(g for g, _ in gaps) / 1e3 / n:.1f} ms a step")
    print(f"{'kernel (first 80 characters)':<80} {'calls':>6} {'ms/step':>8} {'us/call':>8}")
    for k, (calls, t) in sorted(per.items(), key=lambda kv: -kv[1][1])[:30]:
        print(f"{k[:80]:<80} {calls / n:6.0f} {t / 1e3 / n:8.2f} {t / calls:8.1f}")


def profile_minibert(c):
    """cProfile of minibert's timed steps: the top 25 by own time, then by cumulative time."""
    import cProfile
    import pstats
    step = minibert_timed_step(c)  # the step scripts/bench.py times, waited for part by part
    for _ in range(c.warmup):
        step()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(c.steps):
        step()
    pr.disable()
    stats = pstats.Stats(pr, stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(25)  # where the time is spent
    stats.sort_stats("cumulative").print_stats(25)  # under which calls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap)
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--profile-ops", action="store_true",
                      help="minibert's step op by op: CUDA-event device time on cupy, host time on numpy (the default)")
    what.add_argument("--profile", action="store_true", help="cProfile minibert's timed steps")
    what.add_argument("--profile-kernels", action="store_true",
                      help="on cupy: every CUDA kernel of minibert's step (and PyTorch's with --compare-torch), "
                           "from torch.profiler's CUPTI trace")
    a = ap.parse_args()

    if a.child:
        c = child_config(a)
        if a.child == "profile":
            profile_minibert(c)
        elif a.child == "profile_ops":
            profile_ops(c)
        else:
            profile_kernels(c, "torch" if a.child.endswith("torch") else "minibert")
        return

    for c in configs(ap, a):
        if a.profile_kernels:
            subprocess.run(child_command(__file__, "profile_kernels", c), env=child_env(c))
            for attn in c.torch_attn.split(",") if a.compare_torch else []:
                subprocess.run(child_command(__file__, "profile_kernels_torch", replace(c, torch_attn=attn)),
                               env=child_env(c))
        else:
            subprocess.run(child_command(__file__, "profile" if a.profile else "profile_ops", c), env=child_env(c))


if __name__ == "__main__":
    main()
