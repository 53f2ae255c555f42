"""The pretraining program: corpus -> tokenizer -> MLM + NSP training -> checkpoints.

    python scripts/pretrain.py                       # the whole default job, tiny preset, CPU
    python scripts/pretrain.py --preset mini --backend cupy --steps 20000 --out runs/mini

One training step (AdamW with linear warmup then linear decay, Devlin et al. 2019 A.2):

    for each of accum micro-batches:  out, cache = model.forward(batch, rng=(seed, step, micro))
                                       grads += model.backward(cache) / accum
    norm = clip_grad_norm(grads, grad_clip); stop if not finite
    optimizer.step(grads, lr=lr_at(step))

Exact resume. Everything random is a function of counters: dropout masks of micro-batch m of
step s come from the stream (seed, s, m); the instances and masks of data epoch e come from
(seed, e). A checkpoint therefore holds all the state there is: params, AdamW moments and
step count, the step, the data position (epoch, next batch) and the seed. Resuming from it
replays exactly the steps an uninterrupted run would take, so the final parameters are
bitwise identical (NumPy backend; cuBLAS may pick other reduction orders).

Run directory OUT:
    tokenizer.json           the tokenizer (trained here unless --tokenizer is given)
    last.json / last.*.safetensors   the latest checkpoint (every --save-every steps, at the
                             end, and on Ctrl-C)
    best.json / best.*.safetensors   the checkpoint with the lowest held-out loss
    metrics.jsonl            one JSON line per log interval and per evaluation
"""
import argparse
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields


from minibert import backend
from minibert.checkpoint import CheckpointError, checkpoint_exists, load_checkpoint, save_checkpoint
from minibert.model import PRESETS, BertConfig, BertForPreTraining, check_params
from minibert.tokenizer import SPECIAL_TOKENS

@dataclass
class TrainConfig:
    """Everything a run depends on (the model's shape is in BertConfig)."""
    preset: str = "tiny"
    backend: str = "numpy"
    seed: int = 0
    steps: int = 3500
    batch_size: int = 32
    accum: int = 1  # micro-batches per optimizer step (gradient accumulation)
    seq_len: int = 128
    max_predictions: int = 20
    short_seq_prob: float = 0.1
    lr: float = 1e-3
    min_lr: float = 0.0
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    corpus: list = field(default_factory=list)  # files / dirs / globs; empty = embedded stdlib docstrings
    heldout_fraction: float = 0.05
    tokenizer: str = ""  # path of a saved tokenizer; empty = train one on the corpus
    vocab_size: int = 8192
    out: str = "runs/pretrain"
    resume: bool = False
    save_every: int = 500
    eval_every: int = 500
    eval_batches: int = 20
    log_every: int = 50
    fill_mask_examples: int = 5


# settings that change what an exact resume computes: a resumed run must match them
_RESUME_KEYS = ("seed", "batch_size", "accum", "seq_len", "max_predictions", "short_seq_prob", "corpus",
                "heldout_fraction")


def log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------
# data and tokenizer


def load_documents(tc):
    """(train documents, held-out documents) from --corpus or the embedded default."""
    from minibert import data
    if tc.corpus:
        docs = data.read_documents(tc.corpus)
        train, heldout = data.split_documents(docs, tc.heldout_fraction)
        if not train or not heldout:  # a tiny corpus: still evaluate on something
            raise ValueError(f"corpus {tc.corpus} has {len(docs)} documents: too few to hold out "
                             f"{tc.heldout_fraction:.0%} for evaluation and train on the rest")
        return train, heldout
    all_docs = data.default_corpus("all", heldout_fraction=tc.heldout_fraction)
    return data.split_documents(all_docs, tc.heldout_fraction)


