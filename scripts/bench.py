"""Benchmark full BERT pretraining steps: forward, backward and AdamW update.

    python scripts/bench.py --preset mini --threads 2 --compare-torch
    python scripts/bench.py --preset tiny,mini,small --compare-torch --json out.json
    python scripts/bench.py -L 4 -H 256 -A 4 -I 1024 -V 8192 -T 128 -B 16
    python scripts/bench.py --preset mini --profile       # cProfile of minibert's step
    python scripts/bench.py --preset mini --profile-ops   # its time op by op (CUDA events on a GPU)
    python scripts/bench.py --backend cupy --preset base -B 64 --profile-kernels --compare-torch
                                                          # every CUDA kernel of both steps
    python scripts/bench.py --backend cupy --preset base -B 64 --compare-torch   # both on the GPU
    python scripts/bench.py --preset mini --compare-torch --torch-attn sdpa,eager  # both attentions
    python scripts/bench.py --preset mini --compare-torch --avx2   # both sides as on an AVX2-only CPU

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
machine is noisy.

MFU counts the model's useful FLOPs per step (every matmul of the forward, twice that for
the backward; the MLM decoder at the P labelled positions only, which is all the loss
needs) divided by step time and the measured matmul peak. The same count is used for
PyTorch, which also computes the decoder at the unlabelled positions.

pos/s is B x T / step time: every position of the batch, padding included (the JSON field
keeps its name, tokens_per_s). It is not the pretraining log's tok/s, which counts real
tokens only (the sum of attention_mask); the batch here has a quarter of its rows padded.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minibert.model import PRESETS as TRAIN_PRESETS  # noqa: E402

# L layers, H hidden, A heads, I intermediate; V and T default to 8192 and 128.
# The presets table beside BertConfig (minibert/model.py) is the source; BertConfig's field names
# map to the letters here.
_LETTERS = {"num_layers": "L", "hidden_size": "H", "num_heads": "A", "intermediate_size": "I",
            "vocab_size": "V"}
PRESETS = {name: {_LETTERS[k]: v for k, v in p.items() if k in _LETTERS} for name, p in TRAIN_PRESETS.items()}


@dataclass
class BenchConfig:
    name: str = "mini"
    L: int = 4
    H: int = 256
    A: int = 4
    I: int = 1024
    V: int = 8192
    T: int = 128
    B: int = 16
    dropout: float = 0.1
    max_predictions: int = 20  # labelled positions per sequence, at most (~15% of T)
    threads: int = 2
    warmup: int = 3
    steps: int = 10
    seed: int = 0
    lr: float = 1e-4
    eps: float = 1e-6
    weight_decay: float = 0.01
    hidden_act: str = "gelu"
    torch_attn: str = "sdpa"
    backend: str = "numpy"  # numpy: both on the CPU; cupy: minibert on CuPy, PyTorch on CUDA
    tf32: bool = False  # cuBLAS TF32 on the GPU (both sides); opt-in
    avx2: bool = False  # emulate an AVX2-only CPU on an AVX-512 one, both sides (AVX2_ENV)


# --avx2: what each library reads to stay on AVX2 code, so that an AVX-512 machine runs
# both sides as an AVX2-only CPU (Haswell, AMD Zen 2/3) would. OpenBLAS and Numba for
# minibert; MKL (PyTorch's GEMMs), oneDNN and ATen's own vectorised kernels for PyTorch.
# OPENBLAS_CORETYPE alone leaves PyTorch on AVX-512. NUMBA_CPU_NAME alone leaves Numba on
# AVX-512 too: it names the CPU model but keeps the host's features (avx512f included),
# and LLVM then writes 512-bit code; an empty NUMBA_CPU_FEATURES takes Haswell's own.
AVX2_ENV = {"OPENBLAS_CORETYPE": "Haswell", "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


# ----------------------------------------------------------------------------------------
# the shared batch and the FLOP count


def make_batch(c):
    """A realistic pretraining batch on the host: random ids, a few padded rows, ~15% labels."""
    rng = np.random.default_rng(c.seed)
    B, T, V = c.B, c.T, c.V
    ids = rng.integers(5, V, (B, T))  # (B, T)
    lengths = np.full(B, T)  # (B,)
    n_pad = max(1, B // 4)
    lengths[:n_pad] = rng.integers(T // 4, T, n_pad)  # a quarter of the rows end in padding
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int64)  # (B, T)
    ids = np.where(mask == 1, ids, 0)
    sep = (lengths * rng.uniform(0.3, 0.7, B)).astype(np.int64)  # (B,) where sentence B starts
    types = ((np.arange(T)[None] >= sep[:, None]) & (mask == 1)).astype(np.int64)  # (B, T)
    labels = np.full((B, T), -100)  # (B, T)
    for b in range(B):
        k = min(c.max_predictions, max(1, int(round(0.15 * lengths[b]))))
        pos = rng.choice(lengths[b], size=k, replace=False)
        labels[b, pos] = rng.integers(5, V, k)
    nsp = rng.integers(0, 2, B)  # (B,)
    return dict(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels, next_sentence_label=nsp)


def step_gemms(c, P):
    """The matmuls of one minibert training step as (batch, M, K, N, transpose-pattern) tuples.

    Each forward x @ w (M, K) x (K, N) has two backward matmuls of the same size:
    dx = dy @ w.T and dw = x.T @ dy."""
    N, D = c.B * c.T, c.H // c.A
    fwd = []
    for _ in range(c.L):
        fwd += [(1, N, c.H, 3 * c.H), (c.B * c.A, c.T, D, c.T), (c.B * c.A, c.T, c.T, D), (1, N, c.H, c.H),
                (1, N, c.H, c.I), (1, N, c.I, c.H)]
    fwd += [(1, c.B, c.H, c.H), (1, P, c.H, c.H), (1, P, c.H, c.V), (1, c.B, c.H, 2)]
    return fwd


def step_flops(c, P):
    return 3 * sum(2 * b * m * k * n for b, m, k, n in step_gemms(c, P))


def n_labels(batch):
    return int((batch["labels"] != -100).sum())


# ----------------------------------------------------------------------------------------
# children


def _limit_threads(n):
    from threadpoolctl import threadpool_limits
    threadpool_limits(n)


def blas_info():
    from threadpoolctl import threadpool_info
    return [{k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "threading_layer")}
            for d in threadpool_info() if d.get("user_api") == "blas"]


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
    from minibert import kernels
    if not kernels.use_numba:
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


def build_minibert(c):
    """minibert's model, AdamW and the batch for config c, on c.threads host threads."""
    from minibert.model import BertConfig, BertForPreTraining
    from minibert.optim import AdamW
    _limit_threads(c.threads)
    mc = BertConfig(vocab_size=c.V, hidden_size=c.H, num_layers=c.L, num_heads=c.A, intermediate_size=c.I,
                    dropout=c.dropout, attention_dropout=c.dropout, hidden_act=c.hidden_act, dtype="float32")
    model = BertForPreTraining(mc, seed=c.seed)
    return model, AdamW(model.params, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay), make_batch(c)


