"""Tests of minibert.mlm_blocks: FULL-SENTENCES packing, the block layout, masks, resume.

The packing is checked against its definition with Hypothesis-drawn sentence lengths; block
contents are read back against the corpus one block at a time.
"""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibert import mlm_blocks
from minibert.instances import PretrainingData
from minibert.mlm_blocks import SEP_IN_STREAM, BlockData, pack_blocks
from minibert.token_cache import TokenizedCorpus
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer

from data_helpers import synthetic_documents, train_tokenizer
from test_instances import check_whole_words


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(synthetic_documents(), 600)


@pytest.fixture(scope="module")
def corpus(tok, tmp_path_factory):
    return TokenizedCorpus.build(synthetic_documents(), tok, tmp_path_factory.mktemp("cache"))


def check_packing(sentence_offsets, doc_offsets, doc_order, C, stream, block_offsets):
    """FULL-SENTENCES by its definition: the stream is the documents' tokens in order with one
    [SEP] at each document boundary that falls inside a block; blocks hold 1..C entries, never
    open or close on a [SEP]; a block ends on a sentence end unless it is full; a block that is
    not full could not take the next sentence (plus its [SEP] when it opens a document)."""
    off, doc = np.asarray(sentence_offsets), np.asarray(doc_offsets)
    want = np.concatenate([np.arange(off[doc[d]], off[doc[d + 1]]) for d in doc_order] or [np.zeros(0, int)])
    np.testing.assert_array_equal(stream[stream != SEP_IN_STREAM], want)
    sizes = np.diff(block_offsets)
    assert block_offsets[0] == 0 and block_offsets[-1] == len(stream)
    assert ((sizes >= 1) & (sizes <= C)).all()
    sentence_end = set(off[1:].tolist())
    first_sentence_of_doc = {int(off[doc[d]]) for d in doc_order}
    doc_of = np.searchsorted(off, np.arange(off[-1]), side="right") - 1  # (num_tokens,) sentence
    doc_of = np.searchsorted(doc, doc_of, side="right") - 1  # (num_tokens,) document
    for i in range(len(sizes)):
        block = stream[block_offsets[i]:block_offsets[i + 1]]
        assert block[0] != SEP_IN_STREAM and block[-1] != SEP_IN_STREAM
        toks = block[block != SEP_IN_STREAM]
        for a, b in zip(block[:-1], block[1:]):  # within a block: a [SEP] exactly where the document changes
            if a != SEP_IN_STREAM and b != SEP_IN_STREAM:
                assert doc_of[a] == doc_of[b] and b == a + 1
            elif a == SEP_IN_STREAM:
                assert b in first_sentence_of_doc
        if sizes[i] < C:
            assert int(toks[-1]) + 1 in sentence_end, f"block {i} ends inside a sentence"
            if i + 1 < len(sizes):
                nxt = int(stream[block_offsets[i + 1]])
                s = np.searchsorted(off, nxt, side="right") - 1
                need = (off[s + 1] - nxt) + (nxt in first_sentence_of_doc)
                assert sizes[i] + need > C, f"block {i} could have taken the next sentence"


@settings(max_examples=150, deadline=None)
@given(docs=st.lists(st.lists(st.integers(1, 30), min_size=1, max_size=6), min_size=1, max_size=12),
       C=st.integers(1, 40), seed=st.integers(0, 1000))
def test_pack_blocks_is_full_sentences(docs, C, seed):
    lens = [L for d in docs for L in d]
    sentence_offsets = np.r_[0, np.cumsum(lens)]
    doc_offsets = np.r_[0, np.cumsum([len(d) for d in docs])]
    order = np.random.default_rng(seed).permutation(len(docs))
    stream, block_offsets = pack_blocks(sentence_offsets, doc_offsets, order, C)
    check_packing(sentence_offsets, doc_offsets, order, C, stream, block_offsets)


def test_packing_checker_can_fail():
    """One block per sentence (no packing) and a missing [SEP] are both caught."""
    so, do = np.array([0, 3, 5, 9]), np.array([0, 2, 3])
    stream, bo = pack_blocks(so, do, [0, 1], 12)
    assert len(bo) == 2 and (stream == SEP_IN_STREAM).sum() == 1  # 3 + 2 + [SEP] + 4 tokens in one block
    with pytest.raises(AssertionError, match="could have taken"):
        check_packing(so, do, [0, 1], 12, np.r_[np.arange(5), SEP_IN_STREAM, np.arange(5, 9)], np.array([0, 3, 10]))
    with pytest.raises(AssertionError):
        check_packing(so, do, [0, 1], 12, np.arange(9), np.array([0, 9]))


