"""Tests of minibert.data: corpus reading, the token cache, NSP pairs, MLM masking, batches.

Reference values are computed here independently (plain loops, Python's round, hashlib);
statistical checks use 5-sigma binomial bounds, so a correct implementation fails them with
probability below 1e-6 and a biased one fails them reliably.
"""
import hashlib
import json
import random
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibert import data
from minibert.data import (SPECIAL_TOKENS, CorpusWarning, Document, PretrainingData, TokenizedCorpus,
                           make_batch, mask_tokens)

try:  # the real tokenizer, once it lands; until then a stand-in with the same API
    from minibert.tokenizer import BPETokenizer
except ImportError:
    BPETokenizer = None


class WordTokenizer:
    """Stand-in with BPETokenizer's API: frequent words (with their leading space) get ids,
    anything else falls back to single bytes. Specials first, then 256 bytes, then words."""
    _PRETOKEN = re.compile(r" ?\w+| ?[^\w\s]+|\s+")

    def __init__(self, words, special_tokens):
        self.special_tokens = {s: i for i, s in enumerate(special_tokens)}
        n = len(special_tokens)
        self._itos = list(special_tokens) + [bytes([b]) for b in range(256)] + list(words)
        self._stoi = {t: i for i, t in enumerate(self._itos)}
        self._bytes0 = n

    @classmethod
    def train(cls, corpus, vocab_size, special_tokens=(), progress=False):
        counts = {}
        for text in corpus:
            for w in cls._PRETOKEN.findall(text):
                counts[w] = counts.get(w, 0) + 1
        room = vocab_size - len(special_tokens) - 256
        words = sorted(counts, key=lambda w: (-counts[w], w))[:max(room, 0)]
        return cls(words, list(special_tokens))

    @property
    def vocab_size(self):
        return len(self._itos)

    def encode(self, text, allowed_special="none"):
        allowed = set(self.special_tokens) if allowed_special == "all" else (
            set() if allowed_special == "none" else set(allowed_special))
        ids = []
        parts = re.split("(" + "|".join(map(re.escape, sorted(allowed))) + ")", text) if allowed else [text]
        for part in parts:
            if part in allowed:
                ids.append(self.special_tokens[part])
                continue
            for w in self._PRETOKEN.findall(part):
                if w in self._stoi:
                    ids.append(self._stoi[w])
                else:
                    ids += [self._bytes0 + b for b in w.encode("utf-8")]
        return ids

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        out = b""
        for i in ids:
            t = self._itos[i]
            out += t if isinstance(t, bytes) else t.encode("utf-8")
        return out.decode("utf-8", errors="replace")

    def token_to_id(self, s):
        return self._stoi[s]

    def id_to_token(self, i):
        return self._itos[i]

    def fingerprint(self):
        return hashlib.sha256(repr(self._itos).encode()).hexdigest()


Tokenizer = BPETokenizer or WordTokenizer


class CountingTokenizer:
    """Wraps a tokenizer and counts the texts it encodes."""

    def __init__(self, tok):
        self.tok, self.encoded = tok, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode(self, text, allowed_special="none"):
        self.encoded += 1
        return self.tok.encode(text, allowed_special=allowed_special)

    def encode_batch(self, texts):
        self.encoded += len(texts)
        return self.tok.encode_batch(texts)


_WORDS = ("alpha beta gamma delta epsilon zeta theta iota kappa lambda sigma omega river stone "
          "cloud field light shadow north south east west quick slow bright dark small large "
          "module class function value return list dict string number parser buffer stream").split()


def synthetic_documents(n_docs=120, seed=0, max_sentences=12):
    """Documents of capitalised pseudo-English sentences, 1..max_sentences each."""
    r = random.Random(seed)
    docs = []
    for d in range(n_docs):
        sents = []
        for _ in range(r.randint(1, max_sentences)):
            words = [r.choice(_WORDS) for _ in range(r.randint(3, 14))]
            sents.append(" ".join(words).capitalize() + r.choice(".!?"))
        docs.append(Document(tuple(sents), f"synthetic.d{d % 7}", f"synthetic#{d}"))
    return docs