def minibert_training_step(c):
    """step(i): one forward, backward and AdamW update of minibert for config c with dropout
    keyed by (seed, i), no synchronisation; returns the loss (a device scalar on CuPy)."""
    from minibert import backend
    model, opt, batch = build_minibert(c)

    def step(i):
        out, cache = model.forward(batch, rng=backend.rng((c.seed, i)))
        opt.step(model.backward(cache))
        return out["loss"]
    return step


def setup_minibert(c):
    """Build minibert, AdamW and the batch; return (step function, info function)."""
    from minibert import backend
    model, opt, batch = build_minibert(c)
    count = [0]

    def step():
        """One training step, timed in parts: forward (with the loss), backward, AdamW."""
        count[0] += 1
        t0 = time.perf_counter()
        out, cache = model.forward(batch, rng=backend.rng((c.seed, count[0])))
        loss = float(out["loss"])  # the one host sync
        t1 = time.perf_counter()
        grads = model.backward(cache)
        backend.synchronize()
        t2 = time.perf_counter()
        opt.step(grads)
        backend.synchronize()
        return {"loss": loss, "fwd_s": t1 - t0, "bwd_s": t2 - t1, "opt_s": time.perf_counter() - t2}

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


def setup_torch(c):
    import torch
    import transformers
    torch.set_num_threads(c.threads)
    _limit_threads(c.threads)
    torch.manual_seed(c.seed)
    hc = transformers.BertConfig(vocab_size=c.V, hidden_size=c.H, num_hidden_layers=c.L, num_attention_heads=c.A,
                                 intermediate_size=c.I, max_position_embeddings=512, hidden_dropout_prob=c.dropout,
                                 attention_probs_dropout_prob=c.dropout, hidden_act=c.hidden_act,
                                 attn_implementation=c.torch_attn)
    cuda = c.backend == "cupy"  # both sides on the GPU
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = c.tf32
        torch.backends.cudnn.allow_tf32 = c.tf32
    device = "cuda" if cuda else "cpu"
    model = transformers.BertForPreTraining(hc).train().to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=c.lr, eps=c.eps)
    batch = {k: torch.from_numpy(v).to(device) for k, v in make_batch(c).items()}

    def step():
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        if cuda:
            torch.cuda.synchronize()  # the update too, as minibert's step waits for it
        return loss

    def info():
        out = dict(impl="torch", torch=torch.__version__, transformers=transformers.__version__,
                   attn=model.config._attn_implementation, threads=torch.get_num_threads(), blas=blas_info(),
                   cpu_capability=torch.backends.cpu.get_cpu_capability())
        if cuda:
            out["peak_device_mb"] = torch.cuda.max_memory_reserved() / 2**20
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
    import collections
    import tempfile
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
    import cProfile
    import pstats
    step, _ = setup_minibert(c)
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


