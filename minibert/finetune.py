"""The fine-tuning program: labelled text -> BertForSequenceClassification -> checkpoints.

    python scripts/finetune.py                              # the default task, from runs/pretrain
    python scripts/finetune.py --train train.csv --validation dev.csv --epochs 3 --out runs/task
    python scripts/finetune.py --model runs/finetune --predict "Return the socket's file descriptor."

Data (read_examples): CSV, TSV or JSON lines with a `text` column, an optional `text_pair`
column (sentence-pair tasks), and a `label` column (any names; regression: numbers). Label
names are sorted (numerically when every name is an integer) and mapped to ids 0..C-1; the
names are saved in the checkpoint, so predictions come back as names. Without a validation
file, a seeded --valid-fraction of the training file is held out.

Encoding (encode_example), as BERT's run_classifier.py does it:
    single text:  [CLS] A [SEP]            token types 0 ... 0
    pair:         [CLS] A [SEP] B [SEP]    token types 0 ... 0 1 ... 1
truncated to --max-length tokens longest-first: one token at a time from the end of the
longer segment (B on a tie). User text is encoded with allowed_special="none", so a literal
"[SEP]" or "[MASK]" in a CSV cell is ordinary text, never a special token.

One training step: out, cache = model.forward(batch, rng=(seed, step)); grads = backward;
clip_grad_norm; AdamW with linear warmup (a fraction of all steps) then linear decay to 0.
Batches are length-grouped (length_grouped_batches: rows of similar length share a batch,
so little compute goes to padding). Every random draw is a function of counters: the
batches of epoch e come from (seed, e), the dropout masks of step s from (seed, s), the
classifier head from [seed, 1].

The default task (default_task): from the standard library's docstrings, predict the
top-level package a docstring belongs to, over the --num-classes largest packages. Training
examples come only from documents pretraining trained on, evaluation examples only from the
documents it held out (data.is_heldout, with the pretraining run's heldout_fraction), so the
evaluation text was never seen by the encoder. That evaluation set is the test set: no
checkpoint or epoch is selected on it; the numbers reported are those after the last epoch.

Run directory OUT:
    tokenizer.json                 the tokenizer (copied from the pretraining run)
    last.json / last.*.safetensors the model after the latest epoch (kind
                                   "minibert-classification", with label names, task,
                                   max length, optimizer state), written atomically
    metrics.jsonl                  one JSON line per log interval and per evaluation
    results.json                   final evaluation: accuracy, macro-F1, confusion matrix
"""
import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from minibert import backend
from minibert.checkpoint import CheckpointError, checkpoint_exists, save_checkpoint
from minibert.classifier import (
    CLASSIFICATION_KIND, BertForSequenceClassification, read_pretrained_encoder, run_heldout_fraction,
)
from minibert.inference import load_run

MAX_CLASSES_SHOWN = 12  # the confusion matrix is printed only up to this many classes


def log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------
# reading labelled data


@dataclass
class Example:
    text: str
    text_pair: str | None = None
    label: str | float | None = None  # a label name (classification) or a number (regression)


