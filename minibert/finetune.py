"""Fine-tuning: labelled text -> BertForSequenceClassification -> checkpoints; evaluation,
saving, loading and prediction. Reading and encoding the data is task_data.py; the program
around it (argument parsing) is scripts/finetune.py.

    model, tok, results = finetune(FinetuneConfig(train="train.csv", validation="dev.csv", out="runs/task"))
    model, tok, meta = load_classifier("runs/task")
    predict(model, tok, meta, ["Return the socket's file descriptor."])  -> [[("socket", 0.83), ...]]

One training step: out, cache = model.forward(batch, rng=(seed, step)); grads = backward;
clip_grad_norm; AdamW with linear warmup (a fraction of all steps) then linear decay to 0.
Batches are length-grouped (task_data.length_grouped_batches). Every random draw is a
function of counters: the batches of epoch e come from (seed, e), the dropout masks of step
s from (seed, s), the classifier head from [seed, 1].

Exact resume (resume=True, --resume), as in pretraining: the checkpoint after each epoch
holds the params, the AdamW moments and step count, the epoch and the step, and the
counters above give every later random draw, so a run killed at any moment and resumed
from its last checkpoint reaches bitwise the final parameters of an uninterrupted run
(NumPy backend). Settings that change what is computed must match the checkpoint's.

Without a data file, the run uses the default task (task_data.default_task), evaluated only
on documents pretraining held out. That evaluation set is the test set: no checkpoint or
epoch is selected on it; the numbers reported are those after the last epoch.

Run directory OUT (rundir.py; the run holds its lock from start to end):
    tokenizer.json                 the tokenizer (copied from the pretraining run)
    last.json / last.*.safetensors the model after the latest epoch (kind
                                   "minibert-classification", with label names, task,
                                   max length, optimizer state), written atomically
    metrics.jsonl                  one JSON line per log interval and per evaluation
    config.json                    {"model": BertConfig, "finetune": FinetuneConfig, "label_names"}
    results.json                   final evaluation: accuracy, macro-F1, confusion matrix
"""
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from minibert import backend, interop, philox, rundir
from minibert.checkpoint import checkpoint_exists, record_path
from minibert.classifier import BertForSequenceClassification
from minibert.metrics import MetricsFile, MetricsWindow, fmt_time, log_line
from minibert.optim import AdamW, clip_grad_norm, lr_at
from minibert.task_data import (
    Example, batches, class_counts, default_task, encode_examples, label_ids, label_names_from,
    length_grouped_batches, read_examples, split_examples, subsample_per_class,
)
from minibert.tokenizer import SPECIAL_TOKENS
from minibert.tokenizer_files import load_tokenizer

MAX_CLASSES_SHOWN = 12  # the confusion matrix is printed only up to this many classes


def log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------
# metrics and evaluation


