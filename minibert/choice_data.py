"""Multiple-choice data (SWAG, HellaSwag-style): reading, encoding, batches of (B, C, T).

Files (read_choices), through task_data.read_rows:
  - CSV or TSV as SWAG's files and Hugging Face's run_swag.py: columns sent1 (the context),
    sent2 (the start of the second sentence), ending0 .. ending{C-1}, label; choice c is
    the pair (sent1, sent2 + " " + ending{c}). Without a sent2 column the ending alone.
  - JSON lines: {"context": str, "endings": [str, ...], "label": int}.
Every example has as many endings as the first; a label is an integer in [0, C).

Encoding (encode_choices): each choice is the pair [CLS] context [SEP] ending [SEP], token
types 0 then 1, truncated to max_length longest-first (task_data.encode_example, as
run_swag.py's truncation=True). Batches (choice_batch): input_ids, token_type_ids,
attention_mask (B, C, T), padded to the batch's longest choice, and labels (B,): the index
of the right ending, which the head scores against the other C - 1.
"""
import os
import re
from dataclasses import dataclass

import numpy as np

from minibert.task_data import encode_example, read_rows
from minibert.tokenizer import SPECIAL_TOKENS

_ENDING = re.compile(r"ending(\d+)$")


@dataclass
class ChoiceExample:
    context: str
    endings: list[str]     # the second segment of each choice
    label: int | None = None


def read_choices(path, require_label=True):
    """Examples of a SWAG-style CSV/TSV or a JSON-lines file; ValueError naming the file and
    the row for a missing column or value, a different number of endings, a bad label, or a
    file with no example."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} not found")
    rows, columns = read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no examples in the file")
    jsonl = os.path.splitext(path)[1].lower() not in (".csv", ".tsv")
    if require_label and "label" not in columns:
        raise ValueError(f"{path}: no column 'label' (columns: {columns})")
    if not jsonl:
        numbers = sorted(int(m.group(1)) for c in columns if (m := _ENDING.match(c)))
        if not numbers or numbers != list(range(len(numbers))):
            raise ValueError(f"{path}: needs columns ending0, ending1, ... (columns: {columns})")
        if "sent1" not in columns:
            raise ValueError(f"{path}: no column 'sent1' (columns: {columns})")
    out, n_choices = [], None
    for i, r in rows:
        where = f"{path}: row {i}"
        if jsonl:
            context, endings = r.get("context"), r.get("endings")
            if not isinstance(context, str) or not isinstance(endings, list) or \
                    not all(isinstance(e, str) for e in endings):
                raise ValueError(f"{where}: needs a \"context\" string and an \"endings\" list of strings")
        else:
            context = r.get("sent1")
            if context is None or any(r.get(f"ending{c}") is None for c in range(len(numbers))):
                raise ValueError(f"{where}: a value is missing")
            head = r.get("sent2") or ""
            endings = [f"{head} {r[f'ending{c}']}" if head else r[f"ending{c}"] for c in range(len(numbers))]
        if n_choices is None:
            n_choices = len(endings)
            if n_choices < 2:
                raise ValueError(f"{where}: {n_choices} endings: a choice needs at least 2")
        elif len(endings) != n_choices:
            raise ValueError(f"{where}: {len(endings)} endings, the rows before it {n_choices}")
        out.append(ChoiceExample(context, endings, _label(r.get("label"), n_choices, require_label, where)))
    return out


def _label(value, n_choices, require_label, where):
    if value is None or value == "":
        if require_label:
            raise ValueError(f"{where}: no label")
        return None
    try:
        label = int(value) if not isinstance(value, (bool, float)) else None
    except ValueError:
        label = None
    if label is None or not 0 <= label < n_choices:
        raise ValueError(f"{where}: label {value!r} is not an ending's index in 0..{n_choices - 1}")
    return label


def encode_choices(tok, examples, max_length):
    """Per example, a list of C (ids, types) pairs, [CLS] context [SEP] ending [SEP] each."""
    cls_id, sep_id = tok.token_to_id(SPECIAL_TOKENS[1]), tok.token_to_id(SPECIAL_TOKENS[2])
    return [[encode_example(tok, e.context, ending, max_length, cls_id, sep_id) for ending in e.endings]
            for e in examples]


def choice_batch(encoded, labels, idx, pad_id):
    """Host batch of the examples idx: input_ids, token_type_ids, attention_mask (B, C, T)
    padded to the longest choice, and labels (B,) when labels is not None."""
    B, C = len(idx), len(encoded[idx[0]])
    T = max(len(ids) for i in idx for ids, _ in encoded[i])
    ids = np.full((B, C, T), pad_id, np.int64)  # (B, C, T)
    types = np.zeros((B, C, T), np.int64)  # (B, C, T)
    mask = np.zeros((B, C, T), np.int64)  # (B, C, T)
    for r, i in enumerate(idx):
        for c, (x, t) in enumerate(encoded[i]):
            ids[r, c, :len(x)], types[r, c, :len(x)], mask[r, c, :len(x)] = x, t, 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = np.asarray([labels[i] for i in idx], np.int64)  # (B,)
    return batch
