"""Token-tagging data (named entities, chunks, parts of speech): reading, label alignment,
batches, and predictions written back as CoNLL.

Files (read_tagged):
  - CoNLL (any extension but .jsonl/.json/.ndjson): one word per line, its columns separated
    by white space, the word first and the tag last; a blank line ends a sentence;
    "-DOCSTART-" lines are skipped. Every line has as many columns as the first (CoNLL-2003
    has four: word, POS, chunk, entity). A file of one column is words without tags.
  - JSON lines as Hugging Face `datasets` writes them: {"tokens": [...], "tags": [...]} per
    line (other key names by argument: conll2003's is "ner_tags"), tags as strings, or as
    integers into a list of label names given by the caller.
Every tag is checked against the tag scheme (tag_metrics.SCHEMES: IOB2, IOB1, BIOES).

Label alignment (encode_tagged), as Hugging Face's run_ner.py by default: each word is
encoded on its own and its label goes to its first sub-token; the other sub-tokens, [CLS]
and [SEP] get IGNORE_INDEX (-100), so the loss and the predictions see one position per
word. A word after the first is encoded with a space before it, so the ids are those of the
sentence written out with single spaces (for the byte-level BPE tokenizer that space is part
of the word's first token, "Ġword"; WordPiece drops it); the first word has none, as text at
the start of a line. (Hugging Face's is_split_into_words with add_prefix_space gives the
first word a space too.) Sequences are [CLS] sub-tokens [SEP], truncated to max_length
tokens; a word with no sub-token left (truncated away, or a word that encodes to nothing)
has no label, and `word_tags` predicts "O" for it, so a truncated entity counts as missed
(run_ner.py leaves such words out of both sequences instead).

Batches (tag_batch): input_ids, token_type_ids, attention_mask, labels (B, T), padded to the
batch's longest row, labels with IGNORE_INDEX.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from minibert.atomic import atomic_write
from minibert.model import IGNORE_INDEX
from minibert.tag_metrics import check_scheme, check_tag
from minibert.task_data import read_rows
from minibert.tokenizer import SPECIAL_TOKENS

JSONL_EXTENSIONS = (".jsonl", ".json", ".ndjson")
DOCSTART = "-DOCSTART-"


@dataclass
class TaggedSentence:
    words: list[str]
    tags: list[str] | None = None  # None: words to tag, no gold tags


@dataclass
class TagFeature:
    input_ids: list[int]  # [CLS] sub-tokens [SEP]
    labels: list[int]     # a tag id at each word's first sub-token, IGNORE_INDEX elsewhere
    word_ids: list[int | None]  # the word each token comes from; None for [CLS], [SEP]


# ----------------------------------------------------------------------------------------
# reading


def read_tagged(path, scheme="IOB2", tokens_key="tokens", tags_key="tags", label_names=None):
    """Sentences of a CoNLL or JSON-lines file; ValueError naming the file and the line for
    a malformed line, a tag outside the scheme, or a file with no sentence."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} not found")
    scheme = check_scheme(scheme, path)
    if os.path.splitext(path)[1].lower() in JSONL_EXTENSIONS:
        sentences = _read_tag_jsonl(path, scheme, tokens_key, tags_key, label_names)
    else:
        sentences = _read_conll(path, scheme)
    if not sentences:
        raise ValueError(f"{path}: no sentences in the file")
    return sentences


def _read_conll(path, scheme):
    sentences, words, tags, columns = [], [], [], None

    def close():
        if words:
            sentences.append(TaggedSentence(list(words), list(tags) if columns > 1 else None))
            words.clear()
            tags.clear()

    with open(path, encoding="utf-8-sig") as f:
        for i, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                close()
                continue
            if fields[0] == DOCSTART:
                close()
                continue
            if columns is None:
                columns = len(fields)
            elif len(fields) != columns:
                raise ValueError(f"{path}: line {i} has {len(fields)} columns, the lines before it {columns}: "
                                 f"{line.strip()!r}")
            words.append(fields[0])
            if columns > 1:
                check_tag(fields[-1], scheme, f"{path}: line {i}")
                tags.append(fields[-1])
    close()
    return sentences


def _read_tag_jsonl(path, scheme, tokens_key, tags_key, label_names):
    rows, _ = read_rows(path)
    sentences = []
    for i, r in rows:
        where = f"{path}: line {i}"
        words = r.get(tokens_key)
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{where}: {tokens_key!r} must be a list of strings")
        tags = r.get(tags_key)
        if tags is None:
            sentences.append(TaggedSentence(words))
            continue
        if not isinstance(tags, list) or len(tags) != len(words):
            raise ValueError(f"{where}: {tags_key!r} must be a list of one tag per token ({len(words)} tokens)")
        names = []
        for t in tags:
            if isinstance(t, int) and not isinstance(t, bool):
                if label_names is None:
                    raise ValueError(f"{where}: tag {t} is a number: give the list of label names")
                if not 0 <= t < len(label_names):
                    raise ValueError(f"{where}: tag {t} is outside the {len(label_names)} label names")
                t = label_names[t]
            check_tag(t, scheme, where)
            names.append(t)
        sentences.append(TaggedSentence(words, names))
    return sentences