@pytest.fixture(scope="module")
def docs():
    return synthetic_documents()


@pytest.fixture(scope="module")
def tok(docs):
    return Tokenizer.train([s for d in docs for s in d.sentences], 600, special_tokens=SPECIAL_TOKENS, progress=False)


@pytest.fixture(scope="module")
def corpus(docs, tok, tmp_path_factory):
    return TokenizedCorpus.build(docs, tok, tmp_path_factory.mktemp("cache"))


def special_ids(tok):
    return {tok.token_to_id(s) for s in SPECIAL_TOKENS}


def five_sigma(n, p):
    """Bounds on a Binomial(n, p) count that a correct draw leaves with probability < 1e-6."""
    s = 5 * np.sqrt(n * p * (1 - p))
    return n * p - s, n * p + s


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
    ra, rb = data.truncation_counts(np.array([la]), np.array([lb]), m)
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
        x = ep.instance(i)
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


def test_make_batch_equals_epoch_batch_and_pad_to(corpus, tok):
    dl = PretrainingData(corpus, tok, max_seq_len=64)
    ep = dl.epoch(0)
    rows = np.arange(5, 13)
    pad = tok.token_to_id("[PAD]")
    for pad_to in (None, 64, 80):
        got = ep.batch(rows, pad_to)
        want = make_batch([ep.instance(i) for i in rows], pad, pad_to)
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


def test_resume_from_saved_position_equals_uninterrupted(corpus, tok):
    bs = 16
    dl = PretrainingData(corpus, tok, max_seq_len=64, seed=5)
    per_epoch = dl.batches_per_epoch(bs, 0)
    total = per_epoch + 6  # crosses an epoch boundary
    run = list(zip(range(total), dl.batches(bs)))
    for stop in (0, per_epoch - 2, per_epoch - 1, per_epoch + 2):
        saved = json.loads(json.dumps(run[stop][1][0]))  # the position after batch `stop`
        fresh = PretrainingData(corpus, tok, max_seq_len=64, seed=5)
        it = fresh.batches(bs, start=saved)
        for j in range(stop + 1, min(stop + 4, total)):
            pos, batch = next(it)
            assert pos == run[j][1][0]
            for k in batch:
                np.testing.assert_array_equal(batch[k], run[j][1][1][k])
    assert run[per_epoch - 1][1][0] == (1, 0)


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
    n = len(dl.epoch(0, stream=data.EVAL_STREAM))
    assert sum(len(x["next_sentence_label"]) for x in dl.eval_batches(8)) == n


# ---------------------------------------------------------------------------------------------
# The token cache
# ---------------------------------------------------------------------------------------------

def test_cache_layout_and_content(corpus, docs, tok):
    assert isinstance(corpus.tokens, np.memmap) and corpus.tokens.dtype == np.uint16
    assert corpus.num_documents == len(docs)
    assert corpus.num_sentences == sum(len(d.sentences) for d in docs)
    for d in (0, 17, len(docs) - 1):
        got = corpus.document(d)
        assert [list(g) for g in got] == [tok.encode(s, allowed_special="none") for s in docs[d].sentences]


def test_cache_reused_and_invalidated(docs, tok, tmp_path):
    counting = CountingTokenizer(tok)
    c1 = TokenizedCorpus.build(docs, counting, tmp_path, chunk_sentences=50)  # many chunks
    n_first = counting.encoded
    assert n_first == sum(len(d.sentences) for d in docs)
    c2 = TokenizedCorpus.build(docs, counting, tmp_path)
    assert counting.encoded == n_first, "second build re-tokenized"
    assert c2.path == c1.path
    np.testing.assert_array_equal(c1.tokens, c2.tokens)
    other_tok = CountingTokenizer(Tokenizer.train([s for d in docs for s in d.sentences], 400,
                                                  special_tokens=SPECIAL_TOKENS, progress=False))
    assert other_tok.fingerprint() != tok.fingerprint()
    c3 = TokenizedCorpus.build(docs, other_tok, tmp_path)
    assert other_tok.encoded == n_first and c3.path != c1.path
    c4 = TokenizedCorpus.build(docs[:-1], counting, tmp_path)  # a changed corpus too
    assert c4.path != c1.path and c4.num_documents == len(docs) - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({c1.path.name, c3.path.name, c4.path.name})


