"""Pretraining: corpus -> tokenizer -> MLM + NSP training -> checkpoints. The program around it
(argument parsing, fill-mask examples at the end) is scripts/pretrain.py.

    python scripts/pretrain.py                       # the whole default job, tiny preset, CPU
    python scripts/pretrain.py --preset mini --backend cupy --steps 20000 --out runs/mini

    model, tok, ev, heldout_docs = pretrain(TrainConfig(steps=300, out="runs/try"))   # from Python

One training step (AdamW with linear warmup then linear decay, Devlin et al. 2019 A.2):

    for each of accum micro-batches:  out, cache = model.forward(batch, rng=(seed, step, micro))
                                       grads += model.backward(cache) / accum
    grads = sum of grads over processes (one process: grads; ZeRO-1: this process's shard)
    norm = clip_grad_norm(grads, grad_clip)
    optimizer.step(grads, lr=lr_at(step))
    at log, eval and save steps: stop, saving nothing, if any loss or norm since the last check was not finite

--precision bf16 / fp16 runs all of it with the GEMMs' operands rounded to 16 bits
(backend.gemm_precision); fp16 also backpropagates from dloss = S, unscales grads before the
norm, and skips a step whose norm is not finite instead of stopping (mixed_precision.py).

Exact resume. Everything random is a function of counters: dropout masks of micro-batch m of
step s come from the stream (seed, s, m), each sequence's from its own counter within it
(philox.rng); the instances and masks of data epoch e come from
(seed, e). A checkpoint therefore holds all the state there is: params, AdamW moments and
step count, the step, the data position (epoch, next batch) and the seed. Resuming from it
replays exactly the steps an uninterrupted run would take, so the final parameters are
bitwise identical (NumPy backend; cuBLAS may pick other reduction orders).

Data parallel: `mpiexec -n N python scripts/pretrain.py ...` runs the same steps on N
processes, each on its slice of every global batch (--batch-size stays global); the
gradients are summed over processes while the backward runs (--zero 1: reduce-scattered
after it, each process updating its shard of the parameters; zero.py), and rank 0 alone
writes the run directory. distributed.py says how the N slices add up to the one-process step.

Run directory OUT (rundir.py; the run holds its lock from start to end, so a second run or
--resume on the same OUT stops at once, naming the PID of the one writing):
    tokenizer.json           the tokenizer (trained here unless --tokenizer is given)
    config.json              {"model": BertConfig, "train": TrainConfig}
    last.json / last.*.safetensors   the latest checkpoint (every --save-every steps, at the
                             end, and on Ctrl-C)
    best.json / best.*.safetensors   the checkpoint with the lowest held-out loss
    metrics.jsonl            one JSON line per log interval and per evaluation
"""
import contextlib
import dataclasses
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field


from minibert import backend, distributed, philox, rundir, zero
from minibert.budget import budget_steps
from minibert.checkpoint import checkpoint_exists, record_path
from minibert.corpus import default_corpus, read_documents, split_documents
from minibert.heldout import evaluate, heldout_batches, nsp_text
from minibert.inference import load_pretrained, load_pretrained_tokenizer
from minibert.instances import PretrainingData
from minibert.metrics import MetricsFile, MetricsWindow, fmt_time, log_line
from minibert.mixed_precision import PRECISIONS, optimizer_step, run_precision, scaler_for
from minibert.mlm_blocks import BlockData
from minibert.model import PRESETS, BertConfig, BertForMaskedLM, BertForPreTraining, pretraining_model
from minibert.optim import OPTIMIZERS, SCHEDULES, LAMB, AdamW, lr_at
from minibert.token_cache import TokenizedCorpus
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer
from minibert.tokenizer_files import load_tokenizer