def block_tokens_by_corpus(data, ep, i):
    """(L,) the original ids of block i, read from the corpus through its stream entries."""
    entries = ep.stream[ep.block_offsets[i]:ep.block_offsets[i + 1]]
    inner = [data.sep_id if e == SEP_IN_STREAM else int(data.corpus.tokens[e]) for e in entries]
    return np.array([data.cls_id, *inner, data.sep_id])


def test_blocks_layout_cover_and_masks(corpus, tok):
    data = BlockData(corpus, tok, max_seq_len=64, max_predictions=20, seed=1)
    ep = data.epoch(0)
    C = 62
    check_packing(corpus.sentence_offsets, corpus.doc_offsets, ep.doc_order, C, ep.stream, ep.block_offsets)
    np.testing.assert_array_equal(np.sort(ep.doc_order), np.arange(corpus.num_documents))
    cls, sep, pad = (tok.token_to_id(s) for s in ("[CLS]", "[SEP]", "[PAD]"))
    orig = np.where(ep.labels != -100, ep.labels, ep.input_ids)
    n_inner_sep = 0
    for i in range(len(ep)):
        L = int(ep.lengths[i])
        want = block_tokens_by_corpus(data, ep, i)
        np.testing.assert_array_equal(orig[i, :L], want)
        np.testing.assert_array_equal(mlm_blocks.block_original(data, i), want)
        assert ep.input_ids[i, 0] == cls and ep.input_ids[i, L - 1] == sep and (ep.input_ids[i, L:] == pad).all()
        special = np.isin(want, [cls, sep])
        assert (ep.labels[i, :L][special] == -100).all() and (ep.labels[i, L:] == -100).all()
        n = int((~special).sum())
        assert (ep.labels[i] != -100).sum() == min(20, max(1, round(0.15 * n)))
        n_inner_sep += int(special[1:L - 1].sum())
    assert n_inner_sep > 10  # documents do share blocks
    assert ep.lengths.mean() > 0.85 * 64  # packed: blocks nearly full (sentences here are up to ~20 tokens)
    b = ep.batch(np.arange(3, 9), pad_to=80)
    assert set(b) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert all(v.dtype == np.int64 and v.shape == (6, 80) for v in b.values())
    assert (b["token_type_ids"] == 0).all()
    np.testing.assert_array_equal(b["attention_mask"].sum(1), ep.lengths[3:9])
    with pytest.raises(ValueError):
        ep.batch(np.arange(3), pad_to=8)


def test_masking_rate_and_whole_words_in_blocks(corpus, tok):
    data = BlockData(corpus, tok, max_seq_len=64, masked_lm_prob=0.4, seed=2, whole_word_mask=True)
    ep = data.epoch(0)
    sentence_start = np.zeros(corpus.num_tokens + 1, bool)
    sentence_start[np.asarray(corpus.sentence_offsets)] = True
    for i in range(100):
        L = int(ep.lengths[i])
        orig = block_tokens_by_corpus(data, ep, i)
        src = np.r_[-1, ep.stream[ep.block_offsets[i]:ep.block_offsets[i + 1]], -1]  # (L,)
        special = src < 0
        word_start = np.array([s >= 0 and (sentence_start[s] or tok.decode([int(o)]).startswith(" "))
                               for s, o in zip(src, orig)])
        k = min(20, max(1, round(0.4 * int((~special).sum()))))
        check_whole_words(orig[None], ep.input_ids[i:i + 1, :L].astype(np.int64), ep.labels[i:i + 1, :L],
                          special[None], word_start[None], [k], data.replace_ids)
    plain = BlockData(corpus, tok, max_seq_len=64, masked_lm_prob=0.4, seed=2).epoch(0)
    np.testing.assert_array_equal(plain.stream, ep.stream)  # the same blocks, other masks
    assert (plain.labels != -100).sum() >= (ep.labels != -100).sum()  # a word that would pass k is skipped
    assert not np.array_equal(plain.labels != -100, ep.labels != -100)