def accuracy(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else 0.0


def confusion_matrix(y_true, y_pred, num_classes):
    """(C, C) counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def per_class_f1(cm):
    """F1 = 2 TP / (2 TP + FP + FN) per class (0 where the denominator is 0)."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp  # predicted as the class, but another class
    fn = cm.sum(axis=1) - tp  # of the class, predicted as another
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def macro_f1(y_true, y_pred, num_classes):
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred
    (scikit-learn's f1_score(average="macro") with its default labels)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(per_class_f1(cm)[present].mean()) if present.any() else 0.0


def format_confusion(cm, names):
    """The confusion matrix as a text table: rows true, columns predicted, and each row's recall."""
    short = [n[:10] for n in names]
    w = max(5, max(len(s) for s in short), len(str(int(cm.max()))))
    first = max(len("true\\pred"), max(len(s) for s in short))
    lines = ["true\\pred".ljust(first) + " " + " ".join(s.rjust(w) for s in short) + "  recall"]
    for i, s in enumerate(short):
        n = cm[i].sum()
        rec = f"{cm[i, i] / n:.2f}" if n else "-"
        lines.append(s.ljust(first) + " " + " ".join(str(int(v)).rjust(w) for v in cm[i]) + f"  {rec:>6}")
    return "\n".join(lines)


def evaluate(model, encoded, labels, batch_size, pad_id):
    """Loss and metrics of the model on encoded examples with labels.

    Classification: loss, acc, macro_f1, confusion (C x C list), preds; regression: loss
    (MSE), pearson, preds."""
    # in order of length, so that batches carry little padding; results put back in order
    order = np.argsort([len(ids) for ids, _ in encoded], kind="stable")  # (N,)
    preds, loss_sum = [], 0.0
    for batch in batches(encoded, labels, batch_size, pad_id, order):
        out = model.predict(batch)
        loss_sum += float(out["loss"]) * out["count"]
        preds.append(np.asarray(backend.to_host(out["preds"])))
    preds = np.concatenate(preds)[np.argsort(order)]  # (N,) in the examples' order
    res = {"loss": loss_sum / len(encoded), "examples": len(encoded)}
    if model.is_regression:
        y = np.asarray(labels, np.float64)
        ok = preds.std() > 0 and y.std() > 0
        res["pearson"] = float(np.corrcoef(preds, y)[0, 1]) if ok else 0.0
        res["preds"] = preds.astype(np.float64).tolist()
        return res
    res["acc"] = accuracy(labels, preds)
    res["macro_f1"] = macro_f1(labels, preds, model.num_labels)
    res["confusion"] = confusion_matrix(labels, preds, model.num_labels).tolist()
    res["preds"] = preds.astype(np.int64).tolist()
    return res


# ----------------------------------------------------------------------------------------
# checkpoints and prediction


def save_classifier(out, name, model, opt, tok, meta):
    """Write OUT/NAME atomically: params, AdamW state and a "minibert-classification" meta."""
    tensors, opt_meta = opt.state_dict() if opt is not None else ({}, None)
    meta = dict(meta, config=model.config.to_dict(), num_labels=model.num_labels, optim=opt_meta)
    rundir.save(out, name, rundir.CLASSIFICATION_KIND, model.params, tensors, meta, tok)


def load_classifier(run_dir, name="last", dtype=None):
    """(BertForSequenceClassification, tokenizer, meta) from a fine-tuning run directory.

    meta holds label_names (None for regression), max_length, the columns and the recipe.
    A checkpoint of another kind is a CheckpointError."""
    config, params, meta, tok = rundir.load_run(run_dir, name, rundir.CLASSIFICATION_KIND, dtype)
    return BertForSequenceClassification(config, meta["num_labels"], params=params), tok, meta


def predict(model, tok, meta, texts, pairs=None, top_k=3, batch_size=32):
    """For each text (and pair): classification -> list of (label name, probability), the
    top_k most probable; regression -> the predicted value."""
    if isinstance(texts, str):
        texts = [texts]
    pairs = [None] * len(texts) if pairs is None else list(pairs)
    if len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pair texts: give one pair per text")
    encoded = encode_examples(tok, [Example(t, p) for t, p in zip(texts, pairs)], meta["max_length"])
    pad = tok.token_to_id(SPECIAL_TOKENS[0])
    results = []
    for batch in batches(encoded, None, batch_size, pad):
        logits = np.asarray(backend.to_host(model.predict(batch)["logits"]), np.float64)  # (B, C)
        if model.is_regression:
            results += [float(v) for v in logits[:, 0]]
            continue
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))  # (B, C)
        probs /= probs.sum(axis=1, keepdims=True)
        for row in probs:
            best = np.argsort(-row, kind="stable")[:top_k]
            results.append([(meta["label_names"][int(i)], float(row[i])) for i in best])
    return results