@dataclass
class TrainConfig:
    """Everything a run depends on (the model's shape is in BertConfig)."""
    preset: str = "tiny"
    backend: str = field(default_factory=backend.default_name)  # MINIBERT_BACKEND, else numpy
    seed: int = 0
    steps: int = 2700
    batch_size: int = 64
    accum: int = 1  # micro-batches per optimizer step (gradient accumulation)
    seq_len: int = 128
    length_window: int = 64  # group batches by length within windows of this many (instances.py); 0: epoch order
    max_predictions: int = 20
    short_seq_prob: float = 0.1
    objective: str = "mlm+nsp"  # "mlm": MLM alone on packed full-sentence blocks (mlm_blocks.py), no NSP
    mlm_prob: float = 0.3  # training masking rate (evaluation always masks 15%)
    whole_word_mask: bool = False  # mask a chosen word with all its tokens (instances.mask_tokens)
    lr: float = 3e-3
    min_lr: float = 0.0
    schedule: str = "linear"  # optim.SCHEDULES: "linear" / "cosine" after `warmup` steps; "one-cycle": peak at peak_at
    warmup: int = 300
    peak_at: float = 0.5  # "one-cycle": the fraction of the steps at which the learning rate peaks
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # optim.OPTIMIZERS: "adamw" or "lamb" (optim.LAMB: per-tensor trust ratio)
    budget_minutes: float = 0.0  # > 0: steps fixed once, at the start, so the whole job fits this budget
    corpus: list = field(default_factory=list)  # files / dirs / globs; empty = embedded stdlib docstrings
    heldout_fraction: float = 0.05
    tokenizer: str = ""  # a saved tokenizer (tokenizer.json, or a BERT vocab.txt / directory); empty = train one
    init_from: str = ""  # continue pretraining a checkpoint: a Hugging Face BERT directory or a minibert run
    vocab_size: int = 8192
    out: str = "runs/pretrain"
    resume: bool = False
    save_every: int = 500
    eval_every: int = 500
    eval_batches: int = 20
    log_every: int = 50
    fill_mask_examples: int = 5
    zero: int = 0  # 1: shard the AdamW moments over data-parallel processes (ZeRO stage 1; zero.py)
    recompute: bool = False  # rerun each encoder layer's forward in the backward (less memory, same numbers: no resume key)
    precision: str = "fp32"  # GEMM operands in "fp32", "bf16" or "fp16" (+ loss scaling): mixed_precision.py


# settings that change what an exact resume computes: a resumed run must match them
_RESUME_KEYS = ("seed", "batch_size", "accum", "seq_len", "length_window", "max_predictions", "short_seq_prob",
                "corpus", "heldout_fraction", "objective", "mlm_prob", "whole_word_mask", "schedule", "peak_at",
                "beta1", "beta2", "eps", "budget_minutes", "optimizer", "precision")
OBJECTIVES = ("mlm+nsp", "mlm")
# what a run saved before these settings existed computed with (restore checks a resumed run against them)
LEGACY_SETTINGS = {"objective": "mlm+nsp", "mlm_prob": 0.15, "whole_word_mask": False, "schedule": "linear",
                   "peak_at": 0.5, "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "budget_minutes": 0.0, "norm": "post",
                   "optimizer": "adamw", "precision": "fp32"}
# a fresh model pretrains without dropout (--dropout / --attention-dropout set it): on a
# 10-minute budget the model underfits, and dropout only slows it (docs/pretraining.md's
# ablation; Geiping and Goldstein 2022 drop it too). Fine-tuning sets its own (finetune --dropout).
PRETRAINING_DROPOUT = 0.0
EVAL_MLM_PROB = 0.15  # every evaluation masks 15% (80/10/10), whatever the training rate: figures compare


def train_max_predictions(tc):
    """The training cap on predictions per sequence: tc.max_predictions is the cap at 15%
    masking (20 of 128 tokens, BERT's), scaled up with --mlm-prob so the cap does not bind
    sooner at a higher rate (0.4: 54). Evaluation keeps tc.max_predictions."""
    return max(tc.max_predictions, math.ceil(tc.max_predictions * tc.mlm_prob / EVAL_MLM_PROB - 1e-9))


def lr_for(tc, step):
    """The learning rate of optimizer step `step` (0-based) under tc's schedule."""
    warmup = round(tc.peak_at * tc.steps) if tc.schedule == "one-cycle" else min(tc.warmup, tc.steps)
    return lr_at(step, tc.lr, warmup, tc.steps, tc.min_lr, schedule=tc.schedule)


