"""Fine-tuning: labelled data -> a task head on the pretrained encoder -> checkpoints and a
held-out evaluation, for four tasks (TASKS): sequence classification (seq, the default), token
tagging (tag), extractive question answering (qa) and multiple choice (choice). Each task's
adapter (seq_task, tag_task, qa_task, choice_task) says how to read, encode, batch and
evaluate its data and which head to build; the loop, the recipe and exact resume are here;
the program around it (argument parsing) is scripts/finetune.py.

    model, tok, results = finetune(FinetuneConfig(train="train.csv", validation="dev.csv", out="runs/task"))
    _, _, res = finetune(FinetuneConfig(task="tag", train="train.conll", validation="dev.conll", out="runs/tag"))
    res["entity_f1"]   # tag; qa: res["exact_match"], res["f1"] (percent); choice: res["acc"]

train and validation are file paths, or lists of the task's examples (task_data.Example,
tag_data.TaggedSentence, qa_data.QAExample, choice_data.ChoiceExample) already in memory.

One training step: out, cache = model.forward(batch, rng=(seed, step)); grads = backward;
clip_grad_norm; AdamW with linear warmup (a fraction of all steps) then linear decay to 0.
Batches are length-grouped (task_data.length_grouped_batches) over the task's training rows
(examples; QA windows). Every random draw is a function of counters: the batches of epoch e
come from (seed, e), the dropout masks of step s from (seed, s), the head from [seed, 1].

Exact resume (resume=True, --resume), as in pretraining: the checkpoint after each epoch
holds the params, the AdamW moments and step count, the epoch and the step, and the
counters above give every later random draw, so a run killed at any moment and resumed
from its last checkpoint reaches bitwise the final parameters of an uninterrupted run
(NumPy backend). Settings that change what is computed (the task among them) and the
labels must match the checkpoint's. recompute (--recompute: each encoder layer rerun in the
backward, encoder.encoder_forward) changes memory, not numbers: a run may resume with or without it.

Without a data file, every task uses its default task (task_data.default_task;
default_tasks.default_tag_task, default_qa_task, default_choice_task), evaluated only on
documents pretraining held out. The evaluation set is a test set: no checkpoint or epoch is
selected on it; the numbers reported are those after the last epoch.

Run directory OUT (rundir.py; the run holds its lock from start to end):
    tokenizer.json                 the tokenizer (copied from the pretraining run)
    last.json / last.*.safetensors the model after the latest epoch (kind rundir.CLASSIFICATION_KIND,
                                   TAGGING_KIND, QA_KIND or CHOICE_KIND, with its labels,
                                   settings and optimizer state), written atomically
    metrics.jsonl                  one JSON line per log interval and per evaluation
    config.json                    {"model": BertConfig, "finetune": FinetuneConfig, "label_names"}
    results.json                   final evaluation: seq accuracy, macro-F1, confusion matrix;
                                   tag entity P/R/F1; qa exact match and F1; choice accuracy
"""
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, is_dataclass

from minibert import backend, interop, philox, rundir
from minibert.checkpoint import checkpoint_exists, record_path
from minibert.choice_task import ChoiceTask, choose, choose_run, load_chooser  # noqa: F401
from minibert.metrics import MetricsFile, MetricsWindow, fmt_time, log_line
from minibert.mixed_precision import PRECISIONS, optimizer_step, run_precision, scaler_for
from minibert.optim import LAMB, OPTIMIZERS, AdamW, clip_grad_norm, lr_at
from minibert.qa_task import QATask, answer, answer_run, load_qa  # noqa: F401
from minibert.seq_task import (  # noqa: F401  (the sequence task's API, importable from here as before)
    SeqTask, accuracy, confusion_matrix, evaluate, format_confusion, load_classifier, log, macro_f1, predict,
    predict_run, save_classifier, save_task_model,
)
from minibert.tag_task import TagTask, load_tagger, predict_tags, predict_tags_run  # noqa: F401
from minibert.tokenizer import SPECIAL_TOKENS
from minibert.tokenizer_files import load_tokenizer

TASKS = {"seq": SeqTask, "tag": TagTask, "qa": QATask, "choice": ChoiceTask}