# ----------------------------------------------------------------------------------------
# the training loop


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (the model's shape comes from the init); the
    flags of scripts/finetune.py."""
    init: str = "runs/pretrain"  # a pretraining run directory, or a Hugging Face directory with hf=True
    init_checkpoint: str = "last"
    random_init: bool = False  # the run's tokenizer and model shape, but freshly initialised weights
    hf: bool = False  # init is a Hugging Face BERT directory (needs tokenizer)
    tokenizer: str = ""  # tokenizer.json or vocab.txt (default: the pretraining run's; with hf, the directory's)
    train: str = ""  # data file; empty: the embedded default task
    validation: str = ""  # data file; empty: hold out valid_fraction of train
    valid_fraction: float = 0.1
    num_classes: int = 10  # default task: the number of packages
    train_per_class: int = 0  # keep at most this many training examples per class (0: all)
    text_column: str = "text"
    pair_column: str = "text_pair"
    label_column: str = "label"
    regression: bool = False
    epochs: int = 5
    lr: float = 5e-4
    warmup: float = 0.1  # fraction of all steps
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    batch_size: int = 32
    max_length: int = 128
    seed: int = 0
    dropout: float | None = None  # None: the pretrained config's
    backend: str = field(default_factory=backend.default_name)  # MINIBERT_BACKEND, else numpy
    dtype: str = "float32"
    out: str = "runs/finetune"
    overwrite: bool = False
    resume: bool = False  # continue the run in out from its last checkpoint
    log_every: int = 10
    eval_batch_size: int = 64


# the recipe: the fields scripts/compare_pretraining.py shares with scripts/finetune.py
RECIPE_KEYS = ("epochs", "lr", "warmup", "weight_decay", "grad_clip", "batch_size", "max_length", "num_classes",
               "log_every", "backend", "dtype")


def load_data(fc):
    """(train examples, validation examples, label names or None, description)."""
    if not fc.train:
        if fc.regression:
            raise ValueError("the default task is classification; --regression needs --train")
        frac = 0.05 if is_hf(fc) else rundir.run_heldout_fraction(fc.init)
        train, val, names = default_task(fc.num_classes, frac)
        what = (f"default task: stdlib package of a docstring, {len(names)} classes; train on documents "
                f"pretraining trained on, evaluate on the {len(val)} it held out (heldout_fraction {frac})")
    else:
        kw = dict(text_column=fc.text_column, pair_column=fc.pair_column, label_column=fc.label_column,
                  regression=fc.regression)
        train = read_examples(fc.train, **kw)
        if fc.validation:
            val = read_examples(fc.validation, **kw)
            what = f"train {fc.train}, validation {fc.validation}"
        else:
            train, val = split_examples(train, fc.valid_fraction, fc.seed)
            what = f"train {fc.train}, {fc.valid_fraction:.0%} held out for validation (seed {fc.seed})"
        names = None if fc.regression else label_names_from(train)
    if fc.train_per_class:
        if fc.regression:
            raise ValueError("--train-per-class needs class labels, not --regression")
        train = subsample_per_class(train, fc.train_per_class, fc.seed)
        what += f"; at most {fc.train_per_class} training examples per class"
    if not train:
        raise ValueError("empty split: no training examples")
    if not val:
        raise ValueError("empty split: no validation examples")
    if names is not None and len(names) < 2:
        raise ValueError(f"classification needs at least 2 labels in the training data, found {names}")
    return train, val, names, what


def is_hf(fc):
    """Whether the init is a Hugging Face BERT directory: --hf, or recognised from its files."""
    return fc.hf or interop.is_hf_dir(fc.init)


def build_model(fc, num_labels):
    """(model, tokenizer, description of the init) for the config's init."""
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
        model = BertForSequenceClassification.from_encoder(config, params, num_labels, seed=fc.seed)
        what = f"Hugging Face weights {fc.init}"
    else:
        config, params, meta = rundir.read_pretrained_encoder(fc.init, fc.init_checkpoint, fc.dtype)
        tok = rundir.run_tokenizer(fc.init, meta, fc.init_checkpoint, fc.tokenizer)
        if fc.dropout is not None:
            config.dropout = fc.dropout
        if fc.random_init:
            model = BertForSequenceClassification(config, num_labels, seed=fc.seed)
            what = f"random initialisation (seed {fc.seed}; shape and tokenizer of {fc.init})"
        else:
            model = BertForSequenceClassification.from_encoder(config, params, num_labels, seed=fc.seed)
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
_NOT_RESUME_KEYS = ("out", "overwrite", "resume", "log_every", "eval_batch_size", "backend")


def restore(fc, model, opt, tok, names):
    """Load OUT/last into model and opt; returns (epoch, step) it was saved at.

    CheckpointError for a checkpoint of another kind or tokenizer, or other parameters;
    ValueError for settings or labels that would not replay the same steps."""
    now = {k: v for k, v in asdict(fc).items() if k not in _NOT_RESUME_KEYS}
    meta = rundir.restore(fc.out, rundir.CLASSIFICATION_KIND, tok, model, opt, {
        "settings": ("finetune", now), "labels": (None, {"label_names": names})})
    return meta["epoch"], meta["step"]


def finetune(fc):
    """Run (or, with fc.resume, continue) fine-tuning; returns (model, tokenizer, results dict
    of the final evaluation). ValueError for a setting or run directory it refuses,
    rundir.RunDirLocked while another run writes to fc.out."""
    backend.use(fc.backend)
    for k in ("epochs", "batch_size", "max_length"):
        if getattr(fc, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(fc, k)}")
    if not 0.0 <= fc.warmup <= 1.0:
        raise ValueError(f"--warmup is a fraction of all steps, in [0, 1]; got {fc.warmup}")
    if fc.resume and fc.overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it: choose one")
    with rundir.lock(fc.out):  # one writer for the life of the run: nothing is written before it
        return _finetune(fc)


def _finetune(fc):
    t_start = time.time()
    if checkpoint_exists(fc.out, "last") and not (fc.overwrite or fc.resume):
        raise ValueError(f"{fc.out} already holds a run ({record_path(fc.out, 'last')} exists): pass --resume to continue it, "
                         "choose another --out, or pass --overwrite to replace it")
    if fc.resume and not checkpoint_exists(fc.out, "last"):
        raise ValueError(f"--resume: no checkpoint {record_path(fc.out, 'last')} to resume from")

    train, val, names, data_what = load_data(fc)
    num_labels = 1 if fc.regression else len(names)
    model, tok, init_what = build_model(fc, num_labels)
    pad = tok.token_to_id(SPECIAL_TOKENS[0])
    if fc.regression:
        y_train = np.array([e.label for e in train], np.float64)
        y_val = np.array([e.label for e in val], np.float64)
    else:
        y_train = label_ids(train, names, fc.train or "default task")
        y_val = label_ids(val, names, (fc.validation or fc.train or "default task") + " (validation)")
    enc_train = encode_examples(tok, train, fc.max_length)
    enc_val = encode_examples(tok, val, fc.max_length)

    steps_per_epoch = math.ceil(len(train) / fc.batch_size)
    total = steps_per_epoch * fc.epochs
    warmup = int(round(fc.warmup * total))
    opt = AdamW(model.params, lr=fc.lr, weight_decay=fc.weight_decay)
    epoch0, step = 0, 0
    if fc.resume:
        epoch0, step = restore(fc, model, opt, tok, names)
        log(f"resumed {fc.out} at step {step} (after epoch {epoch0})")

    tok.save(os.path.join(fc.out, rundir.TOKENIZER_FILE))
    metrics = MetricsFile(os.path.join(fc.out, rundir.METRICS_FILE), resume_step=step if fc.resume else None)
    rundir.write_json(os.path.join(fc.out, rundir.CONFIG_FILE),
                      {"model": model.config.to_dict(), "finetune": asdict(fc), "label_names": names})
    log(f"data: {data_what}")
    log(f"data: {len(train):,} training examples, {len(val):,} validation examples, "
        f"{'regression' if fc.regression else f'{num_labels} classes'}")
    if names is not None:
        ct, cv = class_counts(train, names), class_counts(val, names)
        log("classes (train / validation): " + ", ".join(f"{n} {ct[n]}/{cv[n]}" for n in names))
    log(f"model: {init_what}; L={model.config.num_layers}, H={model.config.hidden_size}, "
        f"{model.num_parameters():,} parameters, {model.config.dtype}, backend {backend.name}")

    log(f"recipe: {fc.epochs} epochs x {steps_per_epoch} steps of {fc.batch_size} (max length {fc.max_length}), "
        f"lr {fc.lr:.1e}, warmup {warmup} steps, linear decay, weight decay {fc.weight_decay}, seed {fc.seed}")
    meta_base = {"task": "regression" if fc.regression else "classification", "label_names": names,
                 "max_length": fc.max_length, "finetune": asdict(fc), "init": init_what,
                 "columns": {"text": fc.text_column, "text_pair": fc.pair_column, "label": fc.label_column}}

    t_loop, step0 = time.time(), step
    window = MetricsWindow()
    ev = None
    for epoch in range(epoch0 + 1, fc.epochs + 1):
        order = length_grouped_batches(enc_train, fc.batch_size, np.random.default_rng((fc.seed, epoch)))
        for batch in batches(enc_train, y_train, fc.batch_size, pad, order):
            lr = lr_at(step, fc.lr, warmup, total)
            out, cache = model.forward(batch, train=True, rng=philox.rng((fc.seed, step)))
            grads = model.backward(cache)
            norm = clip_grad_norm(grads, fc.grad_clip)
            if not math.isfinite(norm) or not math.isfinite(float(out["loss"])):
                raise FloatingPointError(f"non-finite loss or gradient at step {step + 1} (grad norm {norm}); "
                                         "try a lower --lr")
            opt.step(grads, lr=lr)
            step += 1
            window.add(loss=float(out["loss"]), correct=int(out.get("correct", 0)), count=out["count"],
                       tokens=batch["attention_mask"].sum())
            window.step()
            if step % fc.log_every == 0 or step == total:
                rec = {"step": step, "epoch": epoch, "loss": window.mean("loss"), "lr": lr, "grad_norm": float(norm),
                       **window.speed(), "elapsed_s": time.time() - t_start}
                shown = {"loss": rec["loss"]}
                if not fc.regression:
                    rec["acc"] = shown["acc"] = window.ratio("correct", "count")
                left = (time.time() - t_loop) / (step - step0) * (total - step)
                log(log_line(step, total, prefix=f"epoch {epoch}/{fc.epochs}", **shown, lr=lr, grad_norm=norm,
                             ms_per_step=rec["ms_per_step"], tokens_per_s=rec["tokens_per_s"], left=left))
                metrics.write(rec)
                window.reset()

        ev = evaluate(model, enc_val, y_val, fc.eval_batch_size, pad)
        summary = {k: v for k, v in ev.items() if k not in ("preds", "confusion")}
        metrics.write({"step": step, "epoch": epoch, **{f"eval_{k}": v for k, v in summary.items()}})
        if fc.regression:
            log(f"eval  epoch {epoch} | mse {ev['loss']:.4f} | pearson {ev['pearson']:.3f} ({len(val)} examples)")
        else:
            log(f"eval  epoch {epoch} | loss {ev['loss']:.3f} | acc {ev['acc']:.3f} | macro-F1 "
                f"{ev['macro_f1']:.3f} ({len(val)} examples)")
        save_classifier(fc.out, "last", model, opt, tok,
                        dict(meta_base, epoch=epoch, step=step, eval=summary))

    if ev is None:  # resumed a run that had finished: its last epoch is evaluated again
        ev = evaluate(model, enc_val, y_val, fc.eval_batch_size, pad)
    results = {k: v for k, v in ev.items() if k != "preds"}
    results.update(label_names=names, init=init_what, epochs=fc.epochs, steps=step,
                   train_examples=len(train), validation_examples=len(val),
                   elapsed_s=time.time() - t_start)
    if names is not None:
        results.update(train_class_counts=class_counts(train, names), validation_class_counts=class_counts(val, names))
    rundir.write_json(os.path.join(fc.out, rundir.RESULTS_FILE), results)
    if names is not None and len(names) <= MAX_CLASSES_SHOWN:
        log("confusion matrix on the validation examples (rows: true label, columns: predicted):")
        log(format_confusion(np.array(ev["confusion"]), names))
    head = (f"mse {ev['loss']:.4f} pearson {ev['pearson']:.3f}" if fc.regression
            else f"acc {ev['acc']:.3f} macro-F1 {ev['macro_f1']:.3f}")
    log(f"done: {step} steps in {fmt_time(time.time() - t_start)} | validation {head} | saved in {fc.out}")
    return model, tok, results




# ----------------------------------------------------------------------------------------
# prediction with a saved run


def predict_run(run_dir, texts=None, pairs=None, path=None, top_k=3):
    """Classify texts (with pairs), or the examples of a data file `path`, with the fine-tuned
    run in run_dir; print each prediction, and the score when every example of the file has a
    label. Returns predict()'s results. An unknown label in the file is a ValueError."""
    model, tok, meta = load_classifier(run_dir)
    if path:
        cols = meta["columns"]
        examples = read_examples(path, cols["text"], cols["text_pair"], cols["label"],
                                 require_label=False, regression=model.is_regression)
        if not examples:
            raise ValueError(f"empty split: {path} holds no examples")
        texts, pairs = [e.text for e in examples], [e.text_pair for e in examples]
    else:
        examples = None
    results = predict(model, tok, meta, texts, pairs, top_k=top_k)
    for text, r in zip(texts, results):
        shown = f"{r:.4f}" if model.is_regression else " | ".join(f"{n} {p:.2f}" for n, p in r)
        log(f"{shown}\t{text[:100]}")
    labelled = examples is not None and all(e.label is not None for e in examples)
    if labelled and not model.is_regression:
        names = meta["label_names"]
        y = label_ids(examples, names, path)  # an unknown label is a clear error
        pred = label_ids([Example("", None, r[0][0]) for r in results], names)
        cm = confusion_matrix(y, pred, len(names))
        log(f"accuracy {accuracy(y, pred):.3f} | macro-F1 {macro_f1(y, pred, len(names)):.3f} ({len(y)} examples)")
        if len(names) <= MAX_CLASSES_SHOWN:
            log(format_confusion(cm, names))
    elif labelled:
        y = np.array([e.label for e in examples])
        log(f"mse {float(np.mean((np.array(results) - y) ** 2)):.4f} ({len(y)} examples)")
    return results
