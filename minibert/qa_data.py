"""Extractive question answering (SQuAD): reading, windows over long contexts with answer
positions, batches, and predictions from start/end logits.

Files (read_squad): SQuAD v1.1 or v2.0 JSON, {"data": [{"title", "paragraphs": [{"context",
"qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}.
An answer's answer_start is a character index into its context, and the context there must
read its text. A v2.0 file (its "version", or any "is_impossible" key) may hold unanswerable
questions: is_impossible true and no answers.

Features (encode_squad), as Hugging Face's run_qa.py:
    [CLS] question [SEP] context window [SEP]      token types 0 ... 0 1 ... 1
The question is left-stripped and cut to its first max_question_length (64) tokens; the
context is encoded once (tok.encode_with_offsets) and cut into windows of the
L = max_length - len(question) - 3 tokens that fit (max_length 384): a window starts every
L - doc_stride tokens (doc_stride 128 tokens of overlap, as the tokenizers' `stride`), the
last one reaching the context's end. Each feature keeps its context tokens' character spans
(offsets; None for [CLS], the question and the [SEP]s). Answer positions, from the first
gold answer: the start token is the last context token of the window that starts at or
before the answer's first character, the end token the first one that ends at or after its
last; an answer not wholly inside the window, or no answer, is position 0 ([CLS]).

Predictions (postprocess_qa), as run_qa.py's postprocess_qa_predictions: in each feature the
n_best (20) highest start and end logits give candidate spans, kept when both ends are
context tokens, end >= start and the span has at most max_answer_length (30) tokens; a
span scores start_logit + end_logit, and the best span over an example's features is its
answer (its text cut from the context by the offsets, white space at its ends removed: a
byte-level BPE token's span may take in the space before it). The null score is start[0] + end[0]
([CLS]), the least over the features; for v2.0 the prediction is "" when
null score - best span score > null_threshold. `scores` holds that difference per question
(the odds of no answer; run_qa.py's null_odds.json).
"""
import json
import os
from dataclasses import dataclass, field

import numpy as np

from minibert.atomic import atomic_write
from minibert.tokenizer import SPECIAL_TOKENS


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)  # (text, answer_start in the context)
    is_impossible: bool = False
    title: str = ""


@dataclass
class QAFeature:
    example_index: int     # the QAExample this window comes from
    input_ids: list[int]   # [CLS] question [SEP] context window [SEP]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]  # each context token's (start, end) in the context; None elsewhere
    start_position: int    # answer's first and last token; 0 ([CLS]): no answer in this window
    end_position: int


# ----------------------------------------------------------------------------------------
# reading


