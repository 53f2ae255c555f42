"""What scripts/bench.py (the timed comparison) and scripts/profile_step.py (the profiles)
share: one benchmark configuration, its batch and FLOP count, minibert's and PyTorch's
training steps, the child processes' environment, and the command-line options that
describe a run.

Both scripts run each measurement in a child process of their own, started with the
environment child_env gives it (thread counts, backend, TF32, the --avx2 variables), because
OpenBLAS, Numba, MKL and oneDNN read those variables once, when they load.

Shapes: B sequences of T positions; L layers, H hidden, A heads (D = H / A), I intermediate,
V vocabulary; P labelled positions in the batch.
"""
import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minibert.model import IGNORE_INDEX, PRESETS as TRAIN_PRESETS  # noqa: E402

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
    recompute: bool = False  # minibert's activation recomputation (BertBase.recompute)
    precision: str = "fp32"  # bf16 / fp16: minibert's --precision, PyTorch's autocast (fp16: with loss scaling)


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
    labels = np.full((B, T), IGNORE_INDEX)  # (B, T)
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
    return int((batch["labels"] != IGNORE_INDEX).sum())


# ----------------------------------------------------------------------------------------
# the two training steps


def limit_threads(n):
    from threadpoolctl import threadpool_limits
    threadpool_limits(n)


def blas_info():
    from threadpoolctl import threadpool_info
    return [{k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "threading_layer")}
            for d in threadpool_info() if d.get("user_api") == "blas"]


def build_minibert(c):
    """minibert's model, AdamW and the batch for config c, on c.threads host threads."""
    from minibert.model import BertConfig, BertForPreTraining
    from minibert.optim import AdamW
    limit_threads(c.threads)
    mc = BertConfig(vocab_size=c.V, hidden_size=c.H, num_layers=c.L, num_heads=c.A, intermediate_size=c.I,
                    dropout=c.dropout, attention_dropout=c.dropout, hidden_act=c.hidden_act, dtype="float32")
    model = BertForPreTraining(mc, seed=c.seed)
    model.recompute = c.recompute
    return model, AdamW(model.params, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay), make_batch(c)


def minibert_update(c, opt):
    """(backward(model, cache) -> grads, apply(grads)): the backward and the AdamW update of
    minibert's training loop at c.precision. fp16 as minibert/train.py: the loss scaled in
    the backward; apply unscales, and skips the step on the device when the norm is not finite."""
    from minibert import backend
    from minibert.mixed_precision import optimizer_step, scaler_for
    from minibert.optim import clip_grad_norm
    scaler = scaler_for(c.precision)

    def backward(model, cache):
        with backend.gemm_precision(c.precision):
            return model.backward(cache) if scaler is None else model.backward(cache, dloss=scaler.scale)

    def apply(grads):
        if scaler is None:
            opt.step(grads)  # no norm to measure: the plain step as before
            return
        scaler.unscale(grads)
        optimizer_step(opt, grads, None, clip_grad_norm(grads, None), scaler)  # the training loop's fp16 step
    return backward, apply


def minibert_training_step(c):
    """step(i): one forward, backward and AdamW update of minibert for config c with dropout
    keyed by (seed, i), no synchronisation; returns the loss (a device scalar on CuPy)."""
    from minibert import backend, philox
    model, opt, batch = build_minibert(c)
    backward, apply = minibert_update(c, opt)

    def step(i):
        with backend.gemm_precision(c.precision):
            out, cache = model.forward(batch, rng=philox.rng((c.seed, i)))
        apply(backward(model, cache))
        return out["loss"]
    return step


def minibert_timed_step(c):
    """step(): one training step of minibert for config c, timed in parts: forward (with the
    loss read back, the one host sync), backward and AdamW, each waited for; returns the loss
    and the three times in seconds."""
    from minibert import backend, philox
    model, opt, batch = build_minibert(c)
    backward, apply = minibert_update(c, opt)
    count = [0]

    def step():
        count[0] += 1
        t0 = time.perf_counter()
        with backend.gemm_precision(c.precision):
            out, cache = model.forward(batch, rng=philox.rng((c.seed, count[0])))
        loss = float(out["loss"])  # the one host sync
        t1 = time.perf_counter()
        grads = backward(model, cache)
        backend.synchronize()
        t2 = time.perf_counter()
        apply(grads)  # fp16: with the unscale and the finiteness check
        backend.synchronize()
        return {"loss": loss, "fwd_s": t1 - t0, "bwd_s": t2 - t1, "opt_s": time.perf_counter() - t2}
    return step