def check_config(tc):
    """ValueError naming the first setting of tc that is out of range."""
    if tc.preset not in PRESETS:
        raise ValueError(f"unknown preset {tc.preset!r}: choose from {sorted(PRESETS)}")
    if tc.zero not in (0, 1):
        raise ValueError(f"--zero must be 0 (no sharding) or 1 (AdamW moments sharded), got {tc.zero}")
    if tc.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown --optimizer {tc.optimizer!r}: choose from {OPTIMIZERS}")
    if tc.objective not in OBJECTIVES:
        raise ValueError(f"unknown --objective {tc.objective!r}: choose from {OBJECTIVES}")
    if not 0.0 < tc.mlm_prob < 1.0:
        raise ValueError(f"--mlm-prob must lie in (0, 1), got {tc.mlm_prob}")
    if tc.schedule not in SCHEDULES:
        raise ValueError(f"unknown --schedule {tc.schedule!r}: choose from {SCHEDULES}")
    if not 0.0 <= tc.peak_at <= 1.0:
        raise ValueError(f"--peak-at must lie in [0, 1], got {tc.peak_at}")
    if tc.budget_minutes < 0:
        raise ValueError(f"--budget-minutes must be >= 0, got {tc.budget_minutes}")
    if tc.precision not in PRECISIONS:
        raise ValueError(f"unknown --precision {tc.precision!r}: choose from {PRECISIONS}")


def log(msg):
    if distributed.world().rank == 0:  # one log for the job, however many processes
        print(msg, flush=True)


# ----------------------------------------------------------------------------------------
# data and tokenizer


def load_documents(tc):
    """(train documents, held-out documents) from --corpus or the embedded default."""
    if tc.corpus:
        docs = read_documents(tc.corpus)
        train, heldout = split_documents(docs, tc.heldout_fraction)
        if not train or not heldout:  # a tiny corpus: still evaluate on something
            raise ValueError(f"corpus {tc.corpus} has {len(docs)} documents: too few to hold out "
                             f"{tc.heldout_fraction:.0%} for evaluation and train on the rest")
        return train, heldout
    all_docs = default_corpus("all", heldout_fraction=tc.heldout_fraction)
    return split_documents(all_docs, tc.heldout_fraction)


def get_tokenizer(tc, train_docs):
    """Load --tokenizer (either kind: tokenizer_files.load_tokenizer), reuse OUT/tokenizer.json, or
    train a byte-level BPE tokenizer on the training documents."""
    path = os.path.join(tc.out, rundir.TOKENIZER_FILE)
    if tc.init_from and tc.tokenizer:
        raise ValueError("--init-from brings the checkpoint's own tokenizer: leave out --tokenizer")
    if tc.init_from and not os.path.exists(path):
        tok = load_pretrained_tokenizer(tc.init_from)
    elif tc.tokenizer:
        tok = load_tokenizer(tc.tokenizer)
    elif os.path.exists(path):
        return load_tokenizer(path)
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


def heldout_data(tc, tok, held_c):
    """The held-out PretrainingData every run evaluates on: NSP pairs of the held-out documents
    masked at 15% (80/10/10, no whole words), whatever the training objective and masking."""
    return PretrainingData(held_c, tok, seed=tc.seed, max_seq_len=tc.seq_len, max_predictions=tc.max_predictions,
                           short_seq_prob=tc.short_seq_prob, masked_lm_prob=EVAL_MLM_PROB)


def build_data(tc, tok, train_docs, heldout_docs):
    """(train data, held-out PretrainingData): token caches of both document sets; training
    instances as tc says (NSP pairs, or with --objective mlm packed blocks), held-out ones as
    heldout_data says."""
    t0 = time.time()
    train_c = TokenizedCorpus.build(train_docs, tok)
    held_c = TokenizedCorpus.build(heldout_docs, tok)
    kw = dict(max_seq_len=tc.seq_len, max_predictions=train_max_predictions(tc), masked_lm_prob=tc.mlm_prob,
              seed=tc.seed, **({"whole_word_mask": True} if tc.whole_word_mask else {}))
    if tc.objective == "mlm":
        train = BlockData(train_c, tok, **kw)
    else:
        train = PretrainingData(train_c, tok, short_seq_prob=tc.short_seq_prob, length_window=tc.length_window, **kw)
    held = heldout_data(tc, tok, held_c)
    log(f"corpus: {train_c.num_documents:,} train documents ({train_c.num_tokens:,} tokens), "
        f"{held_c.num_documents:,} held out ({held_c.num_tokens:,} tokens); "
        f"{train.num_instances(0):,} instances per epoch; ready in {time.time() - t0:.1f} s")
    return train, held