# ----------------------------------------------------------------------------------------
# the configuration


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (the model's shape comes from the init); the
    flags of scripts/finetune.py."""
    task: str = "seq"  # seq (sequence classification), tag (token tagging), qa (extractive QA), choice
    init: str = "runs/pretrain"  # a pretraining run directory, or a Hugging Face directory with hf=True
    init_checkpoint: str = "last"
    random_init: bool = False  # the run's tokenizer and model shape, but freshly initialised weights
    hf: bool = False  # init is a Hugging Face BERT directory (needs tokenizer)
    tokenizer: str = ""  # tokenizer.json or vocab.txt (default: the pretraining run's; with hf, the directory's)
    train: str | list = ""  # data file, or a list of the task's examples; empty: the default task (seq, tag, qa)
    validation: str | list = ""  # data file or examples; empty: hold out valid_fraction of train
    valid_fraction: float = 0.1
    num_classes: int = 10  # default task: the number of packages
    train_per_class: int = 0  # keep at most this many training examples per class (0: all)
    text_column: str = "text"
    pair_column: str = "text_pair"
    label_column: str = "label"
    regression: bool = False
    scheme: str = "IOB2"  # tag: the tag scheme (IOB2, IOB1, BIOES)
    version_2: bool | None = None  # qa: SQuAD v2.0 (unanswerable questions); None: as the training data says
    doc_stride: int = 128  # qa: tokens of overlap between a long context's windows
    max_question_length: int = 64  # qa: a question's tokens kept
    null_threshold: float = 0.0  # qa v2.0: answer "" when null score - best span score exceeds this
    n_best: int = 20  # qa: start and end candidates per window
    max_answer_length: int = 30  # qa: tokens in an answer at most
    epochs: int = 5
    lr: float = 5e-4
    warmup: float = 0.1  # fraction of all steps
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # optim.OPTIMIZERS: "adamw" or "lamb" (optim.LAMB)
    batch_size: int = 32
    max_length: int = 128  # tokens per sequence (scripts/finetune.py's default for --task qa: 384)
    seed: int = 0
    dropout: float | None = None  # None: the pretrained config's
    backend: str = field(default_factory=backend.default_name)  # MINIBERT_BACKEND, else numpy
    dtype: str = "float32"
    out: str = "runs/finetune"
    overwrite: bool = False
    resume: bool = False  # continue the run in out from its last checkpoint
    log_every: int = 10
    eval_batch_size: int = 64
    recompute: bool = False  # rerun each encoder layer's forward in the backward (less memory, the same numbers)
    precision: str = "fp32"  # GEMM operands in "fp32", "bf16" or "fp16" (+ loss scaling): mixed_precision.py


# the recipe: the fields scripts/compare_pretraining.py shares with scripts/finetune.py
RECIPE_KEYS = ("epochs", "lr", "warmup", "weight_decay", "grad_clip", "optimizer", "batch_size", "max_length",
               "num_classes", "log_every", "backend", "dtype")




def recorded(fc):
    """The config as saved (config.json, the checkpoint) and checked on resume: examples given
    in memory are recorded by their number and a digest of their content."""
    d = asdict(fc)
    for k in ("train", "validation"):
        v = getattr(fc, k)
        if not isinstance(v, str):
            rows = [asdict(e) if is_dataclass(e) else e for e in v]
            digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
            d[k] = f"{len(rows)} examples in memory (sha256 {digest})"
    return d


def make_task(fc):
    """The task adapter of fc.task; ValueError naming the tasks for another."""
    if fc.task not in TASKS:
        raise ValueError(f"unknown --task {fc.task!r}: choose one of {', '.join(TASKS)}")
    return TASKS[fc.task]()


def is_hf(fc):
    """Whether the init is a Hugging Face BERT directory: --hf, or recognised from its files."""
    return fc.hf or interop.is_hf_dir(fc.init)


def build_model(fc, num_labels=None, task=None):
    """(model, tokenizer, description of the init) for the config's init: the task's head
    (default: a sequence classifier with num_labels labels) on its encoder."""
    if task is None:
        task = SeqTask()
        task.num_labels = num_labels
    if is_hf(fc):
        try:   # a BERT directory carries its tokenizer (vocab.txt or tokenizer.json)
            tok = load_tokenizer(fc.tokenizer or fc.init)
        except (FileNotFoundError, ValueError):
            if fc.tokenizer:
                raise
            raise ValueError(f"{fc.init} holds no tokenizer minibert reads (vocab.txt, tokenizer.json): give --tokenizer, "
                             "the minibert tokenizer.json the model was trained with (e.g. the pretraining run's, for a "
                             "model exported with interop.save_hf)") from None
        config, params = interop.load_hf_encoder_params(fc.init, fc.dtype)  # any head in the files is left out
        model = task.new_model(config, params, fc.seed)
        what = f"Hugging Face weights {fc.init}"
    else:
        config, params, meta = rundir.read_pretrained_encoder(fc.init, fc.init_checkpoint, fc.dtype)
        tok = rundir.run_tokenizer(fc.init, meta, fc.init_checkpoint, fc.tokenizer)
        if fc.dropout is not None:
            config.dropout = fc.dropout
        if fc.random_init:
            model = task.new_model(config, None, fc.seed)
            what = f"random initialisation (seed {fc.seed}; shape and tokenizer of {fc.init})"
        else:
            model = task.new_model(config, params, fc.seed)
            what = f"pretrained encoder {fc.init}/{fc.init_checkpoint}.json (step {meta.get('step')})"
    if is_hf(fc) and fc.dropout is not None:
        model.config.dropout = fc.dropout
    if tok.vocab_size != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens, the model's vocabulary {model.config.vocab_size}")
    for s in SPECIAL_TOKENS[:3]:
        if s not in tok.special_tokens:
            raise ValueError(f"the tokenizer lacks the special token {s!r}")
    if fc.max_length > model.config.max_position:
        raise ValueError(f"--max-length {fc.max_length} exceeds the model's max_position {model.config.max_position}")
    return model, tok, what


# FinetuneConfig fields that do not change what a run computes: a resumed run may differ in these
# (recompute: encoder.encoder_forward(recompute=True) gives the gradients bit for bit, so a run may switch it)
_NOT_RESUME_KEYS = ("out", "overwrite", "resume", "log_every", "eval_batch_size", "backend", "recompute")


def restore(fc, model, opt, tok, task, scaler=None):
    """Load OUT/last into model, opt (and fp16's loss scaler); returns (epoch, step) it was saved at.

    CheckpointError for a checkpoint of another kind or tokenizer, or other parameters;
    ValueError for settings or labels that would not replay the same steps."""
    saved = rundir.read_meta(fc.out, "last", task.kind).get("finetune", {})
    default = asdict(FinetuneConfig())
    # a field the checkpoint predates (task, scheme, ...) is checked only when set away from its default
    now = {k: v for k, v in recorded(fc).items() if k not in _NOT_RESUME_KEYS and (k in saved or v != default[k])}
    meta = rundir.restore(fc.out, task.kind, tok, model, opt, {
        "settings": ("finetune", now), "labels": (None, task.labels())})
    if scaler is not None:
        scaler.load_state_dict(meta["loss_scaler"])
    return meta["epoch"], meta["step"]


# ----------------------------------------------------------------------------------------
# the training loop


def finetune(fc):
    """Run (or, with fc.resume, continue) fine-tuning; returns (model, tokenizer, results dict
    of the final evaluation). ValueError for a setting, data file or run directory it refuses
    (before anything is written to fc.out), rundir.RunDirLocked while another run writes to fc.out."""
    backend.use(fc.backend)
    task = make_task(fc)
    for k in ("epochs", "batch_size", "max_length"):
        if getattr(fc, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(fc, k)}")
    if fc.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown --optimizer {fc.optimizer!r}: choose from {OPTIMIZERS}")
    if fc.precision not in PRECISIONS:
        raise ValueError(f"unknown --precision {fc.precision!r}: choose from {PRECISIONS}")
    if not 0.0 <= fc.warmup <= 1.0:
        raise ValueError(f"--warmup is a fraction of all steps, in [0, 1]; got {fc.warmup}")
    if fc.resume and fc.overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it: choose one")
    _check_out(fc)
    # everything that reads the data and the model comes before the lock: bad input writes nothing
    data_what = task.load(fc, 0.05 if is_hf(fc) else rundir.run_heldout_fraction(fc.init))
    model, tok, init_what = build_model(fc, task=task)
    # every task model is a BertBase: its training forwards keep only the layers' inputs (evaluation is unchanged)
    model.recompute = fc.recompute
    n_rows = task.encode(tok)
    with rundir.lock(fc.out), run_precision(fc.precision):  # one writer for the life of the run; its GEMMs' precision
        _check_out(fc)  # again, now that no other writer can start one
        return _finetune(fc, task, model, tok, n_rows, data_what, init_what)


def _check_out(fc):
    if checkpoint_exists(fc.out, "last") and not (fc.overwrite or fc.resume):
        raise ValueError(f"{fc.out} already holds a run ({record_path(fc.out, 'last')} exists): pass --resume to continue it, "
                         "choose another --out, or pass --overwrite to replace it")
    if fc.resume and not checkpoint_exists(fc.out, "last"):
        raise ValueError(f"--resume: no checkpoint {record_path(fc.out, 'last')} to resume from")


def _finetune(fc, task, model, tok, n_rows, data_what, init_what):
    t_start = time.time()
    pad = tok.token_to_id(SPECIAL_TOKENS[0])

    steps_per_epoch = math.ceil(n_rows / fc.batch_size)
    total = steps_per_epoch * fc.epochs
    warmup = int(round(fc.warmup * total))
    opt = (LAMB if fc.optimizer == "lamb" else AdamW)(model.params, lr=fc.lr, weight_decay=fc.weight_decay)
    scaler = scaler_for(fc.precision)  # fp16: dynamic loss scaling; else None
    epoch0, step = 0, 0
    if fc.resume:
        epoch0, step = restore(fc, model, opt, tok, task, scaler)
        log(f"resumed {fc.out} at step {step} (after epoch {epoch0})")

    tok.save(os.path.join(fc.out, rundir.TOKENIZER_FILE))
    metrics = MetricsFile(os.path.join(fc.out, rundir.METRICS_FILE), resume_step=step if fc.resume else None)
    rundir.write_json(os.path.join(fc.out, rundir.CONFIG_FILE),
                      {"model": model.config.to_dict(), "finetune": recorded(fc), **task.labels()})
    log(f"data: {data_what}")
    for line in task.data_lines():
        log(line)
    log(f"model: {init_what}; L={model.config.num_layers}, H={model.config.hidden_size}, "
        f"{model.num_parameters():,} parameters, {model.config.dtype}, backend {backend.name}")

    log(f"recipe: {fc.epochs} epochs x {steps_per_epoch} steps of {fc.batch_size} (max length {fc.max_length}), "
        f"{'LAMB' if fc.optimizer == 'lamb' else 'AdamW'} lr {fc.lr:.1e}, warmup {warmup} steps, linear decay, "
        f"weight decay {fc.weight_decay}, seed {fc.seed}" + (", activation recomputation" if fc.recompute else "")
        + (f", GEMMs in {fc.precision}" if fc.precision != "fp32" else ""))
    meta_base = dict(task.meta(), finetune=recorded(fc), init=init_what)

    t_loop, step0 = time.time(), step
    window = MetricsWindow()
    ev = None
    for epoch in range(epoch0 + 1, fc.epochs + 1):
        for batch in task.epoch_batches(epoch, pad):
            lr = lr_at(step, fc.lr, warmup, total)
            out, cache = model.forward(batch, train=True, rng=philox.rng((fc.seed, step)))
            grads = model.backward(cache) if scaler is None else model.backward(cache, dloss=scaler.scale)
            if scaler is not None:
                scaler.unscale(grads)  # fp16: back to the true gradients, in float32
            norm = clip_grad_norm(grads, fc.grad_clip)
            # fp16 skips a step whose gradients overflowed (optimizer_step) instead of stopping
            if (scaler is None and not math.isfinite(float(norm))) or not math.isfinite(float(out["loss"])):
                raise FloatingPointError(f"non-finite loss or gradient at step {step + 1} (grad norm {norm}); "
                                         "try a lower --lr")
            optimizer_step(opt, grads, lr, norm, scaler)
            step += 1
            window.add(loss=float(out["loss"]), correct=int(out.get("correct", 0)), count=out["count"],
                       tokens=batch["attention_mask"].sum())
            window.step()
            if step % fc.log_every == 0 or step == total:
                rec = {"step": step, "epoch": epoch, "loss": window.mean("loss"), "lr": lr, "grad_norm": float(norm),
                       **window.speed(), "elapsed_s": time.time() - t_start}
                shown = {"loss": rec["loss"]}
                if task.shows_acc:
                    rec["acc"] = shown["acc"] = window.ratio("correct", "count")
                left = (time.time() - t_loop) / (step - step0) * (total - step)
                log(log_line(step, total, prefix=f"epoch {epoch}/{fc.epochs}", **shown, lr=lr, grad_norm=norm,
                             ms_per_step=rec["ms_per_step"], tokens_per_s=rec["tokens_per_s"], left=left))
                metrics.write(rec)
                window.reset()

        ev = task.evaluate(model, pad)
        summary = {k: v for k, v in ev.items() if k not in task.list_keys}
        metrics.write({"step": step, "epoch": epoch, **{f"eval_{k}": v for k, v in summary.items()}})
        log(task.eval_line(epoch, ev))
        save_task_model(fc.out, "last", task.kind, model, opt, tok,
                        dict(meta_base, epoch=epoch, step=step, eval=summary,
                             **({"loss_scaler": scaler.state_dict()} if scaler is not None else {})))

    if ev is None:  # resumed a run that had finished: its last epoch is evaluated again
        ev = task.evaluate(model, pad)
    results = {k: v for k, v in ev.items() if k != "preds"}
    results.update(task.results(ev))
    results.update(init=init_what, epochs=fc.epochs, steps=step, train_examples=len(task.train),
                   validation_examples=len(task.val), elapsed_s=time.time() - t_start)
    rundir.write_json(os.path.join(fc.out, rundir.RESULTS_FILE), results)
    for line in task.final_lines(ev):
        log(line)
    log(f"done: {step} steps in {fmt_time(time.time() - t_start)} | validation {task.headline(ev)} | saved in {fc.out}")
    return model, tok, results


# ----------------------------------------------------------------------------------------
# prediction with a saved run of any task


def predict_with_run(run_dir, texts=None, pairs=None, path=None, question=None, context=None, endings=None,
                     top_k=3):
    """Predict with the fine-tuned run in run_dir, whichever its task (its checkpoint's kind),
    printing each prediction: seq classifies texts (with pairs) or a file; tag tags texts or a
    CoNLL/JSON-lines file; qa answers question about context (or texts = [question, context]);
    choice picks among endings after context (or texts = [context, ending, ending, ...])."""
    kind = rundir.read_record_meta(run_dir, "last").get("kind")
    if kind == rundir.CLASSIFICATION_KIND:
        return predict_run(run_dir, texts, pairs, path, top_k=top_k)
    if pairs:
        raise ValueError("--pair goes with a sequence classifier; this run is " + rundir.RUN_KINDS.get(kind, str(kind)))
    if kind == rundir.TAGGING_KIND:
        if not texts and not path:
            raise ValueError("a tagging run tags --predict \"a sentence\" or --predict-file FILE")
        return predict_tags_run(run_dir, texts, path)
    if path:
        raise ValueError(f"--predict-file goes with a classifier or a tagger; this run is {rundir.RUN_KINDS[kind]}")
    if kind == rundir.QA_KIND:
        if question is None and context is None and texts and len(texts) == 2:
            question, context = texts
        elif texts or question is None or context is None:
            raise ValueError("a question-answering run needs --question Q --context C (or --predict Q C)")
        return answer_run(run_dir, question, context)
    if kind == rundir.CHOICE_KIND:
        if context is None and endings is None and texts and len(texts) >= 3:
            context, endings = texts[0], texts[1:]
        elif texts or context is None or not endings or len(endings) < 2:
            raise ValueError("a multiple-choice run needs --context C --endings E1 E2 ... "
                             "(or --predict C E1 E2 ...)")
        return choose_run(run_dir, context, endings)
    raise ValueError(f"{record_path(run_dir, 'last')} is not a fine-tuned run: its kind is {kind!r}")