def setup_bound(c):
    """The machine's float32 matmul peak on this BLAS and thread count (a 2048^3 product on
    the host, 8192^3 on the GPU, where a smaller one is too short to time),
    and the step's own matmuls run alone (each forward product and both of its backward
    products, with their transposes): the time no implementation of the step can beat.
    A live child like the others, so it is measured under the same load."""
    from minibert import backend
    _limit_threads(c.threads)
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


def _child_env(c):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[k] = str(c.threads)
    env["MINIBERT_BACKEND"] = c.backend
    env["CUPY_TF32"] = "1" if c.tf32 else "0"
    if c.avx2:
        env.update(AVX2_ENV)
    return env


def _cmd(kind, c):
    return [sys.executable, os.path.abspath(__file__), "--child", kind, "--child-config", json.dumps(asdict(c))]


class Child:
    """A live child process that runs one training step per request."""

    def __init__(self, kind, c):
        self.kind = kind
        self.p = subprocess.Popen(_cmd(kind, c), env=_child_env(c), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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


def bench_one(c, compare_torch):
    """All children alive at once, their steps interleaved (the order alternating every
    step), so that all see the same machine load; medians over the timed steps. One PyTorch
    child per attention in c.torch_attn ("sdpa,eager": both in the same run)."""
    attns = c.torch_attn.split(",") if compare_torch else []
    torch_kinds = [f"torch/{a}" for a in attns]
    kinds = ["minibert", *torch_kinds, "bound"]
    children = {k: Child("torch", replace(c, torch_attn=k[6:])) if k in torch_kinds else Child(k, c) for k in kinds}
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
    for part in ("fwd", "bwd", "opt"):  # where minibert's step goes
        mb[part + "_ms"] = statistics.median(r[part + "_s"] for r in reps["minibert"]) * 1e3
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


def print_table(results):
    head = (f"{'config':<7} {'impl':<11} {'step ms':>8} {'pos/s':>8} {'peak RSS MB':>11} {'MFU':>6} "
            f"{'bound ms':>8} {'x bound':>7} {'pos/s ratio':>11} {'paired':>6} {'at bound':>8} {'RSS ratio':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        name = r["config"]["name"]
        for kind in ["minibert", "torch", *(k for k in r if k.startswith("torch/"))]:
            if kind not in r:
                continue
            x = r[kind]
            bound = f"{x['matmul_bound_ms']:8.1f} {x['step_over_bound']:7.2f}" if kind == "minibert" else f"{'':8} {'':7}"
            # minibert's row: its ratios to the first PyTorch row; a further PyTorch row: to that row
            rr = r.get("ratios") if kind == "minibert" else x.get("ratios")
            ratios = ""
            if rr:
                ratios = (f"{rr['tokens_per_s']:11.2f} {rr['tokens_per_s_paired_median']:6.2f} {rr['at_bound']:8.2f} "
                          f"{rr['peak_rss']:9.2f}")
            label = kind if kind == "minibert" else f"torch/{x['attn']}"
            print(f"{name:<7} {label:<11} {x['step_ms']:8.1f} {x['tokens_per_s']:8.0f} {x['peak_rss_mb']:11.0f} "
                  f"{100 * x['mfu']:5.1f}% {bound} {ratios}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mini", help="comma-separated presets: " + ", ".join(PRESETS))
    for k in ("L", "H", "A", "I", "V", "T", "B"):
        ap.add_argument(f"-{k}", type=int, default=None, help=f"override {k}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--hidden-act", default="gelu", choices=["gelu", "gelu_tanh"])
    ap.add_argument("--torch-attn", default="sdpa",
                    help="PyTorch's attention: sdpa, eager, or both in one run (sdpa,eager; ratios to each)")
    ap.add_argument("--compare-torch", action="store_true")
    ap.add_argument("--backend", default=os.environ.get("MINIBERT_BACKEND", "numpy"), choices=["numpy", "cupy"],
                    help="cupy: minibert on CuPy and PyTorch on CUDA")
    ap.add_argument("--tf32", action="store_true", help="allow cuBLAS TF32 on the GPU (both sides; off by default)")
    ap.add_argument("--avx2", action="store_true",
                    help="on an AVX-512 CPU, run both sides on AVX2 code, as an AVX2-only CPU would: "
                         + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()))
    ap.add_argument("--profile", action="store_true", help="cProfile minibert's timed steps (no table)")
    ap.add_argument("--profile-ops", action="store_true",
                    help="minibert's step op by op: CUDA-event device time on cupy, host time on numpy (no table)")
    ap.add_argument("--profile-kernels", action="store_true",
                    help="on cupy: every CUDA kernel of minibert's step (and PyTorch's with --compare-torch), "
                         "from torch.profiler's CUPTI trace (no table)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-config", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.torch_attn or not set(a.torch_attn.split(",")) <= {"sdpa", "eager"}:
        ap.error(f"--torch-attn: sdpa, eager or sdpa,eager, not {a.torch_attn!r}")

    if a.child:
        c = BenchConfig(**json.loads(a.child_config))
        if a.child == "profile":
            profile_minibert(c)
        elif a.child == "profile_ops":
            profile_ops(c)
        elif a.child.startswith("profile_kernels"):
            profile_kernels(c, "torch" if a.child.endswith("torch") else "minibert")
        else:
            serve({"minibert": setup_minibert, "torch": setup_torch, "bound": setup_bound}[a.child], c)
        return

    results = []
    for name in a.preset.split(","):
        kw = dict(PRESETS[name]) if name in PRESETS else {}
        kw.update({k: getattr(a, k) for k in ("L", "H", "A", "I", "V", "T", "B") if getattr(a, k) is not None})
        c = BenchConfig(name=name, threads=a.threads, steps=a.steps, warmup=a.warmup, dropout=a.dropout,
                        hidden_act=a.hidden_act, torch_attn=a.torch_attn, backend=a.backend, tf32=a.tf32,
                        avx2=a.avx2, **kw)
        if a.profile or a.profile_ops:
            subprocess.run(_cmd("profile" if a.profile else "profile_ops", c), env=_child_env(c))
            continue
        if a.profile_kernels:
            subprocess.run(_cmd("profile_kernels", c), env=_child_env(c))
            for attn in c.torch_attn.split(",") if a.compare_torch else []:
                subprocess.run(_cmd("profile_kernels_torch", replace(c, torch_attn=attn)), env=_child_env(c))
            continue
        results.append(bench_one(c, a.compare_torch))
    if a.profile or a.profile_ops or a.profile_kernels:
        return
    m = machine_info()
    blas = results[0]["peak"]["blas"]
    kernel = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']}" for b in blas) or "unknown"
    where = (f"GPU {results[0]['minibert'].get('gpu')} (cuBLAS, TF32 {'on' if a.tf32 else 'off'})"
             if a.backend == "cupy" else f"BLAS kernel {kernel}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} | {m['cpu']} | SIMD {'+'.join(m['simd'])} | {where} | "
          f"threads {a.threads} | "
          + (f"compiled loops {results[0]['minibert'].get('host_loops')} | " if a.backend == "numpy" else "")
          + f"OPENBLAS_CORETYPE={_child_env(c).get('OPENBLAS_CORETYPE', '(unset)')} | "
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
    print(json.dumps(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
