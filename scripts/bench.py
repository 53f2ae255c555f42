"""Benchmark full BERT pretraining steps: forward, backward and AdamW update.

    python scripts/bench.py --preset mini --threads 2 --compare-torch
    python scripts/bench.py --preset tiny,mini,small --compare-torch --json out.json
    python scripts/bench.py -L 4 -H 256 -A 4 -I 1024 -V 8192 -T 128 -B 16
    python scripts/bench.py --backend cupy --preset base -B 64 --compare-torch   # both on the GPU
    python scripts/bench.py --preset mini --compare-torch --torch-attn sdpa,eager  # both attentions
    python scripts/bench.py --preset mini --compare-torch --avx2   # both sides as on an AVX2-only CPU
    python scripts/bench.py --preset mini,base -B 32 --recompute   # a minibert/recompute child beside the plain one
    python scripts/bench.py --preset base -B 32 --recompute --trace-memory   # what the host memory holds, part by part

--avx2, on an AVX-512 CPU, runs both sides on AVX2 code, as on an AVX2-only machine (Haswell,
AMD Zen 2/3): OpenBLAS's Haswell kernels and Numba's haswell target (with Haswell's own
features, not the host's) for minibert, MKL,
oneDNN and ATen capped at AVX2 for PyTorch. OPENBLAS_CORETYPE=Haswell alone slows minibert's
GEMMs only: PyTorch's MKL and oneDNN would stay on AVX-512.

--backend cupy runs minibert on CuPy and PyTorch on CUDA (both sides on the GPU); the bound
child then measures cuBLAS. cuBLAS TF32 is off on both sides unless --tf32 (opt-in: it breaks
the 1e-4 parity tolerance). The header names the machine: CPU model, its SIMD flags
(avx512f/avx2), the BLAS kernel threadpoolctl reports, the target Numba compiles minibert's
host loops for (its CPU model and vector instructions), or the GPU.

Each implementation runs in its own child process launched by this one invocation, so its
peak resident memory (ru_maxrss of the child, libraries included) is its own and both are
measured in the same run with the same thread count. A third child measures the bound: a
large float32 matmul (the peak, same BLAS and threads) and the step's own matmuls run
alone. All children stay alive and their steps are interleaved one by one (the order
alternating), so all see the same machine load. Step times are medians over the timed
steps, after warm-up; "paired" is the median over the interleaved pairs of torch's step
time / minibert's. "x bound" is minibert's step over its matmuls alone; "at bound" is
torch's step over those matmuls: the ratio minibert would reach if nothing but its matmuls
took time, the ceiling of its ratio on this BLAS. Only ratios from one run count: the
machine is noisy. scripts/profile_step.py says where minibert's step goes (op by op, cProfile,
CUDA kernels).

MFU counts the model's useful FLOPs per step (every matmul of the forward, twice that for
the backward; the MLM decoder at the P labelled positions only, which is all the loss
needs) divided by step time and the measured matmul peak. The same count is used for
PyTorch, which also computes the decoder at the unlabelled positions.

--recompute adds a child with activation recomputation (encoder.encoder_forward(recompute=True)):
its step time and peak RSS beside the plain child's, from the same interleaved run.
--trace-memory times nothing: it runs two steps in this process under tracemalloc (NumPy's host
allocations, not the libraries') and prints the params, AdamW moments, grads and the forward's
cache in MiB, and the traced peaks of forward, backward and update: what a peak RSS is made of.

pos/s is B x T / step time: every position of the batch, padding included (the JSON field
keeps its name, tokens_per_s). It is not the pretraining log's tok/s, which counts real
tokens only (the sum of attention_mask); the batch here has a quarter of its rows padded.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace

import numpy as np

from bench_common import (AVX2_ENV, add_config_arguments, blas_info, build_minibert, child_command, child_config,
                          child_env, configs, limit_threads, make_batch, minibert_timed_step, n_labels, setup_torch,
                          step_flops, step_gemms)

# ----------------------------------------------------------------------------------------
# what the header and the children report


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def machine_info():
    """CPU model and which of avx512f/avx2 the CPU has."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "simd": [f for f in ("avx512f", "avx2") if f in flags] or ["neither avx512f nor avx2"]}


