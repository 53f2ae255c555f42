"""Exact match and F1 of extractive question answering, as the official SQuAD evaluation
scripts compute them (evaluate-v1.1.py and evaluate-v2.0.py).

An answer is compared after `normalize_answer`: lower case, punctuation (string.punctuation)
removed, the articles "a", "an", "the" removed as whole words, white space collapsed.
    exact match  1 if the normalized prediction equals a normalized gold answer, else 0
    F1           over the bags of words of the two normalized answers:
                 common = |pred ∩ gold| (as multisets), P = common / |pred|,
                 R = common / |gold|, F1 = 2 P R / (P + R); 0 when common = 0
Each question scores the maximum over its gold answers; the totals are means over the
questions, in percent.

SQuAD v2.0 adds unanswerable questions. Its script drops gold answers that normalize to
nothing; a question left with none (unanswerable) has the one gold answer "", so it scores 1
only for an empty prediction; and an empty answer on either side scores F1 1 if both are
empty, else 0 (v1.1's F1 gives 0 even then, and v1.1 has no unanswerable questions).
v2.0 also reports the scores over the answerable (HasAns_) and unanswerable (NoAns_)
questions. A question without a prediction scores 0 here in both versions (v1.1's rule;
v2.0's script leaves it out of the total and prints its id).
"""
import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s):
    """Lower case, no punctuation, no articles, single spaces (the scripts' normalize_answer)."""
    s = "".join(c for c in s.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction, gold):
    """1 if the two answers are equal after normalize_answer, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction, gold, version_2=False):
    """Word-overlap F1 of two answers after normalize_answer (v2.0: 1 for two empty answers)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version_2 and (not pred or not ref):  # either is no-answer: right only if both are
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def squad_scores(gold, predictions, version_2=False):
    """{"exact", "f1", "total"} in percent (v2.0 adds "HasAns_*" and "NoAns_*" where there are
    such questions) of predictions {question id: text} against gold {question id: [answer texts]}.

    v1.1 needs at least one gold answer per question (ValueError otherwise)."""
    exact, f1s, has_answer = {}, {}, {}
    for qid, answers in gold.items():
        has_answer[qid] = bool(answers)  # as the v2.0 script: an answer list, even of blanks, is answerable
        if version_2:
            answers = [a for a in answers if normalize_answer(a)] or [""]  # unanswerable: only "" is right
        elif not answers:
            raise ValueError(f"question {qid!r} has no gold answer; a SQuAD v2.0 file is scored with version_2=True")
        pred = predictions.get(qid)
        if pred is None:
            exact[qid], f1s[qid] = 0, 0.0
            continue
        exact[qid] = max(exact_match(pred, a) for a in answers)
        f1s[qid] = max(f1(pred, a, version_2) for a in answers)

    def summary(ids, prefix=""):
        n = len(ids)
        return {f"{prefix}exact": 100.0 * sum(exact[q] for q in ids) / n if n else 0.0,
                f"{prefix}f1": 100.0 * sum(f1s[q] for q in ids) / n if n else 0.0,
                f"{prefix}total": n}

    out = summary(list(gold))
    if version_2:
        has = [q for q in gold if has_answer[q]]
        no = [q for q in gold if not has_answer[q]]
        if has:
            out.update(summary(has, "HasAns_"))
        if no:
            out.update(summary(no, "NoAns_"))
    return out
