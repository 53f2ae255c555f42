"""Tests of minibert.instances: MLM masking (token and whole-word), truncation, NSP pairs, epochs and batches.

Reference values are computed here independently (plain loops, Python's round, a per-row
collate); statistical checks use 5-sigma binomial bounds (data_helpers.five_sigma).
"""
import hashlib
import json
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from minibert import instance_view, instances
from minibert.corpus import Document
from minibert.instances import PretrainingData, mask_tokens
from minibert.token_cache import TokenizedCorpus
from minibert.tokenizer import SPECIAL_TOKENS
from minibert.wordpiece import WordPieceTokenizer

from data_helpers import five_sigma, special_ids, synthetic_documents, train_tokenizer


class Instance(NamedTuple):
    """One pretraining example, unpadded (L = its length)."""
    input_ids: np.ndarray  # (L,) masked ids: [CLS] A [SEP] B [SEP]
    token_type_ids: np.ndarray  # (L,) 0 up to and including the first [SEP], 1 after
    labels: np.ndarray  # (L,) original id where masked, -100 elsewhere
    next_sentence_label: int  # 0: B follows A, 1: B is random


def epoch_instance(ep, i):
    """Row i of EpochInstances ep as an unpadded Instance."""
    L = int(ep.lengths[i])
    tt = ep.token_type_ids(np.array([i]))[0, :L]
    return Instance(ep.input_ids[i, :L].copy(), tt, ep.labels[i, :L].astype(np.int64), int(ep.next_sentence_label[i]))


def collate_instances(instances, pad_id, pad_to=None):
    """The batch dict EpochInstances.batch must equal, built one Instance at a time: padded
    with pad_id to the longest (or to pad_to), all (B, T) except next_sentence_label (B,)."""
    lengths = [len(x.input_ids) for x in instances]
    T = max(lengths) if pad_to is None else pad_to
    if max(lengths) > T:
        raise ValueError(f"an instance of length {max(lengths)} does not fit pad_to={pad_to}")
    B = len(instances)
    batch = {"input_ids": np.full((B, T), pad_id, np.int64),  # (B, T)
             "token_type_ids": np.zeros((B, T), np.int64),  # (B, T)
             "attention_mask": np.zeros((B, T), np.int64),  # (B, T)
             "labels": np.full((B, T), -100, np.int64)}  # (B, T)
    for i, (x, L) in enumerate(zip(instances, lengths)):
        batch["input_ids"][i, :L] = x.input_ids
        batch["token_type_ids"][i, :L] = x.token_type_ids
        batch["attention_mask"][i, :L] = 1
        batch["labels"][i, :L] = x.labels
    batch["next_sentence_label"] = np.array([x.next_sentence_label for x in instances], np.int64)  # (B,)
    return batch


@pytest.fixture(scope="module")
def docs():
    return synthetic_documents()


@pytest.fixture(scope="module")
def tok(docs):
    return train_tokenizer(docs, 600)


@pytest.fixture(scope="module")
def corpus(docs, tok, tmp_path_factory):
    return TokenizedCorpus.build(docs, tok, tmp_path_factory.mktemp("cache"))


# ---------------------------------------------------------------------------------------------
# mask_tokens
# ---------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 6), T=st.integers(1, 70), p=st.sampled_from([0.0, 0.15, 0.5, 1.0]),
       P=st.integers(0, 30), seed=st.integers(0, 2 ** 32 - 1), frac_special=st.floats(0, 1))
def test_mask_tokens_invariants(N, T, p, P, seed, frac_special):
    r = np.random.default_rng(seed)
    ids = r.integers(4, 50, (N, T))
    special = r.random((N, T)) < frac_special
    special[:, 0] = True  # a [CLS]-like column
    ids[special] = r.integers(0, 4, int(special.sum()))  # special positions hold special ids
    replace = np.arange(4, 60)
    masked, labels = mask_tokens(ids, special, np.random.default_rng(seed + 1), mask_id=3,
                                 replace_ids=replace, masked_lm_prob=p, max_predictions=P)
    chosen = labels != -100
    assert masked.shape == ids.shape and labels.shape == ids.shape and labels.dtype == np.int64
    assert not (chosen & special).any(), "a special position was chosen"
    assert (masked[special] == ids[special]).all(), "a special position was changed"
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    np.testing.assert_array_equal(masked[~chosen], ids[~chosen])
    changed = chosen & (masked != ids)
    assert np.isin(masked[changed], np.r_[3, replace]).all()
    for row in range(N):  # the count, computed independently with the original's formula
        n = int((~special[row]).sum())
        k = 0 if n == 0 else min(P, max(1, int(round(n * p))))
        assert chosen[row].sum() == k