def read_squad(path):
    """(examples, version_2) of a SQuAD JSON file; ValueError naming the file and the
    question for a malformed record, an answer_start that does not point at its text, a
    repeated id, or a file with no question."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} not found")
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("data"), list):
        raise ValueError(f"{path}: expected SQuAD JSON, an object with a list under \"data\"")
    version_2 = str(d.get("version", "")).lstrip("v").startswith("2")
    examples, seen = [], set()
    for a, article in enumerate(d["data"]):
        for p, para in enumerate(_list(article, "paragraphs", f"{path}: article {a}")):
            where = f"{path}: article {a}, paragraph {p}"
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str):
                raise ValueError(f"{where}: no \"context\" string")
            for q, qa in enumerate(_list(para, "qas", where)):
                where_q = f"{where}, question {q}"
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or "id" not in qa:
                    raise ValueError(f"{where_q}: needs an \"id\" and a \"question\" string")
                qid = str(qa["id"])
                where_q += f" (id {qid!r})"
                if qid in seen:
                    raise ValueError(f"{where_q}: the id is used twice")
                seen.add(qid)
                impossible = bool(qa.get("is_impossible", False))
                version_2 |= "is_impossible" in qa
                answers = [_answer(ans, context, f"{where_q}, answer {k}")
                           for k, ans in enumerate(qa.get("answers") or [])]
                if impossible and answers:
                    raise ValueError(f"{where_q}: is_impossible is true but it has answers")
                examples.append(QAExample(qid, qa["question"], context, answers, impossible,
                                          str(article.get("title", ""))))
    if not examples:
        raise ValueError(f"{path}: no questions in the file")
    return examples, version_2


def _list(obj, key, where):
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list):
        raise ValueError(f"{where}: no {key!r} list")
    return value


def _answer(ans, context, where):
    """(text, answer_start), checked against the context."""
    if not isinstance(ans, dict) or not isinstance(ans.get("text"), str) or \
            not isinstance(ans.get("answer_start"), int) or isinstance(ans.get("answer_start"), bool):
        raise ValueError(f"{where}: needs a \"text\" string and an integer \"answer_start\"")
    text, start = ans["text"], ans["answer_start"]
    found = context[start:start + len(text)] if start >= 0 else None
    if found != text:
        raise ValueError(f"{where}: answer_start {start} does not match the answer {text!r} "
                         f"(the context there reads {found!r})")
    return text, start


def gold_answers(examples):
    """{question id: [gold answer texts]} (qa_metrics.squad_scores' gold)."""
    return {e.id: [t for t, _ in e.answers] for e in examples}


# ----------------------------------------------------------------------------------------
# features


def window_starts(n, length, stride):
    """First token of each window of `length` tokens over n, overlapping by `stride`: one
    every length - stride, until a window reaches the end (as the tokenizers' overflow)."""
    starts = [0]
    while starts[-1] + length < n:
        starts.append(starts[-1] + length - stride)
    return starts


def encode_squad(tok, examples, max_length=384, doc_stride=128, max_question_length=64, where="data"):
    """QAFeatures of the examples, one per window; ValueError naming `where` and the question
    when the question leaves no room for context, or a context longer than one window
    cannot be cut with doc_stride (doc_stride >= the window)."""
    cls_id, sep_id = tok.token_to_id(SPECIAL_TOKENS[1]), tok.token_to_id(SPECIAL_TOKENS[2])
    features, context, encoded = [], None, None
    for i, e in enumerate(examples):
        q = tok.encode(e.question.lstrip(), allowed_special="none")[:max_question_length]
        if e.context != context:  # a paragraph's questions come together: its context is encoded once
            context, encoded = e.context, tok.encode_with_offsets(e.context, allowed_special="none")
        c, offsets = encoded
        L = max_length - len(q) - 3
        if L < 1:
            raise ValueError(f"{where}: question {e.id!r}: max_length {max_length} leaves no room for context "
                             f"beside its {len(q)} question tokens")
        if len(c) > L and doc_stride >= L:
            raise ValueError(f"{where}: question {e.id!r}: its context has {len(c)} tokens, more than the {L} "
                             f"that fit beside the question, and doc_stride {doc_stride} leaves no step "
                             f"(it must be below {L})")
        answer = None
        if e.answers and not e.is_impossible:
            text, start = e.answers[0]
            answer = (start, start + len(text))
        head = [cls_id] + q + [sep_id]
        for ws in window_starts(len(c), L, doc_stride):
            we = min(ws + L, len(c))
            s_tok, e_tok = _answer_tokens(offsets, ws, we, answer)
            features.append(QAFeature(
                example_index=i,
                input_ids=head + c[ws:we] + [sep_id],
                token_type_ids=[0] * len(head) + [1] * (we - ws + 1),
                offsets=[None] * len(head) + [tuple(o) for o in offsets[ws:we]] + [None],
                start_position=s_tok + len(head) - ws if s_tok is not None else 0,
                end_position=e_tok + len(head) - ws if e_tok is not None else 0))
    return features


def _answer_tokens(offsets, ws, we, answer):
    """(first, last) context token (indices into the context's tokens) of the answer's
    characters [a, b) inside the window [ws, we), or (None, None) when it is not wholly in it."""
    if answer is None or we == ws:
        return None, None
    a, b = answer
    if not (offsets[ws][0] <= a and offsets[we - 1][1] >= b):
        return None, None
    first = max(t for t in range(ws, we) if offsets[t][0] <= a)
    last = min(t for t in range(ws, we) if offsets[t][1] >= b)
    return first, last


def qa_batch(features, idx, pad_id):
    """Host batch of the rows idx, padded to the longest: input_ids, token_type_ids,
    attention_mask (B, T), start_positions, end_positions (B,)."""
    T = max(len(features[i].input_ids) for i in idx)
    B = len(idx)
    ids = np.full((B, T), pad_id, np.int64)  # (B, T)
    types = np.zeros((B, T), np.int64)  # (B, T)
    mask = np.zeros((B, T), np.int64)  # (B, T)
    for r, i in enumerate(idx):
        f = features[i]
        n = len(f.input_ids)
        ids[r, :n], types[r, :n], mask[r, :n] = f.input_ids, f.token_type_ids, 1
    starts = np.array([features[i].start_position for i in idx], np.int64)  # (B,)
    ends = np.array([features[i].end_position for i in idx], np.int64)  # (B,)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
            "start_positions": starts, "end_positions": ends}


# ----------------------------------------------------------------------------------------
# predictions


def postprocess_qa(examples, features, start_logits, end_logits, n_best=20, max_answer_length=30,
                   version_2=False, null_threshold=0.0):
    """(predictions {id: answer text}, scores {id: null score - best span score, None when no
    span is valid}) from each feature's start and end logits (start_logits[f]: (T,) or longer,
    padding ignored)."""
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise ValueError(f"{len(features)} features but {len(start_logits)} start and {len(end_logits)} end logits")
    by_example = [[] for _ in examples]
    for f, feat in enumerate(features):
        by_example[feat.example_index].append(f)
    predictions, scores = {}, {}
    for e, example in enumerate(examples):
        best, null = None, None  # best: (score, text)
        for f in by_example[e]:
            feat = features[f]
            n = len(feat.input_ids)
            start = np.asarray(start_logits[f], dtype=np.float64)[:n]  # (T,)
            end = np.asarray(end_logits[f], dtype=np.float64)[:n]  # (T,)
            null = start[0] + end[0] if null is None else min(null, start[0] + end[0])
            top_start = np.argsort(-start, kind="stable")[:n_best]
            top_end = np.argsort(-end, kind="stable")[:n_best]
            for s in top_start:
                for t in top_end:
                    if feat.offsets[s] is None or feat.offsets[t] is None or t < s or t - s + 1 > max_answer_length:
                        continue
                    score = start[s] + end[t]
                    if best is None or score > best[0]:
                        text = example.context[feat.offsets[s][0]:feat.offsets[t][1]].strip()
                        if text:
                            best = (score, text)
        diff = None if best is None or null is None else float(null - best[0])
        scores[example.id] = diff
        if best is None or (version_2 and diff > null_threshold):
            predictions[example.id] = ""
        else:
            predictions[example.id] = best[1]
    return predictions, scores


def write_json(path, obj):
    """obj as indented JSON, atomically (the predictions, the scores)."""
    return atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