def test_epochs_differ_and_seed_determines(corpus, tok):
    a, b = BlockData(corpus, tok, max_seq_len=64, seed=7), BlockData(corpus, tok, max_seq_len=64, seed=7)
    for e in (0, 2):
        for name in ("input_ids", "labels", "lengths", "stream", "block_offsets", "doc_order"):
            np.testing.assert_array_equal(getattr(a.epoch(e), name), getattr(b.epoch(e), name))
    e0, e1 = a.epoch(0), a.epoch(1)
    assert not np.array_equal(e0.doc_order, e1.doc_order)
    other = BlockData(corpus, tok, max_seq_len=64, seed=8).epoch(0)
    assert not np.array_equal(other.doc_order, e0.doc_order)
    # dynamic masking: the corpus tokens labelled in epoch 1 are a fresh draw, overlapping
    # epoch 0's about as much as chance (~15%), not all of them
    labelled = [set(labelled_corpus_positions(ep).tolist()) for ep in (e0, e1)]
    assert len(labelled[0] & labelled[1]) < 0.3 * len(labelled[0])


def labelled_corpus_positions(ep):
    """(M,) the corpus token position of every labelled block position of an epoch."""
    rows, cols = np.nonzero(ep.labels != -100)
    return ep.stream[ep.block_offsets[rows] + cols - 1]


def test_resume_from_saved_position_equals_uninterrupted(corpus, tok):
    bs = 8
    data = BlockData(corpus, tok, max_seq_len=64, seed=5)
    per_epoch = data.num_instances(0) // bs
    total = per_epoch + 5
    run = list(zip(range(total), data.batches(bs)))
    assert run[per_epoch - 1][1][0] == (1, 0)
    np.testing.assert_array_equal(run[1][1][1]["input_ids"], data.epoch(0).batch(np.arange(8, 16))["input_ids"])
    for stop in (0, per_epoch - 2, per_epoch - 1, per_epoch + 1):
        saved = json.loads(json.dumps(run[stop][1][0]))
        it = BlockData(corpus, tok, max_seq_len=64, seed=5).batches(bs, start=saved)
        for j in range(stop + 1, min(stop + 4, total)):
            pos, batch = next(it)
            assert pos == run[j][1][0]
            for key in batch:
                np.testing.assert_array_equal(batch[key], run[j][1][1][key])
    with pytest.raises(ValueError, match="fewer than batch_size"):
        next(data.batches(10 ** 6))


def test_interface_matches_pretraining_data(corpus, tok):
    """What training calls on its data: num_instances, batches, eval_batches; the batch keys
    are PretrainingData's without next_sentence_label."""
    blocks = BlockData(corpus, tok, max_seq_len=64, seed=3)
    pairs = PretrainingData(corpus, tok, max_seq_len=64, seed=3)
    (_, bb), (_, pb) = next(blocks.batches(4, pad_to=64)), next(pairs.batches(4, pad_to=64))
    assert set(pb) - set(bb) == {"next_sentence_label"} and set(bb) < set(pb)
    ev = blocks.eval_batches(4, 2)
    assert len(ev) == 2 and not np.array_equal(ev[0]["input_ids"], bb["input_ids"])
    again = BlockData(corpus, tok, max_seq_len=64, seed=3).eval_batches(4, 2)
    np.testing.assert_array_equal(ev[1]["labels"], again[1]["labels"])
    plain_tok = BPETokenizer.train_from_iterator(["a b c"], 260, special_tokens=SPECIAL_TOKENS[:2], progress=False)
    with pytest.raises(ValueError, match="lacks special tokens"):
        BlockData(corpus, plain_tok)


def test_block_rows_and_format_tell_the_truth(corpus, tok):
    data = BlockData(corpus, tok, max_seq_len=64, seed=4, whole_word_mask=True)
    ep = data.epoch(0)
    block = lambda i: ep.stream[ep.block_offsets[i]:ep.block_offsets[i + 1]]  # noqa: E731
    with_sep = [i for i in range(len(ep)) if (block(i) == SEP_IN_STREAM).any()]
    for i in [0, 1, *with_sep[:3]]:
        rows = mlm_blocks.block_rows(data, i)
        L = int(ep.lengths[i])
        assert len(rows) == L and all(r["segment"] == 0 for r in rows)
        for r, o in zip(rows, block_tokens_by_corpus(data, ep, i)):
            t = r["pos"]
            assert r["original"] == o and r["input"] == ep.input_ids[i, t] and r["label"] == ep.labels[i, t]
            assert (r["word"] is None) == (r["label"] == -100)
        text = mlm_blocks.format_block(data, tok, i)
        n_docs = 1 + int((block(i) == SEP_IN_STREAM).sum())
        assert text.splitlines()[1].count("tokens of document") == n_docs
        assert text.count("\n") == 4 + L