def tag_names_from(sentences):
    """Sorted tag names of the sentences (ids 0..C-1 in this order)."""
    return sorted({t for s in sentences if s.tags for t in s.tags})


# ----------------------------------------------------------------------------------------
# label alignment and batches


def encode_tagged(tok, sentence, tag_index, max_length, where="data"):
    """TagFeature of one sentence: [CLS] sub-tokens [SEP], each word's tag id at its first
    sub-token (tag_index: tag name -> id; an unknown tag is a ValueError naming `where`),
    truncated to max_length tokens."""
    if max_length < 3:
        raise ValueError(f"max_length {max_length} leaves no room for a word next to [CLS] and [SEP]")
    cls_id, sep_id = tok.token_to_id(SPECIAL_TOKENS[1]), tok.token_to_id(SPECIAL_TOKENS[2])
    ids, labels, word_ids = [cls_id], [IGNORE_INDEX], [None]
    budget = max_length - 1  # [SEP] takes the last position
    for w, word in enumerate(sentence.words):
        pieces = tok.encode(word if w == 0 else " " + word, allowed_special="none")[:budget - len(ids)]
        if not pieces:
            continue
        label = IGNORE_INDEX
        if sentence.tags is not None:
            tag = sentence.tags[w]
            if tag not in tag_index:
                raise ValueError(f"{where}: word {w + 1}: tag {tag!r} is not one of the model's tags "
                                 f"{sorted(tag_index)}")
            label = tag_index[tag]
        ids += pieces
        labels += [label] + [IGNORE_INDEX] * (len(pieces) - 1)
        word_ids += [w] * len(pieces)
        if len(ids) == budget:
            break
    return TagFeature(ids + [sep_id], labels + [IGNORE_INDEX], word_ids + [None])


def encode_tagged_sentences(tok, sentences, tag_names, max_length, where="data"):
    """A TagFeature per sentence (tag ids: positions in tag_names)."""
    index = {t: i for i, t in enumerate(tag_names)}
    return [encode_tagged(tok, s, index, max_length, f"{where}: sentence {k + 1}") for k, s in enumerate(sentences)]


def tag_batch(features, idx, pad_id):
    """Host batch of the rows idx padded to the longest: input_ids, token_type_ids,
    attention_mask, labels (B, T), labels IGNORE_INDEX at padding."""
    T = max(len(features[i].input_ids) for i in idx)
    B = len(idx)
    ids = np.full((B, T), pad_id, np.int64)  # (B, T)
    types = np.zeros((B, T), np.int64)  # (B, T)
    mask = np.zeros((B, T), np.int64)  # (B, T)
    labels = np.full((B, T), IGNORE_INDEX, np.int64)  # (B, T)
    for r, i in enumerate(idx):
        f = features[i]
        n = len(f.input_ids)
        ids[r, :n], mask[r, :n], labels[r, :n] = f.input_ids, 1, f.labels
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels}


# ----------------------------------------------------------------------------------------
# predictions


def word_tags(feature, predicted, tag_names, n_words):
    """The tag of each of the n_words words: the prediction at its first sub-token
    (predicted: (T,) tag ids, one per position of the feature), "O" for a word without one."""
    out = ["O"] * n_words
    seen = set()
    for pos, w in enumerate(feature.word_ids):
        if w is not None and w not in seen:
            seen.add(w)
            out[w] = tag_names[int(predicted[pos])]
    return out


def _check_predictions(sentences, predicted):
    if len(sentences) != len(predicted):
        raise ValueError(f"{len(sentences)} sentences but {len(predicted)} predictions")
    for k, (s, p) in enumerate(zip(sentences, predicted)):
        if len(p) != len(s.words):
            raise ValueError(f"sentence {k + 1}: {len(s.words)} words but {len(p)} predicted tags")


def conll_text(sentences, predicted):
    """CoNLL text: a line "word gold predicted" per word ("word predicted" without gold
    tags), a blank line after each sentence, as conlleval reads it."""
    _check_predictions(sentences, predicted)
    lines = []
    for s, p in zip(sentences, predicted):
        for j, word in enumerate(s.words):
            lines.append(" ".join([word, s.tags[j], p[j]] if s.tags is not None else [word, p[j]]))
        lines.append("")
    return "\n".join(lines) + "\n"


def write_conll(path, sentences, predicted):
    """Write conll_text atomically: the whole file, or (on an error) nothing."""
    return atomic_write(path, conll_text(sentences, predicted))


def write_tag_jsonl(path, sentences, predicted):
    """Predictions as JSON lines {"tokens": [...], "tags": [...]} (predicted tags), atomically."""
    _check_predictions(sentences, predicted)
    return atomic_write(path, "".join(json.dumps({"tokens": s.words, "tags": list(p)}, ensure_ascii=False) + "\n"
                                      for s, p in zip(sentences, predicted)))