def test_mask_tokens_one_row_and_no_candidates():
    ids = np.array([1, 10, 11, 12, 2])
    special = np.array([True, False, False, False, True])
    m, lab = mask_tokens(ids, special, np.random.default_rng(0), mask_id=3, replace_ids=np.arange(4, 20))
    assert m.shape == (5,) and (lab != -100).sum() == 1  # max(1, round(0.45)) = 1
    m, lab = mask_tokens(ids, np.ones(5, bool), np.random.default_rng(0), mask_id=3, replace_ids=np.arange(4, 20))
    assert (lab == -100).all() and (m == ids).all()


def test_mask_tokens_80_10_10_and_uniform_positions():
    N, T = 40000, 20
    ids = np.tile(np.arange(4, 4 + T), (N, 1))  # ids 4..23; replacements are 100..1099, so
    replace = np.arange(100, 1100)  # "random" is exactly: changed and not [MASK]
    special = np.zeros((N, T), bool)
    masked, labels = mask_tokens(ids, special, np.random.default_rng(1), mask_id=3, replace_ids=replace,
                                 masked_lm_prob=0.15, max_predictions=20)
    chosen = labels != -100
    assert (chosen.sum(1) == 3).all()  # round(0.15 * 20) = 3
    M = int(chosen.sum())
    n_mask = int((masked[chosen] == 3).sum())
    n_rand = int(((masked != ids) & (masked != 3))[chosen].sum())
    n_keep = int((masked[chosen] == ids[chosen]).sum())
    assert n_mask + n_rand + n_keep == M
    for count, prob in [(n_mask, 0.8), (n_rand, 0.1), (n_keep, 0.1)]:
        lo, hi = five_sigma(M, prob)
        assert lo < count < hi, (count, prob, M)
    lo, hi = five_sigma(N, 3 / T)  # each position is chosen with probability k / n
    per_pos = chosen.sum(0)
    assert ((per_pos > lo) & (per_pos < hi)).all(), per_pos
    rand_ids = masked[(masked != ids) & (masked != 3)]
    assert rand_ids.min() >= 100 and rand_ids.max() < 1100
    assert len(np.unique(rand_ids)) > 900  # spread over the whole replacement set


def test_mask_tokens_cap_by_max_predictions():
    ids = np.arange(4, 1004)[None, :]
    _, labels = mask_tokens(ids, np.zeros_like(ids, bool), np.random.default_rng(0), mask_id=3,
                            replace_ids=np.arange(4, 1004), max_predictions=20)
    assert (labels != -100).sum() == 20


# ---------------------------------------------------------------------------------------------
# truncate_seq_pair
# ---------------------------------------------------------------------------------------------

def truncate_loop(la, lb, max_num_tokens):
    """The original truncate_seq_pair's removal counts, by its own loop."""
    ra = rb = 0
    while la + lb > max_num_tokens:
        if la > lb:
            la, ra = la - 1, ra + 1
        else:
            lb, rb = lb - 1, rb + 1
    return ra, rb


@settings(max_examples=300, deadline=None)
@given(la=st.integers(1, 300), lb=st.integers(1, 300), m=st.integers(2, 200))
def test_truncation_counts_match_the_original_loop(la, lb, m):
    ra, rb = instances.truncation_counts(np.array([la]), np.array([lb]), m)
    assert (int(ra[0]), int(rb[0])) == truncate_loop(la, lb, m)


# ---------------------------------------------------------------------------------------------
# Instances and batches
# ---------------------------------------------------------------------------------------------

def original_rows(ep):
    """(N, T) ids with the MLM corruption undone: labels hold the original where masked."""
    return np.where(ep.labels != -100, ep.labels, ep.input_ids)


def test_layout_token_types_and_content(corpus, tok):
    dl = PretrainingData(corpus, tok, max_seq_len=48, seed=3)
    ep = dl.epoch(0)
    cls, sep, pad, mask = (tok.token_to_id(s) for s in SPECIAL_TOKENS[1:3] + SPECIAL_TOKENS[:1] + SPECIAL_TOKENS[3:])
    orig = original_rows(ep)
    assert len(ep) > 100
    for i in range(len(ep)):
        x = epoch_instance(ep, i)
        a0, la, b0, lb = (int(v) for v in ep.spans[i])
        L = la + lb + 3
        assert len(x.input_ids) == L <= 48 and la >= 1 and lb >= 1
        assert x.input_ids[0] == cls and x.input_ids[la + 1] == sep and x.input_ids[L - 1] == sep
        inner = np.r_[x.input_ids[1:la + 1], x.input_ids[la + 2:L - 1]]
        assert not np.isin(inner, [cls, sep, pad]).any()
        np.testing.assert_array_equal(x.token_type_ids, np.r_[np.zeros(la + 2), np.ones(lb + 1)])
        np.testing.assert_array_equal(orig[i, 1:la + 1], corpus.tokens[a0:a0 + la])
        np.testing.assert_array_equal(orig[i, la + 2:L - 1], corpus.tokens[b0:b0 + lb])
        assert (ep.input_ids[i, L:] == pad).all() and (ep.labels[i, L:] == -100).all()
        assert (x.labels[[0, la + 1, L - 1]] == -100).all()