def get_tokenizer(tc, train_docs):
    """Load --tokenizer, reuse OUT/tokenizer.json, or train one on the training documents."""
    from minibert.tokenizer import BPETokenizer
    path = os.path.join(tc.out, "tokenizer.json")
    if tc.tokenizer:
        tok = BPETokenizer.load(tc.tokenizer)
    elif os.path.exists(path):
        return BPETokenizer.load(path)
    else:
        t0 = time.time()
        log(f"training a byte-level BPE tokenizer (vocab {tc.vocab_size:,}) on {len(train_docs):,} documents")
        tok = BPETokenizer.train_from_iterator((d.text for d in train_docs), tc.vocab_size,
                                               special_tokens=SPECIAL_TOKENS, progress=True)
        log(f"tokenizer trained in {time.time() - t0:.1f} s")
    for s in SPECIAL_TOKENS:
        if s not in tok.special_tokens:
            raise ValueError(f"tokenizer {tc.tokenizer or path} lacks the special token {s!r}; "
                             f"train it with special tokens {SPECIAL_TOKENS}")
    os.makedirs(tc.out, exist_ok=True)
    tok.save(path)
    return tok


def build_data(tc, tok, train_docs, heldout_docs):
    from minibert.data import PretrainingData, TokenizedCorpus
    t0 = time.time()
    train_c = TokenizedCorpus.build(train_docs, tok)
    held_c = TokenizedCorpus.build(heldout_docs, tok)
    kw = dict(max_seq_len=tc.seq_len, max_predictions=tc.max_predictions, short_seq_prob=tc.short_seq_prob)
    train = PretrainingData(train_c, tok, seed=tc.seed, **kw)
    held = PretrainingData(held_c, tok, seed=tc.seed, **kw)
    log(f"corpus: {train_c.num_documents:,} train documents ({train_c.num_tokens:,} tokens), "
        f"{held_c.num_documents:,} held out ({held_c.num_tokens:,} tokens); "
        f"{train.num_instances(0):,} instances per epoch; ready in {time.time() - t0:.1f} s")
    return train, held


# ----------------------------------------------------------------------------------------
# evaluation


def evaluate(model, batches):
    """Held-out MLM loss (mean over labelled positions), accuracy, perplexity; NSP accuracy."""
    mlm_loss_sum, mlm_correct, mlm_count, nsp_loss_sum, nsp_correct, nsp_count = 0.0, 0, 0, 0.0, 0, 0
    for batch in batches:
        out = model.predict(batch)
        mlm_loss_sum += float(out["mlm_loss"]) * out["mlm_count"]
        mlm_correct += int(out["mlm_correct"])
        mlm_count += out["mlm_count"]
        nsp_loss_sum += float(out["nsp_loss"]) * out["nsp_count"]
        nsp_correct += int(out["nsp_correct"])
        nsp_count += out["nsp_count"]
    mlm_loss = mlm_loss_sum / max(mlm_count, 1)
    return {"mlm_loss": mlm_loss, "mlm_acc": mlm_correct / max(mlm_count, 1),
            "perplexity": math.exp(min(mlm_loss, 50.0)), "nsp_loss": nsp_loss_sum / max(nsp_count, 1),
            "nsp_acc": nsp_correct / max(nsp_count, 1), "loss": mlm_loss + nsp_loss_sum / max(nsp_count, 1),
            "mlm_positions": mlm_count, "pairs": nsp_count}


# ----------------------------------------------------------------------------------------
# checkpoints


def save_run_checkpoint(tc, name, model, opt, step, position, tok, best_loss):
    meta = {"kind": "minibert-pretraining", "config": model.config.to_dict(), "train": asdict(tc),
            "step": step, "data_position": list(position), "tokenizer_fingerprint": tok.fingerprint(),
            "optim": opt.state_dict()[1], "best_eval_loss": best_loss,
            # every random draw is a function of these counters (see the module docstring)
            "rng": {"seed": tc.seed, "dropout_stream": "(seed, step, micro_batch)", "data_stream": "(seed, epoch)"}}
    tensors, _ = opt.state_dict()
    save_checkpoint(tc.out, name, model.params, tensors, meta)