# ----------------------------------------------------------------------------------------
# evaluation of a saved run (the held-out evaluation itself: heldout.py)


def evaluate_run(run_dir, checkpoint="last", corpus=None, batch_size=32, max_batches=None):
    """evaluate() on a saved pretraining run: on the run's own held-out split (rebuilt from its
    config.json, with its seed and instance settings), or on every document of `corpus`."""
    model, tok = load_pretrained(run_dir, checkpoint)
    tc = TrainConfig(**rundir.read_config(run_dir)["train"])
    docs = read_documents(corpus) if corpus else load_documents(tc)[1]
    data = heldout_data(tc, tok, TokenizedCorpus.build(docs, tok))
    return evaluate(model, heldout_batches(dataclasses.replace(tc, batch_size=batch_size, eval_batches=max_batches),
                                           data))


# ----------------------------------------------------------------------------------------
# checkpoints


def save_run_checkpoint(tc, name, model, opt, step, position, tok, best_loss, scaler=None):
    """Checkpoint NAME of kind "minibert-pretraining": everything an exact resume needs
    (fp16: the loss scaler's state too). Every rank calls it (a sharded optimizer gathers
    its moments); rank 0 alone writes."""
    tensors, opt_meta = opt.state_dict()
    if distributed.world().rank != 0:
        return
    meta = {**({"loss_scaler": scaler.state_dict()} if scaler is not None else {}),"config": model.config.to_dict(), "model_class": type(model).__name__, "train": asdict(tc), "step": step,
            "data_position": list(position),
            "optim": opt_meta, "best_eval_loss": best_loss,
            # every random draw is a function of these counters (see the module docstring)
            "rng": {"seed": tc.seed, "dropout_stream": "(seed, step, micro_batch)", "data_stream": "(seed, epoch)"}}
    rundir.save(tc.out, name, rundir.PRETRAINING_KIND, model.params, tensors, meta, tok)


def restore(tc, model, opt, tok, scaler=None):
    """Load OUT/last into model, opt (and fp16's loss scaler); returns (step, data position, best loss).

    CheckpointError for a checkpoint of another kind, trained with another tokenizer, or
    with other parameters; ValueError for a model config or setting that would not replay
    the same steps. A setting the checkpoint predates (a run saved before --objective or
    --norm existed) must equal what that run computed with (LEGACY_SETTINGS)."""
    saved = rundir.read_meta(tc.out, "last", rundir.PRETRAINING_KIND)
    config = {k: v for k, v in model.config.to_dict().items()
              if k in saved["config"] or v != LEGACY_SETTINGS.get(k, v)}
    settings = {k: getattr(tc, k) for k in _RESUME_KEYS
                if k in saved["train"] or getattr(tc, k) != LEGACY_SETTINGS.get(k, getattr(tc, k))}
    meta = rundir.restore(tc.out, rundir.PRETRAINING_KIND, tok, model, opt, {
        "model config fields": ("config", config), "settings": ("train", settings)})
    if scaler is not None:
        scaler.load_state_dict(meta["loss_scaler"])
    return meta["step"], tuple(meta["data_position"]), meta.get("best_eval_loss")


# ----------------------------------------------------------------------------------------
# the model