def setup_torch(c):
    """transformers.BertForPreTraining with torch.optim.AdamW on the same batch; return
    (step function, info function). On a GPU the step waits for the update."""
    import torch
    import transformers
    torch.set_num_threads(c.threads)
    limit_threads(c.threads)
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

    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(c.precision)  # autocast's 16-bit type, or None
    scaler = torch.amp.GradScaler(device) if c.precision == "fp16" else None

    def step():
        with torch.autocast(device, dtype=amp, enabled=amp is not None):
            out = model(**batch)
        if scaler is None:
            out.loss.backward()
            opt.step()
        else:
            scaler.scale(out.loss).backward()
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        if cuda:
            torch.cuda.synchronize()  # the update too, as minibert's step waits for it
        return loss

    def info():
        out = dict(impl="torch", precision=c.precision, torch=torch.__version__, transformers=transformers.__version__,
                   attn=model.config._attn_implementation, threads=torch.get_num_threads(), blas=blas_info(),
                   cpu_capability=torch.backends.cpu.get_cpu_capability())
        if cuda:
            out["peak_device_mb"] = torch.cuda.max_memory_reserved() / 2**20
        return out

    return step, info


# ----------------------------------------------------------------------------------------
# child processes and the command line


def child_env(c):
    """The environment of a child process measuring config c."""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[k] = str(c.threads)
    env["MINIBERT_BACKEND"] = c.backend
    env["CUPY_TF32"] = "1" if c.tf32 else "0"
    if c.avx2:
        env.update(AVX2_ENV)
    return env


def child_command(script, kind, c):
    """The command that runs script (a path) as a child of the given kind for config c."""
    return [sys.executable, os.path.abspath(script), "--child", kind, "--child-config", json.dumps(asdict(c))]


def child_config(a):
    """The config a child was started with (--child-config)."""
    return BenchConfig(**json.loads(a.child_config))


def add_config_arguments(ap):
    """The options that describe the model, the batch, the run and the machine kind."""
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
    ap.add_argument("--compare-torch", action="store_true",
                    help="PyTorch's transformers.BertForPreTraining too, on the same batch")
    ap.add_argument("--backend", default=os.environ.get("MINIBERT_BACKEND", "numpy"), choices=["numpy", "cupy"],
                    help="cupy: minibert on CuPy and PyTorch on CUDA")
    ap.add_argument("--tf32", action="store_true", help="allow cuBLAS TF32 on the GPU (both sides; off by default)")
    ap.add_argument("--avx2", action="store_true",
                    help="on an AVX-512 CPU, run both sides on AVX2 code, as an AVX2-only CPU would: "
                         + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()))
    ap.add_argument("--recompute", action="store_true", help="a second minibert child with activation "
                    "recomputation (minibert/recompute): its peak memory and step time beside the plain one's")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="bf16 / fp16: minibert's "
                    "--precision (16-bit GEMM operands; emulated on the host) against PyTorch's autocast at the same "
                    "type (fp16: both with dynamic loss scaling)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-config", default=None, help=argparse.SUPPRESS)


def configs(ap, a):
    """One BenchConfig per preset named in --preset, with the overrides applied."""
    if not a.torch_attn or not set(a.torch_attn.split(",")) <= {"sdpa", "eager"}:
        ap.error(f"--torch-attn: sdpa, eager or sdpa,eager, not {a.torch_attn!r}")
    out = []
    for name in a.preset.split(","):
        kw = dict(PRESETS[name]) if name in PRESETS else {}
        kw.update({k: getattr(a, k) for k in ("L", "H", "A", "I", "V", "T", "B") if getattr(a, k) is not None})
        out.append(BenchConfig(name=name, threads=a.threads, steps=a.steps, warmup=a.warmup, dropout=a.dropout,
                               hidden_act=a.hidden_act, torch_attn=a.torch_attn, backend=a.backend, tf32=a.tf32,
                               avx2=a.avx2, precision=a.precision, **kw))
    return out