def restore(tc, model, opt, tok):
    """Load OUT/last into model and opt; returns (step, data position, best loss)."""
    params, tensors, meta = load_checkpoint(tc.out, "last")
    if meta.get("kind") != "minibert-pretraining":
        raise CheckpointError(f"{tc.out}/last.json is not a pretraining checkpoint (kind {meta.get('kind')!r})")
    if meta["config"] != model.config.to_dict():
        diff = {k: (v, model.config.to_dict().get(k)) for k, v in meta["config"].items() if model.config.to_dict().get(k) != v}
        raise ValueError(f"cannot resume {tc.out}: the model config differs from the checkpoint's "
                         f"(field: (checkpoint, now) {diff})")
    if meta["tokenizer_fingerprint"] != tok.fingerprint():
        raise ValueError(f"cannot resume {tc.out}: the tokenizer differs from the one the checkpoint was trained with")
    saved = meta["train"]
    diff = {k: (saved.get(k), getattr(tc, k)) for k in _RESUME_KEYS if saved.get(k) != getattr(tc, k)}
    if diff:
        raise ValueError(f"cannot resume {tc.out} exactly: settings differ from the checkpoint's "
                         f"(setting: (checkpoint, now) {diff})")
    check_params(params, {k: tuple(v.shape) for k, v in model.params.items()}, model.config.dtype)
    for k, v in params.items():
        model.params[k][...] = backend.to_device(v)
    opt.load_state_dict(tensors, meta["optim"])
    return meta["step"], tuple(meta["data_position"]), meta.get("best_eval_loss")


# ----------------------------------------------------------------------------------------
# the training loop