def build_model(tc, tok, model_overrides=None):
    """The model to pretrain. Fresh: a BertForPreTraining of the preset's shape (with
    model_overrides), seeded. tc.init_from: that checkpoint's shape, weights and heads, as
    inference.load_pretrained reads them: BertForPreTraining (MLM + NSP) if it has the NSP
    head, else BertForMaskedLM (MLM alone); model_overrides may set only dropout,
    attention_dropout and dtype. Resuming a run that started from a checkpoint: the
    checkpoint's class and config (restore() then loads its weights)."""
    overrides = dict(model_overrides or {})
    if tc.resume:
        meta = rundir.read_meta(tc.out, "last", rundir.PRETRAINING_KIND)
        if meta["train"].get("init_from"):
            config = BertConfig.from_dict(dict(meta["config"], dtype=overrides.get("dtype", meta["config"]["dtype"])))
            return pretraining_model(meta)[0](config, seed=tc.seed)
    elif tc.init_from:
        model, _ = load_pretrained(tc.init_from, dtype=overrides.pop("dtype", None))
        if "mlm.bias" not in model.params:
            raise ValueError(f"--init-from {tc.init_from} is a {type(model).__name__}, with no MLM head: continued "
                             "pretraining needs a BertForPreTraining or BertForMaskedLM checkpoint")
        for k, v in overrides.items():
            if k in ("dropout", "attention_dropout"):
                setattr(model.config, k, v)
            elif getattr(model.config, k) != v:
                raise ValueError(f"--init-from {tc.init_from} fixes the model's shape: {k} is "
                                 f"{getattr(model.config, k)} there, not {v}")
        if model.has_nsp and tc.objective == "mlm":  # an MLM-only checkpoint trains MLM alone on pairs, as before
            raise ValueError(f"--init-from {tc.init_from} is a {type(model).__name__}, with an NSP head: "
                             "--objective mlm's packed blocks have no sentence pairs to train it on")
        if tc.seq_len > model.config.max_position:
            raise ValueError(f"--seq-len {tc.seq_len} exceeds the checkpoint's max_position {model.config.max_position}")
        return model
    cfg = dict(PRESETS[tc.preset], vocab_size=tok.vocab_size, max_position=max(512, tc.seq_len),
               dropout=PRETRAINING_DROPOUT, attention_dropout=PRETRAINING_DROPOUT)
    cfg.update(overrides)
    model_class = BertForMaskedLM if tc.objective == "mlm" else BertForPreTraining
    return model_class(BertConfig(**cfg), seed=tc.seed)


# ----------------------------------------------------------------------------------------
# the training loop


def pretrain(tc, model_overrides=None):
    """Run (or, with tc.resume, continue) pretraining as tc says; model_overrides are BertConfig
    fields that replace the preset's (e.g. {"num_layers": 1, "dtype": "float64"}).

    Returns (model, tokenizer, held-out metrics of the final model as evaluate() gives them,
    held-out documents). ValueError for a setting or run directory it refuses (with the reason),
    rundir.RunDirLocked while another run writes to tc.out, FloatingPointError for a non-finite
    loss, KeyboardInterrupt after saving on Ctrl-C."""
    backend.use(tc.backend)
    w = distributed.init(tc.backend)  # one process unless launched by mpiexec -n N
    check_config(tc)
    # one writer for the life of the run (rank 0): nothing is written before it
    with w.abort_on_error(), (rundir.lock(tc.out) if w.rank == 0 else contextlib.nullcontext()):
        with run_precision(tc.precision):  # every GEMM of the run in tc.precision, evaluations included
            return _pretrain(tc, model_overrides)