def _rows(path):
    """(row number, dict) for each row of a CSV, TSV or JSON-lines file, and its columns."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's BOM is not part of a name
            kw = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if ext == ".tsv" else {}
            reader = csv.DictReader(f, **kw)
            columns = reader.fieldnames or []
            rows = [(i + 2, r) for i, r in enumerate(reader)]  # row 1 is the header
        return rows, columns
    if ext in (".jsonl", ".json", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):  # a JSON array of objects is accepted too
            items = list(enumerate(json.loads(text), 1))
        else:
            items = []
            for i, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        items.append((i, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}: line {i} is not valid JSON ({e})") from None
        for i, r in items:
            if not isinstance(r, dict):
                raise ValueError(f"{path}: line {i} is not a JSON object")
        columns = sorted({k for _, r in items for k in r})
        return items, columns
    raise ValueError(f"{path}: unknown data format {ext!r}: use .csv, .tsv or .jsonl")


def read_examples(path, text_column="text", pair_column="text_pair", label_column="label",
                  require_label=True, regression=False):
    """Examples from a CSV, TSV or JSON-lines file; ValueError naming the file and the problem.

    The pair column is optional (absent: single-text examples; an empty cell: no pair for
    that row). The label column is required when require_label; labels are kept as names
    (strings) for classification and converted to floats for regression."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} not found")
    rows, columns = _rows(path)
    need = [text_column] + ([label_column] if require_label else [])
    for col in need:
        if col not in columns:
            raise ValueError(f"{path}: no column {col!r} (columns: {columns}); choose the column with "
                             f"--{'text' if col == text_column else 'label'}-column")
    has_label = label_column in columns
    out = []
    for i, r in rows:
        text = r.get(text_column)
        if text is None:
            raise ValueError(f"{path}: row {i} has no value for column {text_column!r}")
        pair = r.get(pair_column)
        pair = None if pair in (None, "") else str(pair)
        label = None
        if has_label:
            label = r.get(label_column)
            if label is None or label == "":
                if require_label:
                    raise ValueError(f"{path}: row {i} has no value for column {label_column!r}")
                label = None
            elif regression:
                try:
                    label = float(label)
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: row {i}: regression label {label!r} is not a number") from None
                if not math.isfinite(label):
                    raise ValueError(f"{path}: row {i}: regression label {label!r} is not finite")
            else:
                label = str(label)
        out.append(Example(str(text), pair, label))
    return out


def label_names_from(examples):
    """Sorted label names of the examples (numerically when every name is an integer)."""
    names = {e.label for e in examples if e.label is not None}
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def label_ids(examples, names, where="data"):
    """Class ids of the examples' labels; ValueError for a label the model does not know."""
    index = {n: i for i, n in enumerate(names)}
    ids = []
    for j, e in enumerate(examples):
        if e.label not in index:
            raise ValueError(f"{where}: example {j + 1} has label {e.label!r}, which is not one of the "
                             f"model's labels {names}")
        ids.append(index[e.label])
    return np.array(ids, dtype=np.int64)