class Metrics:
    """metrics.jsonl writer; on resume, lines past the resumed step are dropped."""

    def __init__(self, path, resume_step=None):
        self.path = path
        if resume_step is not None and os.path.exists(path):
            with open(path) as f:
                keep = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= resume_step]
            with open(path, "w") as f:
                f.writelines(keep)
        elif resume_step is None and os.path.exists(path):
            os.remove(path)

    def write(self, rec):
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def pretrain(tc, model_overrides=None):
    """Run (or resume) pretraining; returns (model, tokenizer, final held-out metrics)."""
    from minibert.optim import AdamW, accumulate, clip_grad_norm, lr_at
    backend.use(tc.backend)
    if tc.preset not in PRESETS:
        raise ValueError(f"unknown preset {tc.preset!r}: choose from {sorted(PRESETS)}")
    t_start = time.time()
    os.makedirs(tc.out, exist_ok=True)
    if not tc.resume and checkpoint_exists(tc.out, "last"):
        raise ValueError(f"{tc.out} already holds a run (last.json): pass --resume to continue it, "
                         f"or choose another --out")
    if tc.resume and not checkpoint_exists(tc.out, "last"):
        raise ValueError(f"--resume: no checkpoint {tc.out}/last.json to resume from")

    train_docs, heldout_docs = load_documents(tc)
    tok = get_tokenizer(tc, train_docs)
    cfg = dict(PRESETS[tc.preset], vocab_size=tok.vocab_size, max_position=max(512, tc.seq_len))
    cfg.update(model_overrides or {})
    config = BertConfig(**cfg)
    if config.vocab_size != tok.vocab_size:
        raise ValueError(f"vocab_size {config.vocab_size} differs from the tokenizer's {tok.vocab_size}")
    train_data, held_data = build_data(tc, tok, train_docs, heldout_docs)
    eval_set = held_data.eval_batches(tc.batch_size, tc.eval_batches)

    model = BertForPreTraining(config, seed=tc.seed)
    opt = AdamW(model.params, lr=tc.lr, weight_decay=tc.weight_decay)
    step, position, best_loss = 0, (0, 0), None
    if tc.resume:
        step, position, best_loss = restore(tc, model, opt, tok)
        log(f"resumed {tc.out} at step {step} (data epoch {position[0]}, batch {position[1]})")
    metrics = Metrics(os.path.join(tc.out, "metrics.jsonl"), resume_step=step if tc.resume else None)
    with open(os.path.join(tc.out, "config.json"), "w") as f:
        json.dump({"model": config.to_dict(), "train": asdict(tc)}, f, indent=2)
    log(f"model: BERT {tc.preset} (L={config.num_layers}, H={config.hidden_size}, A={config.num_heads}), "
        f"{model.num_parameters():,} parameters, {config.dtype}, backend {backend.name}; "
        f"{tc.steps:,} steps of {tc.batch_size * tc.accum} sequences x {tc.seq_len} tokens")

    batches = train_data.batches(tc.batch_size, start=position)
    interrupted = []
    old_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))  # finish the step, then save
    win = dict(loss=0.0, mlm_loss=0.0, nsp_loss=0.0, mlm_correct=0, mlm_count=0, nsp_correct=0, nsp_count=0,
               tokens=0, steps=0, t0=time.time())
    t_loop, step0 = time.time(), step
    last_saved = step if tc.resume else None
    try:
        while step < tc.steps:
            lr = lr_at(step, tc.lr, min(tc.warmup, tc.steps), tc.steps, tc.min_lr)
            grads = None
            for micro in range(tc.accum):
                next_position, batch = next(batches)
                out, cache = model.forward(batch, train=True, rng=backend.rng((tc.seed, step, micro)))
                grads = accumulate(grads, model.backward(cache), 1.0 / tc.accum)  # the mean over micro-batches
                for k in ("loss", "mlm_loss", "nsp_loss"):
                    win[k] += out[k] / tc.accum  # device scalars: no host sync until the log line
                for k in ("mlm_correct", "mlm_count", "nsp_correct", "nsp_count"):
                    win[k] += out[k]
                win["tokens"] += int(batch["attention_mask"].sum())
                position = next_position
            norm = clip_grad_norm(grads, tc.grad_clip)
            if not math.isfinite(norm) or not math.isfinite(float(out["loss"])):
                kept = f"{tc.out}/last.json (step {last_saved})" if last_saved is not None else "none was saved yet"
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {step + 1} (grad norm {norm}); stopping without "
                    f"saving. The last good checkpoint: {kept}. Try a lower --lr or more --warmup")
            opt.step(grads, lr=lr)
            step += 1
            win["steps"] += 1
            win["grad_norm"] = norm

            if step % tc.log_every == 0 or step == tc.steps:
                dt = time.time() - win["t0"]
                n = win["steps"]
                rec = {"step": step, "loss": float(win["loss"]) / n, "mlm_loss": float(win["mlm_loss"]) / n,
                       "nsp_loss": float(win["nsp_loss"]) / n,
                       "mlm_acc": int(win["mlm_correct"]) / max(int(win["mlm_count"]), 1),
                       "nsp_acc": int(win["nsp_correct"]) / max(int(win["nsp_count"]), 1),
                       "lr": lr, "grad_norm": norm, "ms_per_step": 1000 * dt / n, "tokens_per_s": win["tokens"] / dt,
                       "epoch": position[0], "elapsed_s": time.time() - t_start}
                left = (time.time() - t_loop) / (step - step0) * (tc.steps - step)
                log(f"step {step:>{len(str(tc.steps))}}/{tc.steps} | loss {rec['loss']:.3f} | "
                    f"mlm {rec['mlm_loss']:.3f} acc {rec['mlm_acc']:.3f} | nsp {rec['nsp_loss']:.3f} "
                    f"acc {rec['nsp_acc']:.2f} | lr {lr:.1e} | norm {norm:.2f} | {rec['ms_per_step']:.0f} ms | "
                    f"{rec['tokens_per_s']:,.0f} tok/s | left {fmt_time(left)}")
                metrics.write(rec)
                win = dict(loss=0.0, mlm_loss=0.0, nsp_loss=0.0, mlm_correct=0, mlm_count=0, nsp_correct=0,
                           nsp_count=0, tokens=0, steps=0, t0=time.time())

            if step % tc.eval_every == 0 or step == tc.steps:
                ev = evaluate(model, eval_set)
                metrics.write({"step": step, **{f"eval_{k}": v for k, v in ev.items()}})
                log(f"eval  step {step} | held-out mlm loss {ev['mlm_loss']:.3f} acc {ev['mlm_acc']:.3f} "
                    f"ppl {ev['perplexity']:.1f} | nsp acc {ev['nsp_acc']:.3f}")
                if best_loss is None or ev["loss"] < best_loss:
                    best_loss = ev["loss"]
                    save_run_checkpoint(tc, "best", model, opt, step, position, tok, best_loss)
            if step % tc.save_every == 0 or step == tc.steps or interrupted:
                save_run_checkpoint(tc, "last", model, opt, step, position, tok, best_loss)
                last_saved = step
            if interrupted:
                log(f"interrupted: saved {tc.out}/last.json at step {step}; continue with --resume")
                raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, old_handler)
    ev = evaluate(model, eval_set)
    log(f"done: {step} steps in {fmt_time(time.time() - t_start)} | held-out mlm loss {ev['mlm_loss']:.3f} "
        f"acc {ev['mlm_acc']:.3f} ppl {ev['perplexity']:.1f} | nsp acc {ev['nsp_acc']:.3f} | saved in {tc.out}")
    return model, tok, ev, heldout_docs