def _pretrain(tc, model_overrides):
    t_start = time.time()
    if not tc.resume and checkpoint_exists(tc.out, "last"):
        raise ValueError(f"{tc.out} already holds a run ({record_path(tc.out, 'last')} exists): pass --resume to "
                         "continue it, or choose another --out")
    if tc.resume and not checkpoint_exists(tc.out, "last"):
        raise ValueError(f"--resume: no checkpoint {record_path(tc.out, 'last')} to resume from")

    w = distributed.world()
    train_docs, heldout_docs = load_documents(tc)
    if w.rank == 0:  # rank 0 trains (or copies) the tokenizer; the others then read OUT/tokenizer.json
        tok = get_tokenizer(tc, train_docs)
    w.barrier()
    if w.rank != 0:
        tok = load_tokenizer(os.path.join(tc.out, rundir.TOKENIZER_FILE))
    model = build_model(tc, tok, model_overrides)
    model.recompute = tc.recompute  # encoder.encoder_forward(recompute=...): the same gradients, bit for bit
    config = model.config
    if config.vocab_size != tok.vocab_size:
        raise ValueError(f"vocab_size {config.vocab_size} differs from the tokenizer's {tok.vocab_size}")
    train_data, held_data = build_data(tc, tok, train_docs, heldout_docs)
    eval_set = heldout_batches(tc, held_data)

    adam = dict(lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps, weight_decay=tc.weight_decay)
    if tc.zero:
        opt = zero.ShardedAdamW(w, model.params, optimizer=tc.optimizer, **adam)
    else:
        opt = (LAMB if tc.optimizer == "lamb" else AdamW)(model.params, **adam)
    dp = distributed.DataParallel(w, opt)
    scaler = scaler_for(tc.precision)  # fp16: dynamic loss scaling; else None
    if tc.budget_minutes and tc.resume:  # the step count the budget fixed when the run started
        tc = dataclasses.replace(tc, steps=rundir.read_meta(tc.out, "last", rundir.PRETRAINING_KIND)["train"]["steps"])
    elif tc.budget_minutes:
        steps, step_s, eval_s = budget_steps(tc, model, train_data, eval_set, t_start, w)
        log(f"budget {tc.budget_minutes:g} min: {step_s * 1000:.1f} ms per step, {eval_s:.2f} s per evaluation "
            f"-> {steps:,} steps")
        tc = dataclasses.replace(tc, steps=steps)
    step, position, best_loss = 0, (0, 0), None
    if tc.resume:
        step, position, best_loss = restore(tc, model, opt, tok, scaler)
        log(f"resumed {tc.out} at step {step} (data epoch {position[0]}, batch {position[1]})")
    metrics = None
    if w.rank == 0:  # rank 0 alone writes the run directory
        metrics = MetricsFile(os.path.join(tc.out, rundir.METRICS_FILE), resume_step=step if tc.resume else None)
        rundir.write_json(os.path.join(tc.out, rundir.CONFIG_FILE), {"model": config.to_dict(), "train": asdict(tc)})
    what = f"{type(model).__name__} from {tc.init_from}" if tc.init_from else f"BERT {tc.preset}"
    log(f"model: {what} (L={config.num_layers}, H={config.hidden_size}, A={config.num_heads}), "
        f"{model.num_parameters():,} parameters, {config.dtype}"
        + (f" (GEMMs in {tc.precision})" if tc.precision != "fp32" else "") + f", backend {backend.name}; "
        f"{tc.steps:,} steps of {tc.batch_size * tc.accum} sequences x {tc.seq_len} tokens"
        + (f"; data parallel over {w.size} processes{', ZeRO-1' if tc.zero else ''}" if w.size > 1 else ""))

    batches = train_data.batches(tc.batch_size, start=position)
    interrupted = []
    old_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))  # finish the step, then save
    window = MetricsWindow()
    t_loop, step0 = time.time(), step
    last_saved = step if tc.resume else None
    probe = 0.0  # 0 while every loss and grad norm since the last check was finite, else NaN
    try:
        while step < tc.steps:
            lr = lr_for(tc, step)
            grads = None
            for micro in range(tc.accum):
                next_position, batch = next(batches)
                # this process's rows of the global batch (all of it for one process); see distributed.py
                batch, counts, first_row = dp.slice(batch)
                out, cache = model.forward(batch, train=True, rng=philox.rng((tc.seed, step, micro), first_row),
                                           global_counts=counts)
                # this process's mean over micro-batches (after the last one, its sum over
                # processes is on the way)
                grads = dp.backward(model, cache, grads, 1.0 / tc.accum, last=micro == tc.accum - 1,
                                    dloss=None if scaler is None else scaler.scale)  # fp16: the loss scaled
                # losses stay device scalars: no host sync until the log line
                nsp = ({"nsp_loss": out["nsp_loss"] / tc.accum, "nsp_correct": out["nsp_correct"],
                        "nsp_count": out["nsp_count"]} if model.has_nsp else {})  # MLM alone: no NSP
                window.add(loss=out["loss"] / tc.accum, mlm_loss=out["mlm_loss"] / tc.accum,
                           mlm_correct=out["mlm_correct"], mlm_count=out["mlm_count"], **nsp,
                           tokens=batch["attention_mask"].sum(), positions=batch["attention_mask"].size)
                position = next_position
            grads = dp.reduce(grads)  # summed over processes; --zero 1: this process's shard of the sum
            if scaler is not None:
                scaler.unscale(grads)  # fp16: back to the true gradients, in float32
            norm = dp.clip_grad_norm(grads, tc.grad_clip)  # the global norm, the same on every rank
            # stays on the device: 0 * inf and 0 * nan are nan, so one host read at the next
            # log, eval or save step sees any bad step since the last (no wait per step).
            # fp16 skips a step whose gradients overflowed instead: only its loss is probed
            probe = probe + 0.0 * (out["loss"] + (norm if scaler is None else 0.0))
            optimizer_step(opt, grads, lr, norm, scaler)  # fp16: skipped on the device if the norm is not finite
            step += 1
            window.step()
            if w.size > 1:  # every rank must take the same branches below (Ctrl-C may reach one rank first)
                interrupted[:] = [True] if dp.any(interrupted) else []
            if (step % tc.log_every == 0 or step % tc.eval_every == 0 or step % tc.save_every == 0
                    or step == tc.steps or interrupted):
                if dp.any(not math.isfinite(float(probe))):  # nothing past the last good checkpoint is saved
                    kept = (f"{record_path(tc.out, 'last')} (step {last_saved})" if last_saved is not None
                            else "none was saved yet")
                    raise FloatingPointError(
                        f"non-finite loss or gradient at step {step} or before (checked at log, eval and save "
                        f"steps; grad norm {norm}); stopping without saving. The last good checkpoint: {kept}. "
                        f"Try a lower --lr or more --warmup")
                probe = 0.0

            if step % tc.log_every == 0 or step == tc.steps:
                dp.sum_window(window)
                rec = {"step": step, "loss": window.mean("loss"), "mlm_loss": window.mean("mlm_loss"),
                       "nsp_loss": window.mean("nsp_loss"), "mlm_acc": window.ratio("mlm_correct", "mlm_count"),
                       "nsp_acc": window.ratio("nsp_correct", "nsp_count"), "lr": lr, "grad_norm": float(norm),
                       **window.speed(), "real_token_fraction": window.tokens / max(window.sums["positions"], 1),
                       **dp.timing(), "epoch": position[0], "elapsed_s": time.time() - t_start,
                       **({"loss_scale": float(scaler.scale), "skipped_steps": int(scaler.skipped)} if scaler else {})}
                if not model.has_nsp:
                    del rec["nsp_loss"], rec["nsp_acc"]
                left = (time.time() - t_loop) / (step - step0) * (tc.steps - step)
                log(log_line(step, tc.steps, **{k: rec[k] for k in ("loss", "mlm_loss", "mlm_acc", "nsp_loss",
                                                                     "nsp_acc", "lr", "grad_norm", "ms_per_step",
                                                                     "tokens_per_s") if k in rec}, left=left))
                if metrics:
                    metrics.write(rec)
                window.reset()

            if step % tc.eval_every == 0 or step == tc.steps:
                ev = evaluate(model, eval_set, w)
                if metrics:
                    metrics.write({"step": step, **{f"eval_{k}": v for k, v in ev.items()}})
                log(f"eval  step {step} | held-out mlm loss {ev['mlm_loss']:.3f} acc {ev['mlm_acc']:.3f} "
                    f"ppl {ev['perplexity']:.1f}{nsp_text(ev)}")
                if best_loss is None or ev["loss"] < best_loss:
                    best_loss = ev["loss"]
                    save_run_checkpoint(tc, "best", model, opt, step, position, tok, best_loss, scaler)
            if step % tc.save_every == 0 or step == tc.steps or interrupted:
                save_run_checkpoint(tc, "last", model, opt, step, position, tok, best_loss, scaler)
                last_saved = step
            if interrupted:
                log(f"interrupted: saved {record_path(tc.out, 'last')} at step {step}; continue with --resume")
                raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, old_handler)
    ev = evaluate(model, eval_set, distributed.world())
    log(f"done: {step} steps in {fmt_time(time.time() - t_start)} | held-out mlm loss {ev['mlm_loss']:.3f} "
        f"acc {ev['mlm_acc']:.3f} ppl {ev['perplexity']:.1f}{nsp_text(ev)} | saved in {tc.out}")
    return model, tok, ev, heldout_docs