def test_cache_from_files_equals_from_documents(docs, tok, tmp_path):
    (tmp_path / "corpus").mkdir()
    for k in range(3):
        part = docs[k * 10:(k + 1) * 10]
        (tmp_path / "corpus" / f"part{k}.txt").write_text("\n\n".join("\n".join(d.sentences) for d in part) + "\n")
    from_files = TokenizedCorpus.build(str(tmp_path / "corpus"), tok, tmp_path / "cache")
    from_docs = TokenizedCorpus.build(docs[:30], tok, tmp_path / "cache")
    np.testing.assert_array_equal(from_files.tokens, from_docs.tokens)
    np.testing.assert_array_equal(from_files.sentence_offsets, from_docs.sentence_offsets)
    np.testing.assert_array_equal(from_files.doc_offsets, from_docs.doc_offsets)
    glob_built = TokenizedCorpus.build(str(tmp_path / "corpus" / "*.txt"), tok, tmp_path / "cache")
    assert glob_built.path == from_files.path


def test_special_token_text_is_plain_text(tok, tmp_path):
    docs = [Document(("Use [MASK] and [SEP] in text.", "Then [CLS] and [PAD] too."), "x"),
            Document(("Alpha beta gamma.",), "y")]
    c = TokenizedCorpus.build(docs, tok, tmp_path)
    assert not np.isin(np.asarray(c.tokens), list(special_ids(tok))).any()