def doc_of_token(corpus, pos):
    s = np.searchsorted(corpus.sentence_offsets, pos, side="right") - 1
    return np.searchsorted(corpus.doc_offsets, s, side="right") - 1


@pytest.mark.parametrize("balance", [False, True])
def test_nsp_pairs_without_truncation(corpus, tok, balance):
    """With room for everything: label 0 means B starts right where A ends in the same
    document; label 1 means B starts at a sentence of another document; balance near 1/2."""
    dl = PretrainingData(corpus, tok, max_seq_len=2048, short_seq_prob=0.0, seed=1, balance_nsp=balance)
    starts = set(np.asarray(corpus.sentence_offsets).tolist())
    labels = []
    for e in range(4):
        ep = dl.epoch(e)
        for (a0, la, b0, lb), y in zip(ep.spans.tolist(), ep.next_sentence_label.tolist()):
            assert a0 in starts and b0 in starts and (a0 + la) in starts and (b0 + lb) in starts
            if y == 0:
                assert b0 == a0 + la and doc_of_token(corpus, a0) == doc_of_token(corpus, b0 + lb - 1)
            else:
                assert doc_of_token(corpus, a0) != doc_of_token(corpus, b0)
            labels.append(y)
        # A segments and true-continuation B segments tile the corpus exactly: every sentence
        # is used once per epoch, which needs the unused rest of a chunk to be put back
        own = [(a0, la) for a0, la, _, _ in ep.spans.tolist()]
        own += [(b0, lb) for (_, _, b0, lb), y in zip(ep.spans.tolist(), ep.next_sentence_label) if y == 0]
        cover = np.zeros(corpus.num_tokens, np.int64)
        for start, length in own:
            cover[start:start + length] += 1
        assert (cover == 1).all()
    n = len(labels)
    # one-sentence chunks are always random, so the rate is a little above 1/2
    assert 0.45 * n < sum(labels) < 0.65 * n, sum(labels) / n


def test_nsp_balance_near_half_at_bert_settings(corpus, tok):
    dl = PretrainingData(corpus, tok, max_seq_len=64, seed=0)
    y = np.concatenate([dl.epoch(e).next_sentence_label for e in range(3)])
    lo, hi = five_sigma(len(y), 0.5)
    assert lo < y.sum() < hi, y.mean()


def test_nsp_balance_on_short_documents(tok, tmp_path):
    """Documents of 1-3 sentences force many random Bs: the original skews the labels,
    balance_nsp brings them back near 1/2."""
    c = TokenizedCorpus.build(synthetic_documents(600, seed=4, max_sentences=3), tok, tmp_path)
    original = PretrainingData(c, tok, max_seq_len=128, seed=0, balance_nsp=False).epoch(0)
    balanced = PretrainingData(c, tok, max_seq_len=128, seed=0).epoch(0)
    assert original.next_sentence_label.mean() > 0.6
    assert abs(balanced.next_sentence_label.mean() - 0.5) < 0.03
    # both use every sentence exactly once in A or a true B (see test_nsp_pairs_without_truncation)
    assert abs(len(balanced) - len(original)) < 0.2 * len(original)


def test_truncation_keeps_max_length(docs, tok, tmp_path):
    long_docs = [Document((" ".join(d.sentences),) * 3, d.source) for d in docs[:40]]
    c = TokenizedCorpus.build(long_docs, tok, tmp_path)
    dl = PretrainingData(c, tok, max_seq_len=24, short_seq_prob=0.0, seed=0)
    ep = dl.epoch(0)
    assert ep.lengths.max() <= 24 and (ep.lengths == 24).mean() > 0.9
    orig = original_rows(ep)
    for i in range(len(ep)):  # the truncated spans still hold exactly the tokens shown
        a0, la, b0, lb = (int(v) for v in ep.spans[i])
        np.testing.assert_array_equal(orig[i, 1:la + 1], c.tokens[a0:a0 + la])
        np.testing.assert_array_equal(orig[i, la + 2:la + 2 + lb], c.tokens[b0:b0 + lb])
    # segments start and end on sentence boundaries unless cut there: cuts hit both ends of both
    starts = np.asarray(c.sentence_offsets)
    a0, la, b0, lb = ep.spans.T
    for edge in (a0, a0 + la, b0, b0 + lb):
        assert (~np.isin(edge, starts)).mean() > 0.1


