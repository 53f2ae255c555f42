"""Labelled data for fine-tuning: reading files, the default task, encoding, batches.

Data (read_examples): CSV, TSV or JSON lines with a `text` column, an optional `text_pair`
column (sentence-pair tasks), and a `label` column (any names; regression: numbers). Label
names are sorted (numerically when every name is an integer) and mapped to ids 0..C-1
(label_names_from, label_ids). Without a validation file, a seeded fraction of the training
file is held out (split_examples).

The default task (default_task): from the standard library's docstrings, predict the
top-level package a docstring belongs to, over the num_classes largest packages. Training
examples come only from documents pretraining trained on, evaluation examples only from the
documents it held out (corpus.is_heldout, with the pretraining run's heldout_fraction), so the
evaluation text was never seen by the encoder.

Encoding (encode_example), as BERT's run_classifier.py does it:
    single text:  [CLS] A [SEP]            token types 0 ... 0
    pair:         [CLS] A [SEP] B [SEP]    token types 0 ... 0 1 ... 1
truncated to max_length tokens longest-first: one token at a time from the end of the
longer segment (B on a tie). User text is encoded with allowed_special="none", so a literal
"[SEP]" or "[MASK]" in a CSV cell is ordinary text, never a special token.

Batches (make_batch): input_ids, token_type_ids, attention_mask (B, T) padded to the
batch's longest row, labels (B,). length_grouped_batches puts rows of similar length in
one batch, so little compute goes to padding.
"""
import csv
import json
import math
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from minibert.corpus import default_corpus, is_heldout
from minibert.tokenizer import SPECIAL_TOKENS


# ----------------------------------------------------------------------------------------
# reading labelled data


@dataclass
class Example:
    text: str
    text_pair: str | None = None
    label: str | float | None = None  # a label name (classification) or a number (regression)


def read_rows(path):
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
    rows, columns = read_rows(path)
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



def read_splits(train, validation, read, valid_fraction, seed):
    """(train, validation, description) of any task's examples: train and validation are
    file paths (read(path) -> list of examples) or lists of examples already in memory; with
    no validation, valid_fraction of train is held out (split_examples)."""
    def source(x):
        return (read(x), x) if isinstance(x, str) else (list(x), f"{len(x)} examples given in memory")
    if isinstance(train, str) and not train:
        raise ValueError("--train: this task has no default data; give a training file")
    train, what = source(train)
    if validation is not None and (not isinstance(validation, str) or validation):
        val, v_what = source(validation)
        return train, val, f"train {what}, validation {v_what}"
    train, val = split_examples(train, valid_fraction, seed)
    return train, val, f"train {what}, {valid_fraction:.0%} held out for validation (seed {seed})"

# ----------------------------------------------------------------------------------------
# the default task: which standard-library package does a docstring come from?


def default_task(num_classes=10, heldout_fraction=0.05):
    """(train examples, evaluation examples, label names) of the embedded task.

    Classes: the num_classes top-level packages with the most docstrings (ties by name).
    Train: their documents pretraining trained on; evaluation: only those it held out."""
    docs = default_corpus("all", heldout_fraction=heldout_fraction)
    counts = Counter(d.package for d in docs)
    names = sorted(sorted(counts, key=lambda p: (-counts[p], p))[:num_classes])
    keep = set(names)
    train, held = [], []
    for d in docs:
        if d.package in keep:
            (held if is_heldout(d, heldout_fraction) else train).append(Example(d.text, None, d.package))
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
    """{label name: number of examples with it}."""
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