def host_loop_target():
    """What minibert's compiled host loops (minibert/cpu_kernels.py) are compiled for: Numba's
    target CPU and its widest vector instructions, or why there are no compiled loops."""
    from minibert import host
    if not host.use_numba:
        return "off (MINIBERT_NUMBA=0)"
    try:
        import llvmlite.binding as llvm
        from numba.core import config
    except ImportError:
        return "off (Numba not installed)"
    name = config.CPU_NAME or llvm.get_host_cpu_name()
    features = llvm.get_host_cpu_features().flatten() if config.CPU_FEATURES is None else config.CPU_FEATURES
    if not features:  # NUMBA_CPU_FEATURES="": the named model's own features
        return f"Numba {name} (its own features)"
    flags = features.split(",")
    simd = "AVX-512" if "+avx512f" in flags else "AVX2" if "+avx2" in flags else "no AVX2"
    return f"Numba {name} ({simd})"


# ----------------------------------------------------------------------------------------
# children


def setup_minibert(c):
    """minibert's timed step (forward, backward, AdamW, each waited for); return (step
    function, info function)."""
    from minibert import backend
    step = minibert_timed_step(c)

    def info():
        out = dict(impl="minibert", backend=backend.name, blas=blas_info(), numpy=np.__version__)
        if backend.name == "numpy":
            out["host_loops"] = host_loop_target()
        if backend.name == "cupy":
            import cupy
            out["peak_device_mb"] = cupy.get_default_memory_pool().total_bytes() / 2**20
            out["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        return out

    return step, info


def serve(setup, c):
    """A child's loop: one line in ("step" or "done"), one JSON line out."""
    step, info = setup(c)
    print(json.dumps({"ready": True}), flush=True)
    losses = []
    for line in sys.stdin:
        if line.strip() == "step":
            t0 = time.perf_counter()
            loss = step()
            t = time.perf_counter() - t0
            rep = dict(loss, t=t) if isinstance(loss, dict) else {"t": t, "loss": loss}
            losses.append(rep.get("loss"))
            print(json.dumps(rep), flush=True)
        else:
            out = info()
            out.update(loss_first=losses[0], loss_last=losses[-1], peak_rss_mb=peak_rss_mb())
            print(json.dumps(out), flush=True)
            return


def setup_bound(c):
    """The machine's float32 matmul peak on this BLAS and thread count (a 2048^3 product on
    the host, 8192^3 on the GPU, where a smaller one is too short to time),
    and the step's own matmuls run alone (each forward product and both of its backward
    products, with their transposes): the time no implementation of the step can beat.
    A live child like the others, so it is measured under the same load."""
    from minibert import backend
    limit_threads(c.threads)
    xp = backend.xp
    r = np.random.default_rng(0)
    n = 2048 if xp is np else 8192
    a = backend.to_device(r.standard_normal((n, n), dtype=np.float32))  # (n, n)
    b = backend.to_device(r.standard_normal((n, n), dtype=np.float32))  # (n, n)
    o = xp.empty((n, n), dtype=np.float32)  # (n, n)
    sw = lambda t: xp.swapaxes(t, -1, -2)
    ops = []
    for bt, m, k, nn in step_gemms(c, n_labels(make_batch(c))):
        shape = (bt,) if bt > 1 else ()
        x = backend.to_device(r.standard_normal(shape + (m, k), dtype=np.float32))  # (.., M, K)
        w = backend.to_device(r.standard_normal(shape + (k, nn), dtype=np.float32))  # (.., K, N)
        dy = backend.to_device(r.standard_normal(shape + (m, nn), dtype=np.float32))  # (.., M, N)
        mm = backend.batched_matmul if bt > 1 else xp.matmul  # as the model calls them
        ops += [(mm, x, w), (mm, dy, sw(w)), (mm, sw(x), dy)]

    def step():
        t0 = time.perf_counter()
        xp.matmul(a, b, out=o)
        backend.synchronize()
        t1 = time.perf_counter()
        for mm, x, y in ops:
            mm(x, y)
        backend.synchronize()
        return {"peak_flops": 2 * n ** 3 / (t1 - t0), "bound_s": time.perf_counter() - t1}

    return step, lambda: dict(impl="bound", blas=blas_info())


class Child:
    """A live child process that runs one training step per request."""

    def __init__(self, kind, c):
        self.kind = kind
        self.p = subprocess.Popen(child_command(__file__, kind, c), env=child_env(c), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, bufsize=1)
        self._read()  # wait until the model is built

    def _read(self):
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} child died (exit {self.p.wait()})")
        return json.loads(line)

    def step(self):
        self.p.stdin.write("step\n")
        return self._read()

    def finish(self):
        self.p.stdin.write("done\n")
        out = self._read()
        self.p.wait()
        return out