def test_empty_corpus_is_a_clear_error(tok, tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        TokenizedCorpus.build([], tok, tmp_path)
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(ValueError, match="empty corpus"):
        data.read_documents(str(tmp_path / "blank.txt"))
    with pytest.raises(ValueError, match="empty corpus"):
        TokenizedCorpus.build(str(tmp_path / "blank.txt"), tok, tmp_path / "cache")
    with pytest.raises(FileNotFoundError):
        data.read_documents(str(tmp_path / "nothing-*.txt"))


# ---------------------------------------------------------------------------------------------
# Reading text
# ---------------------------------------------------------------------------------------------

def test_non_utf8_replaced_with_counting_warning(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"Caf\xe9 au lait is fine.\nNo \xff\xff problem here.\n")
    with pytest.warns(CorpusWarning, match=r"replaced 3 invalid UTF-8 byte"):
        docs = data.read_documents(str(p))
    text = " ".join(s for d in docs for s in d.sentences)
    assert text.count("\ufffd") == 3 and "Caf\ufffd au lait" in text
    good = tmp_path / "good.txt"
    good.write_text("Caf\u00e9 is fine.\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.read_documents(str(good))


def test_split_sentences():
    assert data.split_sentences("It works. It (really) works! Does it? \"Yes.\" 3 cats.") == [
        "It works.", "It (really) works!", "Does it?", "\"Yes.\"", "3 cats."]
    assert data.split_sentences("Use e.g. this one. Then\n  that.") == ["Use e.g. this one.", "Then that."]
    assert data.split_sentences("   ") == []


def test_formats_bert_lines_wrapped_text_and_paragraph_lines(tmp_path):
    lines = "The first sentence.\nThe second sentence.\n\nAnother document here.\nIt ends.\n"
    wrapped = ("This is running text that is wrapped at a narrow width so that\nlines end in the "
               "middle of sentences. A second sentence\nfollows here. And a third.\n\nA new "
               "paragraph starts. It has\ntwo sentences.\n")
    prose = ("It was the best of times, it was the worst of times, it was the age\n"
             "of wisdom, it was the age of foolishness, it was the epoch of belief,\n"
             "it was the epoch of incredulity, it was the season of Light, it was\n"
             "the season of Darkness, it was the spring of hope.\n")
    assert data.detect_format(prose) == "text"
    assert data.parse_text(prose)[0].sentences[0].startswith("It was the best of times, it was the worst")
    para = "One paragraph per line. It has sentences. Many of them.\n\nAnother one. Yes.\n"
    assert data.detect_format(lines) == "lines"
    assert data.detect_format(wrapped) == "text"
    assert data.detect_format(para) == "text"
    docs = data.parse_text(lines)
    assert [d.sentences for d in docs] == [("The first sentence.", "The second sentence."),
                                           ("Another document here.", "It ends.")]
    docs = data.parse_text(wrapped)
    assert docs[0].sentences == ("This is running text that is wrapped at a narrow width so that lines end "
                                 "in the middle of sentences.", "A second sentence follows here.", "And a third.")
    assert docs[1].sentences == ("A new paragraph starts.", "It has two sentences.")
    assert [len(d.sentences) for d in data.parse_text(para)] == [3, 2]
    assert [len(d.sentences) for d in data.parse_text(para, format="lines")] == [1, 1]
    with pytest.raises(ValueError):
        data.parse_text(para, format="xml")


# ---------------------------------------------------------------------------------------------
# The default corpus
# ---------------------------------------------------------------------------------------------

def test_default_corpus_sources_and_stable_split():
    docs = data.default_corpus("all")
    assert len(docs) > 3000
    sources = {d.source for d in docs}
    assert {"json.decoder", "email.message", "os", "collections"} <= sources
    assert not any(s.startswith(("test.", "idlelib")) or ".test." in s or ".tests." in s for s in sources)
    assert all(re.fullmatch(r"[A-Za-z_][\w.]*", s) for s in sources)
    assert all(d.name == d.source or d.name.startswith(d.source + ".") for d in docs)
    assert all(len(d.text) >= data.MIN_DOC_CHARS * 0.5 and d.sentences for d in docs)
    assert sum(len(d.sentences) >= 2 for d in docs) > 0.3 * len(docs)
    train, heldout = data.default_corpus("train"), data.default_corpus("heldout")
    assert len(train) + len(heldout) == len(docs)
    lo, hi = five_sigma(len(docs), 0.05)
    assert lo < len(heldout) < hi
    assert not {d.name for d in heldout} & {d.name for d in train} - {d.name for d in heldout}
    for d in heldout[:20] + train[:20]:  # the rule, recomputed independently
        h = int(hashlib.sha256("\n".join(d.sentences).encode()).hexdigest()[:16], 16)
        assert (h < 0.05 * 2 ** 64) == (d in heldout[:20])
    pkgs = data.default_corpus("all", packages={"json"})
    assert pkgs and all(d.package == "json" for d in pkgs)
    assert [d for d in docs if d.package == "json"] == pkgs


def test_default_corpus_reads_without_importing(tmp_path):
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    (lib / "pkg" / "__init__.py").write_text('"""The package docstring says hello. It has two sentences."""\n'
                                             'raise SystemExit("imported!")\n')
    (lib / "pkg" / "mod.py").write_text('class C:\n    """A class docstring that is long enough to keep.\n\n'
                                        '    >>> C()\n    C\n    """\n    def f(self):\n        "Short."\n')
    (lib / "test" / "test_x.py").write_text('"""A test module docstring that must be skipped entirely."""\n')
    (lib / "broken.py").write_text('"""Broken file docstring long enough to keep it."""\ndef (:\n')
    docs = data.stdlib_documents(stdlib=str(lib))
    assert [(d.source, d.name) for d in docs] == [("pkg", "pkg"), ("pkg.mod", "pkg.mod.C")]
    assert docs[0].sentences == ("The package docstring says hello.", "It has two sentences.")
    assert docs[1].sentences == ("A class docstring that is long enough to keep.", ">>> C()", "C")