# ----------------------------------------------------------------------------------------
# command line


def build_parser():
    p = argparse.ArgumentParser(description="Pretrain BERT (MLM + NSP) with minibert. With no arguments: the "
                                "whole default job on the embedded corpus (tiny preset, CPU, ~10 minutes).")
    d = TrainConfig()
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS))
    p.add_argument("--backend", default=os.environ.get("MINIBERT_BACKEND", d.backend), choices=["numpy", "cupy"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    for name in ("seed", "steps", "batch_size", "accum", "seq_len", "max_predictions", "warmup", "save_every",
                 "eval_every", "eval_batches", "log_every", "vocab_size", "fill_mask_examples"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "min_lr", "weight_decay", "grad_clip", "short_seq_prob", "heldout_fraction"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--corpus", nargs="+", default=[], help="text files, directories or globs "
                   "(default: the docstrings of this Python's standard library)")
    p.add_argument("--tokenizer", default="", help="a saved tokenizer.json (default: train one)")
    p.add_argument("--out", default=d.out, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    # model shape overrides (default: the preset's)
    for name in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "max_position"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in ("dropout", "attention_dropout"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    p.add_argument("--hidden-act", default=None, choices=["gelu", "gelu_tanh"])
    return p


def config_from_args(args):
    tc = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    overrides = {k: getattr(args, k) for k in ("num_layers", "hidden_size", "num_heads", "intermediate_size",
                                               "max_position", "dropout", "attention_dropout", "hidden_act")
                 if getattr(args, k) is not None}
    overrides["dtype"] = args.dtype
    return tc, overrides


def main(argv=None):
    args = build_parser().parse_args(argv)
    tc, overrides = config_from_args(args)
    try:
        model, tok, ev, heldout_docs = pretrain(tc, overrides)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FloatingPointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if tc.fill_mask_examples:
        from minibert.inference import fill_mask, mask_examples
        log("\nfill-mask on held-out sentences (top 5):")
        for text, answer in mask_examples(heldout_docs, tok, tc.fill_mask_examples, seed=tc.seed):
            (preds,) = fill_mask(model, tok, text, top_k=5)
            shown = ", ".join(f"{t!r} {p:.2f}" for t, p in preds)
            log(f"  {text}\n    answer {answer!r} | predicted {shown}")
    return 0
