"""Using a pretrained minibert: load a pretraining run (rundir.load_run), fill in [MASK] tokens.

    model, tok = minibert.load_pretrained("runs/pretrain")
    fill_mask(model, tok, "Return the [MASK] of the list.")
    -> [[(" length", 0.41), (" number", 0.12), ...]]      one list per [MASK], top_k each

A space typed before "[MASK]" is absorbed into the mask (as RoBERTa's mask token does with
lstrip): byte-level BPE puts a word's leading space inside its token (" length"), so the
masked slot in pretraining stands for " length", not for "length" after a separate " ".
"""
import re

import numpy as np

from minibert import backend
from minibert.model import IGNORE_INDEX, BertForPreTraining
from minibert.rundir import PRETRAINING_KIND, load_run
from minibert.tokenizer import SPECIAL_TOKENS


def load_pretrained(run_dir, name="last", dtype=None):
    """(BertForPreTraining, tokenizer: BPETokenizer or WordPieceTokenizer) from a pretraining run directory."""
    config, params, _, tok = load_run(run_dir, name, PRETRAINING_KIND, dtype)
    return BertForPreTraining(config, params=params), tok


def fill_mask(model, tok, texts, top_k=5):
    """Top-k (token string, probability) for each [MASK] in text (or each text of a list).

    Returns one list per [MASK] for a single text, a list of such lists for a list of texts."""
    single = isinstance(texts, str)
    results = [_fill_one(model, tok, t, top_k) for t in ([texts] if single else texts)]
    return results[0] if single else results


def _fill_one(model, tok, text, top_k):
    pad, cls, sep, mask = (tok.token_to_id(s) for s in SPECIAL_TOKENS)
    ids = tok.encode(text.replace(" [MASK]", "[MASK]"), allowed_special={"[MASK]"})
    if mask not in ids:
        raise ValueError(f"no [MASK] in {text!r}")
    ids = [cls] + ids[: model.config.max_position - 2] + [sep]
    T = len(ids)
    labels = np.full((1, T), IGNORE_INDEX, np.int64)  # (1, T)
    pos = [i for i, t in enumerate(ids) if t == mask]
    labels[0, pos] = mask  # any valid id: it only marks where MLM logits are computed
    batch = {"input_ids": np.array([ids], np.int64), "token_type_ids": np.zeros((1, T), np.int64),
             "attention_mask": np.ones((1, T), np.int64), "labels": labels,
             "next_sentence_label": np.zeros(1, np.int64)}
    logits = np.asarray(backend.to_host(model.predict(batch)["mlm_logits"]), np.float64)  # (P, V)
    logits[:, [pad, cls, sep, mask]] = -np.inf  # never propose a special token
    probs = np.exp(logits - logits.max(1, keepdims=True))  # (P, V)
    probs /= probs.sum(1, keepdims=True)
    out = []
    for row in probs:
        best = np.argsort(-row)[:top_k]
        out.append([(tok.decode([int(i)]), float(row[i])) for i in best])
    return out


def mask_examples(docs, tok, n, seed=0):
    """n (text with one word replaced by [MASK], the word) pairs from documents' sentences."""
    rng = np.random.default_rng(seed)
    sentences = [s for d in docs for s in d.sentences if 30 <= len(s) <= 120]
    out = []
    for i in rng.permutation(len(sentences)):
        words = list(re.finditer(r"(?<= )[A-Za-z]{4,}(?=[ .,;:])", sentences[int(i)]))
        if not words:
            continue
        m = words[int(rng.integers(len(words)))]
        s = sentences[int(i)]
        out.append((s[:m.start()] + "[MASK]" + s[m.end():], " " + m.group()))
        if len(out) == n:
            break
    return out