def split_examples(examples, fraction, seed):
    """(train, validation) by a seeded permutation; ValueError when either would be empty."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--valid-fraction must be in (0, 1), got {fraction}")
    n_val = int(round(fraction * len(examples)))
    if n_val == 0 or n_val == len(examples):
        raise ValueError(f"empty split: {len(examples)} examples with --valid-fraction {fraction} leave "
                         f"{len(examples) - n_val} for training and {n_val} for validation")
    order = np.random.default_rng(seed).permutation(len(examples))
    val = set(order[:n_val].tolist())
    return ([e for i, e in enumerate(examples) if i not in val], [e for i, e in enumerate(examples) if i in val])


# ----------------------------------------------------------------------------------------
# the default task: which standard-library package does a docstring come from?


def default_task(num_classes=10, heldout_fraction=0.05):
    """(train examples, evaluation examples, label names) of the embedded task.

    Classes: the num_classes top-level packages with the most docstrings (ties by name).
    Train: their documents pretraining trained on; evaluation: only those it held out."""
    from minibert import data
    from collections import Counter
    docs = data.default_corpus("all", heldout_fraction=heldout_fraction)
    counts = Counter(d.package for d in docs)
    names = sorted(sorted(counts, key=lambda p: (-counts[p], p))[:num_classes])
    keep = set(names)
    train, held = [], []
    for d in docs:
        if d.package in keep:
            (held if data.is_heldout(d, heldout_fraction) else train).append(Example(d.text, None, d.package))
    return train, held, names


def subsample_per_class(examples, n, seed):
    """At most n examples of each label, drawn with the stream [seed, 2], in input order."""
    rng = np.random.default_rng([int(seed), 2])
    labels = np.array([e.label for e in examples], dtype=object)
    keep = []
    for name in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == name)
        keep += rng.choice(idx, size=min(n, len(idx)), replace=False).tolist()
    return [examples[i] for i in sorted(keep)]


def class_counts(examples, names):
    return {n: sum(1 for e in examples if e.label == n) for n in names}


# ----------------------------------------------------------------------------------------
# encoding and batches


def encode_example(tok, text, pair, max_length, cls_id, sep_id):
    """(token ids, token type ids) of [CLS] A [SEP] (B [SEP]), truncated longest-first."""
    a = tok.encode(text, allowed_special="none")
    b = tok.encode(pair, allowed_special="none") if pair is not None else None
    budget = max_length - (3 if b is not None else 2)
    if budget < (2 if b is not None else 1):
        raise ValueError(f"--max-length {max_length} leaves no room for text next to [CLS] and [SEP]")
    if b is None:
        a = a[:budget]
        return [cls_id] + a + [sep_id], [0] * (len(a) + 2)
    # longest first: drop from the end of the longer segment (B on a tie), as truncate_seq_pair
    while len(a) + len(b) > budget:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    ids = [cls_id] + a + [sep_id] + b + [sep_id]
    return ids, [0] * (len(a) + 2) + [1] * (len(b) + 1)


def encode_examples(tok, examples, max_length):
    """A list of (ids, types) per example."""
    from minibert.tokenizer import SPECIAL_TOKENS
    pad, cls_id, sep_id, _ = (tok.token_to_id(s) for s in SPECIAL_TOKENS)
    return [encode_example(tok, e.text, e.text_pair, max_length, cls_id, sep_id) for e in examples]


def make_batch(encoded, labels, idx, pad_id):
    """Host batch of the rows idx, padded to its longest row: input_ids, token_type_ids,
    attention_mask (B, T), and labels (B,) when labels is not None."""
    T = max(len(encoded[i][0]) for i in idx)
    B = len(idx)
    ids = np.full((B, T), pad_id, np.int64)  # (B, T)
    types = np.zeros((B, T), np.int64)  # (B, T)
    mask = np.zeros((B, T), np.int64)  # (B, T)
    for r, i in enumerate(idx):
        x, t = encoded[i]
        ids[r, :len(x)], types[r, :len(x)], mask[r, :len(x)] = x, t, 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = labels[np.asarray(idx)]
    return batch


def batches(encoded, labels, batch_size, pad_id, order=None):
    """Batches of batch_size consecutive rows of `order` (default: the given order), or of
    each index array when `order` is a list of them (see length_grouped_batches)."""
    order = np.arange(len(encoded)) if order is None else order
    groups = order if isinstance(order, list) else [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for idx in groups:
        yield make_batch(encoded, labels, idx, pad_id)


def length_grouped_batches(encoded, batch_size, rng, group=50):
    """An epoch's batches as index arrays: a random permutation, cut into groups of
    `group` batches; each group sorted by length and cut into batches; the batches
    shuffled. Rows of similar length share a batch, so little compute goes to padding
    (docstrings run from 10 to 500 tokens), while every batch is still a random draw."""
    lengths = np.array([len(ids) for ids, _ in encoded])
    perm = rng.permutation(len(encoded))  # (N,)
    out = []
    for s in range(0, len(perm), batch_size * group):
        chunk = perm[s:s + batch_size * group]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        out += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


# ----------------------------------------------------------------------------------------
# metrics


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
# checkpoints


def save_classifier(out, name, model, opt, tok, meta):
    """Write OUT/NAME atomically: params, AdamW state and a "minibert-classification" meta."""
    tensors, opt_meta = opt.state_dict() if opt is not None else ({}, None)
    meta = dict(meta, kind=CLASSIFICATION_KIND, config=model.config.to_dict(), num_labels=model.num_labels,
                tokenizer_fingerprint=tok.fingerprint(), optim=opt_meta)
    save_checkpoint(out, name, model.params, tensors, meta)


def load_classifier(run_dir, name="last", dtype=None):
    """(BertForSequenceClassification, tokenizer, meta) from a fine-tuning run directory.

    meta holds label_names (None for regression), max_length, the columns and the recipe.
    A checkpoint of another kind is a CheckpointError."""
    config, params, meta, tok = load_run(run_dir, name, CLASSIFICATION_KIND, dtype)
    return BertForSequenceClassification(config, meta["num_labels"], params=params), tok, meta


def predict(model, tok, meta, texts, pairs=None, top_k=3, batch_size=32):
    """For each text (and pair): classification -> list of (label name, probability), the
    top_k most probable; regression -> the predicted value."""
    from minibert.tokenizer import SPECIAL_TOKENS
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
    """Everything a fine-tuning run depends on (the model's shape comes from the init)."""
    init: str = "runs/pretrain"  # a pretraining run directory, or a Hugging Face directory with hf=True
    init_checkpoint: str = "last"
    random_init: bool = False  # the run's tokenizer and model shape, but freshly initialised weights
    hf: bool = False  # init is a Hugging Face BERT directory (needs tokenizer)
    tokenizer: str = ""  # a tokenizer.json (default: the pretraining run's)
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
    backend: str = "numpy"
    dtype: str = "float32"
    out: str = "runs/finetune"
    overwrite: bool = False
    log_every: int = 10
    eval_batch_size: int = 64


def load_data(fc):
    """(train examples, validation examples, label names or None, description)."""
    if not fc.train:
        if fc.regression:
            raise ValueError("the default task is classification; --regression needs --train")
        frac = 0.05 if fc.hf else run_heldout_fraction(fc.init)
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


def build_model(fc, num_labels):
    """(model, tokenizer, description of the init) for the config's init."""
    from minibert.tokenizer import SPECIAL_TOKENS
    from minibert.tokenizer import BPETokenizer
    if fc.hf:
        if not fc.tokenizer:
            raise ValueError("--hf needs --tokenizer: the minibert tokenizer.json the Hugging Face model was "
                             "trained with (e.g. the pretraining run's, for a model exported with interop.save_hf)")
        tok = BPETokenizer.load(fc.tokenizer)
        model = BertForSequenceClassification.from_hf(fc.init, num_labels, seed=fc.seed, dtype=fc.dtype)
        what = f"Hugging Face weights {fc.init}"
    else:
        config, params, meta = read_pretrained_encoder(fc.init, fc.init_checkpoint, fc.dtype)
        tok_path = fc.tokenizer or os.path.join(fc.init, "tokenizer.json")
        tok = BPETokenizer.load(tok_path)
        if not fc.tokenizer and meta.get("tokenizer_fingerprint") != tok.fingerprint():
            raise CheckpointError(f"{tok_path} is not the tokenizer {fc.init} was pretrained with")
        if fc.dropout is not None:
            config.dropout = fc.dropout
        if fc.random_init:
            model = BertForSequenceClassification(config, num_labels, seed=fc.seed)
            what = f"random initialisation (seed {fc.seed}; shape and tokenizer of {fc.init})"
        else:
            model = BertForSequenceClassification.from_encoder(config, params, num_labels, seed=fc.seed)
            what = f"pretrained encoder {fc.init}/{fc.init_checkpoint}.json (step {meta.get('step')})"
    if fc.hf and fc.dropout is not None:
        model.config.dropout = fc.dropout
    if tok.vocab_size != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens, the model's vocabulary {model.config.vocab_size}")
    for s in SPECIAL_TOKENS[:3]:
        if s not in tok.special_tokens:
            raise ValueError(f"the tokenizer lacks the special token {s!r}")
    if fc.max_length > model.config.max_position:
        raise ValueError(f"--max-length {fc.max_length} exceeds the model's max_position {model.config.max_position}")
    return model, tok, what


def finetune(fc):
    """Run fine-tuning; returns (model, tokenizer, results dict of the final evaluation)."""
    from minibert.tokenizer import SPECIAL_TOKENS
    from minibert.optim import AdamW, clip_grad_norm, lr_at
    from minibert.train import Metrics, fmt_time
    backend.use(fc.backend)
    t_start = time.time()
    if checkpoint_exists(fc.out, "last") and not fc.overwrite:
        raise ValueError(f"{fc.out} already holds a run (last.json): choose another --out or pass --overwrite")
    for k in ("epochs", "batch_size", "max_length"):
        if getattr(fc, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(fc, k)}")
    if not 0.0 <= fc.warmup <= 1.0:
        raise ValueError(f"--warmup is a fraction of all steps, in [0, 1]; got {fc.warmup}")

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

    os.makedirs(fc.out, exist_ok=True)
    tok.save(os.path.join(fc.out, "tokenizer.json"))
    metrics = Metrics(os.path.join(fc.out, "metrics.jsonl"))
    with open(os.path.join(fc.out, "config.json"), "w") as f:
        json.dump({"model": model.config.to_dict(), "finetune": asdict(fc), "label_names": names}, f, indent=2)
    log(f"data: {data_what}")
    log(f"data: {len(train):,} training examples, {len(val):,} validation examples, "
        f"{'regression' if fc.regression else f'{num_labels} classes'}")
    if names is not None:
        ct, cv = class_counts(train, names), class_counts(val, names)
        log("classes (train / validation): " + ", ".join(f"{n} {ct[n]}/{cv[n]}" for n in names))
    log(f"model: {init_what}; L={model.config.num_layers}, H={model.config.hidden_size}, "
        f"{model.num_parameters():,} parameters, {model.config.dtype}, backend {backend.name}")

    steps_per_epoch = math.ceil(len(train) / fc.batch_size)
    total = steps_per_epoch * fc.epochs
    warmup = int(round(fc.warmup * total))
    opt = AdamW(model.params, lr=fc.lr, weight_decay=fc.weight_decay)
    log(f"recipe: {fc.epochs} epochs x {steps_per_epoch} steps of {fc.batch_size} (max length {fc.max_length}), "
        f"lr {fc.lr:.1e}, warmup {warmup} steps, linear decay, weight decay {fc.weight_decay}, seed {fc.seed}")
    meta_base = {"task": "regression" if fc.regression else "classification", "label_names": names,
                 "max_length": fc.max_length, "finetune": asdict(fc), "init": init_what,
                 "columns": {"text": fc.text_column, "text_pair": fc.pair_column, "label": fc.label_column}}

    step, t_loop = 0, time.time()
    win = dict(loss=0.0, correct=0, count=0, tokens=0, steps=0, t0=time.time())
    ev = None
    for epoch in range(1, fc.epochs + 1):
        order = length_grouped_batches(enc_train, fc.batch_size, np.random.default_rng((fc.seed, epoch)))
        for batch in batches(enc_train, y_train, fc.batch_size, pad, order):
            lr = lr_at(step, fc.lr, warmup, total)
            out, cache = model.forward(batch, train=True, rng=backend.rng((fc.seed, step)))
            grads = model.backward(cache)
            norm = clip_grad_norm(grads, fc.grad_clip)
            if not math.isfinite(norm) or not math.isfinite(float(out["loss"])):
                raise FloatingPointError(f"non-finite loss or gradient at step {step + 1} (grad norm {norm}); "
                                         "try a lower --lr")
            opt.step(grads, lr=lr)
            step += 1
            win["loss"] += float(out["loss"])
            win["correct"] += int(out.get("correct", 0))
            win["count"] += out["count"]
            win["tokens"] += int(batch["attention_mask"].sum())
            win["steps"] += 1
            if step % fc.log_every == 0 or step == total:
                dt = time.time() - win["t0"]
                n = win["steps"]
                rec = {"step": step, "epoch": epoch, "loss": win["loss"] / n, "lr": lr, "grad_norm": norm,
                       "ms_per_step": 1000 * dt / n, "tokens_per_s": win["tokens"] / dt,
                       "elapsed_s": time.time() - t_start}
                acc = ""
                if not fc.regression:
                    rec["acc"] = win["correct"] / max(win["count"], 1)
                    acc = f" | acc {rec['acc']:.3f}"
                left = (time.time() - t_loop) / step * (total - step)
                log(f"epoch {epoch}/{fc.epochs} | step {step:>{len(str(total))}}/{total} | loss {rec['loss']:.3f}"
                    f"{acc} | lr {lr:.1e} | norm {norm:.2f} | {rec['ms_per_step']:.0f} ms | "
                    f"{rec['tokens_per_s']:,.0f} tok/s | left {fmt_time(left)}")
                metrics.write(rec)
                win = dict(loss=0.0, correct=0, count=0, tokens=0, steps=0, t0=time.time())

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

    results = {k: v for k, v in ev.items() if k != "preds"}
    results.update(label_names=names, init=init_what, epochs=fc.epochs, steps=step,
                   train_examples=len(train), validation_examples=len(val),
                   elapsed_s=time.time() - t_start)
    if names is not None:
        results.update(train_class_counts=class_counts(train, names), validation_class_counts=class_counts(val, names))
    with open(os.path.join(fc.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    if names is not None and len(names) <= MAX_CLASSES_SHOWN:
        log("confusion matrix on the validation examples (rows: true label, columns: predicted):")
        log(format_confusion(np.array(ev["confusion"]), names))
    head = (f"mse {ev['loss']:.4f} pearson {ev['pearson']:.3f}" if fc.regression
            else f"acc {ev['acc']:.3f} macro-F1 {ev['macro_f1']:.3f}")
    log(f"done: {step} steps in {fmt_time(time.time() - t_start)} | validation {head} | saved in {fc.out}")
    return model, tok, results


# ----------------------------------------------------------------------------------------
# does pretraining pay? the same recipe from the pretrained encoder and from random weights


def compare_pretraining(pretrained, out="runs/compare", seeds=(0,), train_per_class=(0,), **recipe):
    """Fine-tune from (a) the pretrained run and (b) random weights of the same shape, with
    the same recipe and seeds, on the default task unless recipe says otherwise; once with
    each training-set size in train_per_class (0: all training examples).
    Returns the results dict also written to OUT/results.json (and the table to results.md)."""
    result = {"pretrained_run": pretrained, "seeds": list(seeds), "regimes": []}
    with open(os.path.join(pretrained, "last.json")) as f:
        meta = json.load(f)["meta"]
    result["pretraining_step"] = meta.get("step")
    result["pretraining_steps_planned"] = meta.get("train", {}).get("steps")
    for n in train_per_class:
        regime = {"train_per_class": n, "runs": {"pretrained": [], "random": []}}
        for seed in seeds:
            for init in ("pretrained", "random"):
                fc = FinetuneConfig(init=pretrained, random_init=(init == "random"), seed=seed, train_per_class=n,
                                    out=os.path.join(out, f"{init}-n{n}-seed{seed}"), overwrite=True, **recipe)
                log(f"\n=== {init} initialisation, {n or 'all'} training examples per class, seed {seed} ===")
                _, _, res = finetune(fc)
                regime["runs"][init].append({"seed": seed, "acc": res["acc"], "macro_f1": res["macro_f1"],
                                             "loss": res["loss"], "train_examples": res["train_examples"],
                                             "examples": res["examples"], "elapsed_s": res["elapsed_s"]})
        for init, rs in regime["runs"].items():
            regime[init] = {m: float(np.mean([r[m] for r in rs])) for m in ("acc", "macro_f1")}
            regime[init].update({m + "_std": float(np.std([r[m] for r in rs])) for m in ("acc", "macro_f1")})
        regime["train_examples"] = regime["runs"]["pretrained"][0]["train_examples"]
        result["validation_examples"] = regime["runs"]["pretrained"][0]["examples"]
        result["regimes"].append(regime)
    fc = FinetuneConfig(init=pretrained, **recipe)
    result["recipe"] = {k: getattr(fc, k) for k in ("epochs", "lr", "warmup", "weight_decay", "batch_size",
                                                    "max_length", "num_classes", "train", "validation", "tokenizer")}
    table = results_table(result)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    log("\n" + table)
    return result


def results_table(result):
    """A markdown table of held-out accuracy and macro-F1, pretrained vs random init."""
    n = len(result["seeds"])
    fmt = (lambda r, m: f"{r[m]:.3f} ± {r[m + '_std']:.3f}") if n > 1 else (lambda r, m: f"{r[m]:.3f}")
    step, planned = result["pretraining_step"], result.get("pretraining_steps_planned")
    of = f" of {planned}" if planned and planned != step else ""
    lines = ["| training examples | initialisation | held-out accuracy | held-out macro-F1 |", "|---|---|---|---|"]
    for g in result["regimes"]:
        size = f"{g['train_examples']:,}" + (f" ({g['train_per_class']} per class)" if g["train_per_class"] else " (all)")
        lines.append(f"| {size} | (a) pretrained ({result['pretrained_run']}, step {step}{of}) | "
                     f"{fmt(g['pretrained'], 'acc')} | {fmt(g['pretrained'], 'macro_f1')} |")
        lines.append(f"| {size} | (b) random | {fmt(g['random'], 'acc')} | {fmt(g['random'], 'macro_f1')} |")
    seeds = f"mean ± std over seeds {result['seeds']}" if n > 1 else f"seed {result['seeds'][0]}"
    lines.append(f"\n{result['validation_examples']} held-out examples; {seeds}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# command line


def add_recipe_args(p, d=None):
    d = d or FinetuneConfig()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=float, default=d.warmup, help="fraction of all steps (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--num-classes", type=int, default=d.num_classes, help="default task: how many packages")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--backend", default=os.environ.get("MINIBERT_BACKEND", d.backend), choices=["numpy", "cupy"])
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"])


RECIPE_KEYS = ("epochs", "lr", "warmup", "weight_decay", "grad_clip", "batch_size", "max_length", "num_classes",
               "log_every", "backend", "dtype")


def build_parser():
    p = argparse.ArgumentParser(description="Fine-tune a pretrained minibert on a classification (or regression) "
                                "task, or predict with a fine-tuned one. With no arguments: the default task "
                                "(stdlib package of a docstring) from runs/pretrain.")
    d = FinetuneConfig()
    p.add_argument("--from", dest="init", default=d.init, help="pretraining run directory (default %(default)s), "
                   "or a Hugging Face BERT directory with --hf")
    p.add_argument("--checkpoint", dest="init_checkpoint", default=d.init_checkpoint, choices=["last", "best"])
    p.add_argument("--random-init", action="store_true", help="same shape and tokenizer, random weights")
    p.add_argument("--hf", action="store_true", help="--from is a Hugging Face BERT directory")
    p.add_argument("--tokenizer", default="", help="tokenizer.json (default: the pretraining run's)")
    p.add_argument("--train", default="", help="CSV, TSV or JSON-lines file (default: the embedded task)")
    p.add_argument("--validation", default="", help="a separate validation file")
    p.add_argument("--valid-fraction", type=float, default=d.valid_fraction)
    p.add_argument("--text-column", default=d.text_column)
    p.add_argument("--pair-column", default=d.pair_column)
    p.add_argument("--label-column", default=d.label_column)
    p.add_argument("--regression", action="store_true", help="numeric labels, one output, MSE loss")
    p.add_argument("--train-per-class", type=int, default=0, help="at most N training examples per class "
                   "(a smaller labelled task; 0: all)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dropout", type=float, default=None, help="default: the pretrained config's")
    p.add_argument("--out", default=d.out)
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    add_recipe_args(p, d)
    g = p.add_argument_group("prediction (no training)")
    g.add_argument("--predict", nargs="+", metavar="TEXT", help="texts to classify with --model")
    g.add_argument("--pair", nargs="+", metavar="TEXT", help="second segments for --predict, one per text")
    g.add_argument("--predict-file", help="CSV/TSV/JSON lines to classify; with a label column, also scored")
    g.add_argument("--model", default=None, help="fine-tuning run directory for prediction (default: --out)")
    g.add_argument("--top-k", type=int, default=3)
    return p


def config_from_args(args):
    kw = {k: getattr(args, k) for k in ("init", "init_checkpoint", "random_init", "hf", "tokenizer", "train",
                                        "validation", "valid_fraction", "text_column", "pair_column",
                                        "label_column", "regression", "train_per_class", "seed", "dropout", "out", "overwrite",
                                        *RECIPE_KEYS)}
    return FinetuneConfig(**kw)


def run_predict(args):
    backend.use(args.backend)
    model, tok, meta = load_classifier(args.model or args.out)
    if args.predict_file:
        cols = meta["columns"]
        examples = read_examples(args.predict_file, cols["text"], cols["text_pair"], cols["label"],
                                 require_label=False, regression=model.is_regression)
        if not examples:
            raise ValueError(f"empty split: {args.predict_file} holds no examples")
        texts, pairs = [e.text for e in examples], [e.text_pair for e in examples]
    else:
        examples, texts, pairs = None, args.predict, args.pair
    results = predict(model, tok, meta, texts, pairs, top_k=args.top_k)
    for text, r in zip(texts, results):
        shown = f"{r:.4f}" if model.is_regression else " | ".join(f"{n} {p:.2f}" for n, p in r)
        log(f"{shown}\t{text[:100]}")
    labelled = examples is not None and all(e.label is not None for e in examples)
    if labelled and not model.is_regression:
        names = meta["label_names"]
        y = label_ids(examples, names, args.predict_file)  # an unknown label is a clear error
        pred = label_ids([Example("", None, r[0][0]) for r in results], names)
        cm = confusion_matrix(y, pred, len(names))
        log(f"accuracy {accuracy(y, pred):.3f} | macro-F1 {macro_f1(y, pred, len(names)):.3f} ({len(y)} examples)")
        if len(names) <= MAX_CLASSES_SHOWN:
            log(format_confusion(cm, names))
    elif labelled:
        y = np.array([e.label for e in examples])
        log(f"mse {float(np.mean((np.array(results) - y) ** 2)):.4f} ({len(y)} examples)")
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.predict or args.predict_file:
            if args.pair and not args.predict:
                raise ValueError("--pair goes with --predict")
            run_predict(args)
        else:
            finetune(config_from_args(args))
    except (ValueError, FloatingPointError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def compare_main(argv=None):
    p = argparse.ArgumentParser(description="Does pretraining pay? Fine-tune the same recipe from a pretrained "
                                "run and from random weights; print a markdown table and write JSON.")
    p.add_argument("--pretrained", default="runs/pretrain", help="pretraining run directory (default %(default)s)")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-per-class", type=int, nargs="+", default=[0], help="training-set sizes to compare "
                   "(at most N examples per class; 0: all), e.g. 0 32")
    p.add_argument("--tokenizer", default="", help="tokenizer.json (default: the pretraining run's, checked "
                   "against the fingerprint its checkpoint records)")
    add_recipe_args(p)
    args = p.parse_args(argv)
    try:
        compare_pretraining(args.pretrained, args.out, tuple(args.seeds), tuple(args.train_per_class),
                            tokenizer=args.tokenizer,
                            **{k: getattr(args, k) for k in RECIPE_KEYS})
    except (ValueError, FloatingPointError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