def test_short_seq_prob_makes_short_sequences(corpus, tok):
    never = PretrainingData(corpus, tok, max_seq_len=64, short_seq_prob=0.0).epoch(0)
    always = PretrainingData(corpus, tok, max_seq_len=64, short_seq_prob=1.0).epoch(0)
    assert always.lengths.mean() < 0.8 * never.lengths.mean()


def test_masking_in_epochs(corpus, tok):
    dl = PretrainingData(corpus, tok, max_seq_len=64, max_predictions=5, seed=0)
    ep = dl.epoch(0)
    chosen = ep.labels != -100
    n = ep.lengths - 3
    k = np.minimum(5, np.maximum(1, np.array([round(0.15 * v) for v in n])))
    np.testing.assert_array_equal(chosen.sum(1), k)
    assert not np.isin(ep.input_ids[chosen], [tok.token_to_id(s) for s in SPECIAL_TOKENS[:3]]).any()
    assert not np.isin(ep.labels[chosen], list(special_ids(tok))).any()


def test_same_seed_same_epoch_and_dynamic_masking(corpus, tok):
    a = PretrainingData(corpus, tok, max_seq_len=64, seed=7)
    b = PretrainingData(corpus, tok, max_seq_len=64, seed=7)
    for e in (0, 3):
        ea, eb = a.epoch(e), b.epoch(e)
        for name in ("input_ids", "labels", "lengths", "next_sentence_label", "spans"):
            np.testing.assert_array_equal(getattr(ea, name), getattr(eb, name))
    e0, e1 = a.epoch(0), a.epoch(1)
    n = min(len(e0), len(e1))
    assert not np.array_equal(e0.spans[:n], e1.spans[:n]), "pairs were not re-drawn"
    # dynamic masking: a segment A that recurs in another epoch gets a different mask
    long = PretrainingData(corpus, tok, max_seq_len=2048, short_seq_prob=0.0, seed=7)
    f0, f1 = long.epoch(0), long.epoch(1)
    where0 = {a0: (i, la) for i, (a0, la, _, _) in enumerate(f0.spans.tolist())}
    pairs = [(where0[a0][0], j, min(la, where0[a0][1]))
             for j, (a0, la, _, _) in enumerate(f1.spans.tolist()) if a0 in where0]
    assert len(pairs) >= corpus.num_documents  # every document's first sentence opens an A
    masks = [(f0.labels[i, 1:n + 1] != -100, f1.labels[j, 1:n + 1] != -100) for i, j, n in pairs]
    masks = [(m0, m1) for m0, m1 in masks if m0.any() or m1.any()]
    assert len(masks) > 50 and sum(np.array_equal(m0, m1) for m0, m1 in masks) < 0.2 * len(masks)
    other = PretrainingData(corpus, tok, max_seq_len=64, seed=8).epoch(0)
    assert not np.array_equal(other.input_ids[:50], e0.input_ids[:50])


def test_epoch_batch_equals_collated_instances_and_pad_to(corpus, tok):
    dl = PretrainingData(corpus, tok, max_seq_len=64)
    ep = dl.epoch(0)
    rows = np.arange(5, 13)
    pad = tok.token_to_id("[PAD]")
    for pad_to in (None, 64, 80):
        got = ep.batch(rows, pad_to)
        want = collate_instances([epoch_instance(ep, i) for i in rows], pad, pad_to)
        assert set(got) == {"input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"}
        for k in want:
            assert got[k].dtype == np.int64
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        T = got["input_ids"].shape[1]
        assert T == (ep.lengths[rows].max() if pad_to is None else pad_to)
        np.testing.assert_array_equal(got["attention_mask"].sum(1), ep.lengths[rows])
        assert (got["labels"][got["attention_mask"] == 0] == -100).all()
        assert (got["input_ids"][got["attention_mask"] == 0] == pad).all()
    with pytest.raises(ValueError):
        ep.batch(rows, pad_to=8)


@pytest.mark.parametrize("window", [0, 3])
def test_resume_from_saved_position_equals_uninterrupted(corpus, tok, window):
    bs = 16
    dl = PretrainingData(corpus, tok, max_seq_len=64, seed=5, length_window=window)
    per_epoch = len(dl.epoch(0)) // bs
    total = per_epoch + 6  # crosses an epoch boundary
    run = list(zip(range(total), dl.batches(bs)))
    for stop in (0, per_epoch - 2, per_epoch - 1, per_epoch + 2):
        saved = json.loads(json.dumps(run[stop][1][0]))  # the position after batch `stop`
        fresh = PretrainingData(corpus, tok, max_seq_len=64, seed=5, length_window=window)
        it = fresh.batches(bs, start=saved)
        for j in range(stop + 1, min(stop + 4, total)):
            pos, batch = next(it)
            assert pos == run[j][1][0]
            for k in batch:
                np.testing.assert_array_equal(batch[k], run[j][1][1][k])
    assert run[per_epoch - 1][1][0] == (1, 0)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(5, 64), min_size=1, max_size=200), bs=st.integers(1, 9),
       window=st.integers(0, 6), seed=st.integers(0, 10**6))