# ----------------------------------------------------------------------------------------
# --trace-memory: what minibert's host memory holds, part by part


MIB = 2 ** 20


def array_bytes(obj, skip=()):
    """Bytes of the distinct NumPy buffers reachable from obj through tuples (NamedTuples),
    lists and dicts: a view counts its whole base once (host.empty_apart's page of slack
    included), and a buffer in skip (by id: the params, which caches reference) not at all."""
    seen, total, todo = set(skip), 0, [obj]
    while todo:
        o = todo.pop()
        if isinstance(o, np.ndarray):
            while isinstance(o.base, np.ndarray):
                o = o.base
            if id(o) not in seen:
                seen.add(id(o))
                total += o.nbytes
        elif isinstance(o, dict):
            todo.extend(o.values())
        elif isinstance(o, (tuple, list)):
            todo.extend(o)
    return total


def trace_memory(c):
    """minibert's training step for config c (NumPy) under tracemalloc, which sees NumPy's
    allocations but not the libraries' or the interpreter's: MiB of the params, the AdamW
    moments, the gradients and the cache the forward leaves for the backward (its encoder
    layers' part apart), and the traced peaks of the forward, the backward and the update
    (static state included). The second step's figures: the first writes the moments."""
    import tracemalloc
    from minibert import philox
    tracemalloc.start()
    try:
        model, opt, batch = build_minibert(c)
        for s in (1, 2):
            out = {}
            tracemalloc.reset_peak()
            _, cache = model.forward(batch, rng=philox.rng((c.seed, s)))
            out["forward_peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            grads = model.backward(cache)
            out["backward_peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            opt.step(grads)
            out["update_peak"] = tracemalloc.get_traced_memory()[1]
            params = {id(p) for p in model.params.values()}
            out.update(params=array_bytes(model.params), moments=array_bytes([opt.m, opt.v], params),
                       grads=array_bytes(grads, params), cache=array_bytes(cache, params),
                       layers=array_bytes(cache.c_enc.c_layers, params))
            del cache, grads
    finally:
        tracemalloc.stop()
    return {k: v / MIB for k, v in out.items()}


# ----------------------------------------------------------------------------------------
# orchestration


def summarise(c, res, peak):
    batch = make_batch(c)
    P = n_labels(batch)
    flops = step_flops(c, P)
    med = statistics.median(res["step_times"])
    out = dict(res)
    out.update(step_ms=med * 1e3, tokens_per_s=c.B * c.T / med, mfu=flops / med / peak["peak_flops"],
               step_gflop=flops / 1e9, P=P)
    return out


def bench_one(c, compare_torch, recompute=False):
    """All children alive at once, their steps interleaved (the order alternating every
    step), so that all see the same machine load; medians over the timed steps. One PyTorch
    child per attention in c.torch_attn ("sdpa,eager": both in the same run)."""
    attns = c.torch_attn.split(",") if compare_torch else []
    torch_kinds = [f"torch/{a}" for a in attns]
    kinds = ["minibert", *(["minibert/recompute"] if recompute else []), *torch_kinds, "bound"]
    children = {k: Child("torch", replace(c, torch_attn=k[6:])) if k in torch_kinds else
                Child("minibert", replace(c, recompute=True)) if k == "minibert/recompute" else Child(k, c)
                for k in kinds}
    reps = {k: [] for k in kinds}
    for i in range(c.warmup + c.steps):
        for k in (kinds if i % 2 == 0 else kinds[::-1]):
            rep = children[k].step()
            if i >= c.warmup:
                reps[k].append(rep)
    b = children.pop("bound").finish()
    peak = dict(b, peak_flops=statistics.median(r["peak_flops"] for r in reps["bound"]),
                matmul_bound_s=statistics.median(r["bound_s"] for r in reps["bound"]))
    del peak["loss_first"], peak["loss_last"]
    result = {"config": asdict(c), "peak": peak}
    times = {k: [r["t"] for r in reps[k]] for k in children}
    for k in children:
        res = children[k].finish()
        res["step_times"] = times[k]
        result[k] = summarise(c, res, peak)
    mb = result["minibert"]
    for k in [k for k in ("minibert", "minibert/recompute") if k in result]:
        for part in ("fwd", "bwd", "opt"):  # where minibert's step goes
            result[k][part + "_ms"] = statistics.median(r[part + "_s"] for r in reps[k]) * 1e3
    if "minibert/recompute" in result:  # its step over the plain one's, per interleaved pair
        result["minibert/recompute"]["step_paired_median"] = statistics.median(
            b / a for a, b in zip(times["minibert"], times["minibert/recompute"]))
    mb["matmul_bound_ms"] = peak["matmul_bound_s"] * 1e3
    mb["step_over_bound"] = mb["step_ms"] / mb["matmul_bound_ms"]
    for k in torch_kinds:
        t = result[k]
        pair = [b / a for a, b in zip(times["minibert"], times[k])]  # per interleaved pair
        t["ratios"] = dict(tokens_per_s=mb["tokens_per_s"] / t["tokens_per_s"],
                           tokens_per_s_paired_median=statistics.median(pair),
                           peak_rss=mb["peak_rss_mb"] / t["peak_rss_mb"],
                           # the ratio minibert would reach if all but its matmuls took no time
                           at_bound=t["step_ms"] / mb["matmul_bound_ms"])
    if torch_kinds:  # the first attention's child is "torch", its ratios "ratios", as before
        result["torch"] = result.pop(torch_kinds[0])
        result["ratios"] = result["torch"].pop("ratios")
    return result


def table_rows(r):
    """(label, kind, result) of each implementation's row of one config, in table order."""
    for kind in ["minibert", "minibert/recompute", "torch", *(k for k in r if k.startswith("torch/"))]:
        if kind in r:
            yield (kind if kind.startswith("minibert") else f"torch/{r[kind]['attn']}"), kind, r[kind]


def print_table(results):
    w = max([11, *(len(label) for r in results for label, _, _ in table_rows(r))])  # the longest impl label
    head = (f"{'config':<7} {'impl':<{w}} {'step ms':>8} {'pos/s':>8} {'peak RSS MB':>11} {'MFU':>6} "
            f"{'bound ms':>8} {'x bound':>7} {'pos/s ratio':>11} {'paired':>6} {'at bound':>8} {'RSS ratio':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        name = r["config"]["name"]
        for label, kind, x in table_rows(r):
            bound = f"{x['matmul_bound_ms']:8.1f} {x['step_over_bound']:7.2f}" if kind == "minibert" else f"{'':8} {'':7}"
            # minibert's row: its ratios to the first PyTorch row; a further PyTorch row: to that row
            rr = r.get("ratios") if kind == "minibert" else x.get("ratios")
            ratios = ""
            if rr:
                ratios = (f"{rr['tokens_per_s']:11.2f} {rr['tokens_per_s_paired_median']:6.2f} {rr['at_bound']:8.2f} "
                          f"{rr['peak_rss']:9.2f}")
            print(f"{name:<7} {label:<{w}} {x['step_ms']:8.1f} {x['tokens_per_s']:8.0f} {x['peak_rss_mb']:11.0f} "
                  f"{100 * x['mfu']:5.1f}% {bound} {ratios}".rstrip())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--trace-memory", action="store_true", help="instead of timing: minibert's host memory part "
                    "by part (tracemalloc, in this process): params, AdamW moments, grads, the cache, the peaks of "
                    "forward, backward and update; with --recompute, for both steps")
    a = ap.parse_args()

    if a.child:
        serve({"minibert": setup_minibert, "torch": setup_torch, "bound": setup_bound}[a.child], child_config(a))
        return

    cs = configs(ap, a)
    if a.trace_memory:
        if a.backend != "numpy":
            ap.error("--trace-memory traces the host's NumPy allocations: --backend numpy only")
        for c in cs:
            for kind, rc in [("minibert", False), *([("minibert/recompute", True)] if a.recompute else [])]:
                m = trace_memory(replace(c, recompute=rc))
                print(f"# {c.name} {kind}, B={c.B} T={c.T}, traced MiB: peaks forward {m['forward_peak']:.0f}, backward "
                      f"{m['backward_peak']:.0f}, update {m['update_peak']:.0f}; params {m['params']:.0f}, AdamW moments "
                      f"{m['moments']:.0f}, grads {m['grads']:.0f}; the forward's cache {m['cache']:.0f}, of which "
                      f"the encoder layers {m['layers']:.0f}", flush=True)
        return
    results = [bench_one(c, a.compare_torch, a.recompute) for c in cs]
    m = machine_info()
    blas = results[0]["peak"]["blas"]
    kernel = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']}" for b in blas) or "unknown"
    where = (f"GPU {results[0]['minibert'].get('gpu')} (cuBLAS, TF32 {'on' if a.tf32 else 'off'})"
             if a.backend == "cupy" else f"BLAS kernel {kernel}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} | {m['cpu']} | SIMD {'+'.join(m['simd'])} | {where} | "
          f"threads {a.threads} | "
          + (f"compiled loops {results[0]['minibert'].get('host_loops')} | " if a.backend == "numpy" else "")
          + f"OPENBLAS_CORETYPE={child_env(cs[0]).get('OPENBLAS_CORETYPE', '(unset)')} | "
          + (f"PyTorch CPU capability {results[0]['torch'].get('cpu_capability')} | " if "torch" in results[0] else "")
          + (f"--avx2 ({', '.join(f'{k}={v!r}' for k, v in AVX2_ENV.items() if k != 'OPENBLAS_CORETYPE')}) | "
             if a.avx2 else "")
          + f"peak {results[0]['peak']['peak_flops'] / 1e9:.0f} GFLOP/s float32")
    print_table(results)
    for r in results:
        mb = r["minibert"]
        torches = [r[k] for k in ["torch", *(k for k in r if k.startswith("torch/"))] if k in r]
        if "peak_device_mb" in mb:
            print(f"# {r['config']['name']}: device memory minibert {mb['peak_device_mb']:.0f} MB (CuPy pool)"
                  + "".join(f", torch/{t['attn']} {t['peak_device_mb']:.0f} MB" for t in torches)
                  + (" (max reserved)" if torches else ""))
        print(f"# {r['config']['name']}: minibert forward {mb['fwd_ms']:.1f} ms, backward {mb['bwd_ms']:.1f} ms, "
              f"AdamW {mb['opt_ms']:.1f} ms (medians); best step {1e3 * min(mb['step_times']):.1f} ms"
              + "".join(f", torch/{t['attn']} best {1e3 * min(t['step_times']):.1f} ms" for t in torches))
        if "minibert/recompute" in r:
            rc = r["minibert/recompute"]
            print(f"# {r['config']['name']}: --recompute: forward {rc['fwd_ms']:.1f} ms, backward {rc['bwd_ms']:.1f} ms; "
                  f"step {rc['step_ms'] / mb['step_ms']:.2f}x (paired {rc['step_paired_median']:.2f}x), peak RSS {rc['peak_rss_mb']:.0f} vs {mb['peak_rss_mb']:.0f} MB"
                  + (f", device memory {rc['peak_device_mb']:.0f} vs {mb['peak_device_mb']:.0f} MB (CuPy pool)"
                     if "peak_device_mb" in rc else ""))
    print(json.dumps(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