@example(lengths=[5, 5, 5, 6], bs=2, window=2, seed=97)  # two batches with the same shortest length
def test_length_grouped_batches_regroup_the_same_rows(lengths, bs, window, seed):
    lengths = np.array(lengths)
    got = instances.length_grouped_batches(lengths, bs, window, np.random.default_rng(seed))
    n_batches = len(lengths) // bs
    assert got.shape == (n_batches, bs)
    # exactly the rows of the ungrouped epoch: the last partial batch dropped, no row twice
    np.testing.assert_array_equal(np.sort(got.ravel()), np.arange(n_batches * bs))
    if window <= 1:  # off: batch i is rows i*bs .. (i+1)*bs - 1, as before grouping existed
        np.testing.assert_array_equal(got, np.arange(n_batches * bs).reshape(n_batches, bs))
        return
    span = window * bs
    for rows in got:
        assert len(set(rows // span)) == 1  # a batch never mixes two windows
    # within a window, the batches are the window's rows sorted by length (ties in row order),
    # cut in order: the same batches, row for row, in a shuffled order. (Sorting the batches
    # back by their shortest length failed on ties: lengths 5, 5, 5, 6 in batches of 2.)
    for w0 in range(0, n_batches * bs, span):
        in_w = got[(got[:, 0] // span) == w0 // span]  # this window's batches, shuffled
        ref = w0 + np.argsort(lengths[w0:min(w0 + span, n_batches * bs)], kind="stable")
        assert sorted(map(tuple, in_w.tolist())) == sorted(map(tuple, ref.reshape(-1, bs).tolist()))
    # the same rng state gives the same order (a resume relies on it)
    again = instances.length_grouped_batches(lengths, bs, window, np.random.default_rng(seed))
    np.testing.assert_array_equal(got, again)


def test_length_grouping_pads_less_and_keeps_instances(corpus, tok):
    bs = 8
    plain = PretrainingData(corpus, tok, max_seq_len=64, seed=3)
    grouped = PretrainingData(corpus, tok, max_seq_len=64, seed=3, length_window=8)
    n = len(plain.epoch(0)) // bs

    def epoch_batches(dl):
        return [b for _, (_, b) in zip(range(n), dl.batches(bs))]

    a, b = epoch_batches(plain), epoch_batches(grouped)
    real = lambda bb: sum(int(x["attention_mask"].sum()) for x in bb)  # noqa: E731
    slots = lambda bb: sum(x["attention_mask"].size for x in bb)  # noqa: E731
    assert real(a) == real(b)  # the same instances (same tokens), only regrouped
    assert real(b) / slots(b) > real(a) / slots(a) + 0.1  # and far less padding
    key = lambda bb: sorted(tuple(r[m == 1]) for x in bb for r, m in zip(x["input_ids"], x["attention_mask"]))  # noqa: E731
    assert key(a) == key(b)
    # the next epoch has its own order (a function of (seed, epoch))
    assert not np.array_equal(grouped.batch_rows(0, bs), grouped.batch_rows(1, bs)[:n])


def test_batches_reject_batch_larger_than_epoch(corpus, tok):
    dl = PretrainingData(corpus, tok, max_seq_len=64)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        next(dl.batches(10 ** 6))


def test_eval_batches_fixed_and_distinct_from_training(corpus, tok):
    dl = PretrainingData(corpus, tok, max_seq_len=64, seed=2)
    a = dl.eval_batches(8, 3)
    dl.epoch(0), dl.epoch(1), dl.epoch(2)  # evict cached epochs; eval must not change
    b = PretrainingData(corpus, tok, max_seq_len=64, seed=2).eval_batches(8, 3)
    assert len(a) == 3
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    train0 = dl.epoch(0).batch(slice(0, 8))
    assert not np.array_equal(train0["input_ids"], a[0]["input_ids"])
    n = len(dl.epoch(0, stream=instances.EVAL_STREAM))
    assert sum(len(x["next_sentence_label"]) for x in dl.eval_batches(8)) == n


def test_instance_rows_and_format_tell_the_truth(corpus, tok):
    """The reader's view (scripts/show_instance.py) agrees with the arrays training uses."""
    dl = PretrainingData(corpus, tok, max_seq_len=48, seed=3)
    ep = dl.epoch(0)
    orig = original_rows(ep)
    choices = set()
    for i in range(40):
        rows = instance_view.instance_rows(dl, i)
        assert len(rows) == ep.lengths[i]
        a0 = int(ep.spans[i][0])
        assert instance_view.document_of(corpus, a0) == doc_of_token(corpus, a0)
        for r in rows:
            t = r["pos"]
            assert r["input"] == ep.input_ids[i, t] and r["original"] == orig[i, t] and r["label"] == ep.labels[i, t]
            if r["label"] == -100:
                assert r["choice"] is None and r["input"] == r["original"]
            else:
                assert r["label"] == r["original"]
                assert (r["choice"] == "mask") == (r["input"] == dl.mask_id)
                assert (r["choice"] == "kept") == (r["input"] == r["original"])
            choices.add(r["choice"])
    assert {"mask", "random", "kept"} <= choices
    text = instance_view.format_instance(dl, tok, 0)
    assert f"next_sentence_label {int(ep.next_sentence_label[0])}" in text
    assert text.count("\n") == 6 + int(ep.lengths[0]) - 1
    assert text.count("[MASK] (80%)") == sum(r["choice"] == "mask" for r in instance_view.instance_rows(dl, 0))


# ---------------------------------------------------------------------------------------------
# masking rate and whole-word masking
# ---------------------------------------------------------------------------------------------

def test_masking_rate_is_honoured(corpus, tok):
    """masked_lm_prob reaches mask_tokens: at 0.4, min(P, max(1, round(0.4 n))) labels per row."""
    for p in (0.4, 0.05):
        ep = PretrainingData(corpus, tok, max_seq_len=64, max_predictions=20, masked_lm_prob=p, seed=0).epoch(0)
        n = ep.lengths - 3
        k = np.minimum(20, np.maximum(1, np.array([round(p * v) for v in n])))
        np.testing.assert_array_equal((ep.labels != -100).sum(1), k)


def test_token_masking_unchanged_bit_for_bit(corpus, tok):
    """word_start=None and whole_word_mask=False draw exactly what the code drew before whole-word
    masking existed (digests of that code's output, commit 30a988d)."""
    r = np.random.default_rng(123)
    ids = r.integers(4, 60, (7, 33))
    special = r.random((7, 33)) < 0.2
    m, lab = mask_tokens(ids, special, np.random.default_rng(9), mask_id=3, replace_ids=np.arange(4, 60),
                         masked_lm_prob=0.3, max_predictions=6)
    assert hashlib.sha256(m.astype(np.int64).tobytes() + lab.tobytes()).hexdigest()[:16] == "d9b56e5eb9dbc8cc"
    ep = PretrainingData(corpus, tok, max_seq_len=48, seed=3, whole_word_mask=False).epoch(1)
    assert hashlib.sha256(ep.input_ids.tobytes() + ep.labels.tobytes()).hexdigest()[:16] == "63eab7c21b781e4d"


def words_by_loop(special, word_start):
    """Word number of each position of one row (-1 at specials), by the definition: a candidate
    starts a word when word_start says so or the position before it is not a candidate."""
    word, w = [], -1
    for t in range(len(special)):
        if special[t]:
            word.append(-1)
            continue
        if word_start[t] or t == 0 or special[t - 1]:
            w += 1
        word.append(w)
    return np.array(word)


def check_whole_words(ids, masked, labels, special, word_start, k, replace):
    """Whole-word masking's contract on rows of (N, T) arrays, checked without the code under
    test: no special chosen; every word labelled whole or not at all; one 80/10/10 choice per
    word; at most k[row] labels; and the greedy rule's mark: every unchosen word is longer than
    what is left of k (it was too long when visited, and the count only grows)."""
    assert not ((labels != -100) & special).any()
    for row in range(ids.shape[0]):
        word = words_by_loop(special[row], word_start[row])
        chosen = labels[row] != -100
        np.testing.assert_array_equal(labels[row, chosen], ids[row, chosen])
        np.testing.assert_array_equal(masked[row, ~chosen], ids[row, ~chosen])
        count = int(chosen.sum())
        assert count <= k[row]
        for w in range(word.max() + 1):
            at = word == w
            if chosen[at].any():
                assert chosen[at].all(), f"row {row}: word {w} labelled in part"
                kinds = {("mask" if m == 3 else "kept" if m == i else "random")
                         for m, i in zip(masked[row, at], ids[row, at])}
                assert len(kinds) == 1, f"row {row}: word {w} got choices {kinds}"
                if kinds == {"random"}:
                    assert np.isin(masked[row, at], replace).all()
            else:
                assert at.sum() > k[row] - count, f"row {row}: word {w} would still fit"


@settings(max_examples=80, deadline=None)
@given(N=st.integers(1, 5), T=st.integers(1, 60), p=st.sampled_from([0.0, 0.15, 0.4, 1.0]),
       P=st.integers(0, 25), seed=st.integers(0, 2 ** 32 - 1), frac_special=st.floats(0, 0.5),
       frac_start=st.floats(0, 1))
@example(N=1, T=1, p=0.15, P=20, seed=0, frac_special=0.0, frac_start=0.0)  # one token
def test_whole_word_mask_contract(N, T, p, P, seed, frac_special, frac_start):
    r = np.random.default_rng(seed)
    ids = r.integers(4, 50, (N, T))
    special = r.random((N, T)) < frac_special
    word_start = r.random((N, T)) < frac_start
    replace = np.arange(100, 160)  # disjoint from the ids, so "random" and "kept" read apart
    masked, labels = mask_tokens(ids, special, np.random.default_rng(seed + 1), mask_id=3, replace_ids=replace,
                                 masked_lm_prob=p, max_predictions=P, word_start=word_start)
    assert masked.shape == ids.shape and labels.dtype == np.int64
    n = (~special).sum(1)
    k = np.array([0 if v == 0 else min(P, max(1, int(round(v * p)))) for v in n])
    check_whole_words(ids, masked, labels, special, word_start, k, replace)
    if frac_start == 1.0 or T == 1:  # every word one token: exactly k labels, as token masking
        np.testing.assert_array_equal((labels != -100).sum(1), k)


def test_whole_word_checker_can_fail():
    """check_whole_words rejects token-level masking of multi-token words, and a chooser that
    stops at the first word that does not fit (instead of trying the later, shorter ones)."""
    ids = np.tile(np.arange(4, 44), (50, 1))  # (50, 40)
    special = np.zeros_like(ids, bool)
    word_start = np.zeros_like(ids, bool)
    word_start[:, ::4] = True  # ten words of four tokens
    k = np.full(50, 6)
    masked, labels = mask_tokens(ids, special, np.random.default_rng(0), mask_id=3, replace_ids=np.arange(100, 160),
                                 masked_lm_prob=0.15, max_predictions=20)
    with pytest.raises(AssertionError, match="labelled in part"):
        check_whole_words(ids, masked, labels, special, word_start, k, np.arange(100, 160))
    # words of 5 and 1 tokens, k = 3: a chooser that stops at the 5-token word labels nothing
    ids1, sp1, ws1 = np.arange(4, 10)[None, :], np.zeros((1, 6), bool), np.array([[1, 0, 0, 0, 0, 1]], bool)
    with pytest.raises(AssertionError, match="would still fit"):
        check_whole_words(ids1, ids1, np.full((1, 6), -100), sp1, ws1, np.array([3]), np.arange(100, 160))


def test_whole_word_mask_uniform_words_and_80_10_10_per_word():
    """Ten 2-token words, k = 3: one word per row, each word chosen with probability 1/10; the
    80/10/10 choice counted per word."""
    N, T = 30000, 20
    ids = np.tile(np.arange(4, 4 + T), (N, 1))
    word_start = np.zeros((N, T), bool)
    word_start[:, ::2] = True
    replace = np.arange(100, 1100)
    masked, labels = mask_tokens(ids, np.zeros((N, T), bool), np.random.default_rng(2), mask_id=3,
                                 replace_ids=replace, word_start=word_start)
    chosen = labels != -100
    assert (chosen.sum(1) == 2).all()  # round(0.15 * 20) = 3: one 2-token word fits, a second does not
    first = chosen[:, ::2]  # (N, 10) which word
    lo, hi = five_sigma(N, 0.1)
    assert ((first.sum(0) > lo) & (first.sum(0) < hi)).all(), first.sum(0)
    word_in = masked[chosen].reshape(N, 2)  # (N, 2) the chosen word's two inputs
    word_orig = ids[chosen].reshape(N, 2)
    n_mask = int((word_in == 3).all(1).sum())
    n_keep = int((word_in == word_orig).all(1).sum())
    n_rand = int(np.isin(word_in, replace).all(1).sum())
    assert n_mask + n_keep + n_rand == N  # never mixed within a word
    for count, prob in [(n_mask, 0.8), (n_rand, 0.1), (n_keep, 0.1)]:
        lo, hi = five_sigma(N, prob)
        assert lo < count < hi, (count, prob)


def test_word_starts_bpe(tok):
    """Byte-level BPE: a token starts a word when its bytes start with white space; specials do."""
    ws = instances.word_starts(tok)
    assert ws.shape == (tok.vocab_size,) and ws.dtype == bool
    assert ws[[tok.token_to_id(s) for s in SPECIAL_TOKENS]].all()
    assert ws[tok.token_to_id("Ġ")] and ws[tok.token_to_id("Ċ")]  # " " and "\n" on their own
    assert not ws[tok.token_to_id("a")] and not ws[tok.token_to_id(".")]
    ids = tok.encode(" alpha parser.", allowed_special="none")
    pieces = [tok.decode([i]) for i in ids]
    assert pieces[0].startswith(" ") and ws[ids[0]]
    assert [bool(ws[i]) for i in ids] == [p.startswith(" ") for p in pieces]
    assert not ws[ids[-1]] and pieces[-1] == "."  # punctuation joins the word before it
    whole = tok.encode(" parser", allowed_special="none")
    if len(whole) > 1:  # a word of several pieces: only the first starts it
        assert ws[whole[0]] and not ws[whole[1:]].any()


def test_word_starts_wordpiece():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "emb", "##ed", "##ding", "##s", ",", "#"]
    wp = WordPieceTokenizer(vocab)
    ws = instances.word_starts(wp)
    np.testing.assert_array_equal(ws, [True] * 7 + [False] * 3 + [True, True])
    ids = wp.encode("the embedding, embeds")
    assert [wp.id_to_token(i) for i in ids] == ["the", "emb", "##ed", "##ding", ",", "emb", "##ed", "##s"]


def test_pretraining_data_whole_word_mask(corpus, tok):
    """In real instances every labelled word (a token with a leading space, or a sentence or
    segment start, and the pieces after it) is labelled whole; multi-token words do get masked."""
    dl = PretrainingData(corpus, tok, max_seq_len=48, seed=3, masked_lm_prob=0.3, whole_word_mask=True)
    ep = dl.epoch(0)
    orig = original_rows(ep)
    sentence_start = np.zeros(corpus.num_tokens + 1, bool)
    sentence_start[np.asarray(corpus.sentence_offsets)] = True
    n_multi = 0
    for i in range(200):
        a0, la, b0, lb = (int(v) for v in ep.spans[i])
        L = la + lb + 3
        src = np.r_[-1, np.arange(a0, a0 + la), -1, np.arange(b0, b0 + lb), -1]  # (L,) corpus position or -1
        special = src < 0
        word_start = np.array([s >= 0 and (sentence_start[s] or tok.decode([int(orig[i, t])]).startswith(" "))
                               for t, s in enumerate(src)])
        k = min(20, max(1, round(0.3 * (L - 3))))
        check_whole_words(orig[i:i + 1, :L], ep.input_ids[i:i + 1, :L].astype(np.int64), ep.labels[i:i + 1, :L],
                          special[None], word_start[None], [k], dl.replace_ids)
        word = words_by_loop(special, word_start)
        chosen = ep.labels[i, :L] != -100
        n_multi += sum(chosen[word == w].all() and (word == w).sum() > 1 for w in range(word.max() + 1))
    assert n_multi > 20
    token_level = PretrainingData(corpus, tok, max_seq_len=48, seed=3, masked_lm_prob=0.3).epoch(0)
    np.testing.assert_array_equal(token_level.spans, ep.spans)  # the same pairs, only other masks


def test_format_marks_whole_words(corpus, tok):
    """Under whole-word masking the reader's view numbers each labelled word: positions with one
    number are one word of the masking (word_ids), all labelled, with one 80/10/10 choice."""
    dl = PretrainingData(corpus, tok, max_seq_len=48, seed=3, masked_lm_prob=0.3, whole_word_mask=True)
    ep = dl.epoch(0)
    for i in range(30):
        rows = instance_view.instance_rows(dl, i)
        a0, la, b0, lb = (int(v) for v in ep.spans[i])
        src = np.r_[-1, np.arange(a0, a0 + la), -1, np.arange(b0, b0 + lb), -1]
        special = src < 0
        start = np.array([s >= 0 and bool(dl.word_start[s]) for s in src])
        word = words_by_loop(special, start)
        groups = {}
        for r in rows:
            assert (r["word"] is None) == (r["label"] == -100)
            if r["word"]:
                groups.setdefault(r["word"], []).append(r)
        assert sorted(groups) == list(range(1, len(groups) + 1))
        for g in groups.values():
            assert len({word[r["pos"]] for r in g}) == 1 and len({r["choice"] for r in g}) == 1
            assert len(g) == (word == word[g[0]["pos"]]).sum()  # the whole word
        text = instance_view.format_instance(dl, tok, i)
        assert text.count("  word ") == sum(r["word"] is not None for r in rows)
        assert f"{len(groups)} whole words (30%" in text
    plain = instance_view.format_instance(PretrainingData(corpus, tok, max_seq_len=48, seed=3), tok, 0)
    assert "  word " not in plain and "whole words" not in plain
