"""Tests of minibert.token_cache: the memory-mapped token cache, its key and its reuse.

Reference values are computed here independently (tok.encode of each sentence).
"""
import numpy as np
import pytest

from minibert.corpus import Document
from minibert.token_cache import TokenizedCorpus
from minibert.wordpiece import WordPieceTokenizer

from data_helpers import special_ids, synthetic_documents, train_tokenizer


class CountingTokenizer:
    """Wraps a tokenizer and counts the texts it encodes."""

    def __init__(self, tok):
        self.tok, self.encoded = tok, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode(self, text, allowed_special="none"):
        self.encoded += 1
        return self.tok.encode(text, allowed_special=allowed_special)

    def encode_batch(self, texts, allowed_special="none"):
        self.encoded += len(texts)
        return self.tok.encode_batch(texts, allowed_special=allowed_special)


def document_tokens(corpus, d):
    """Token ids of document d's sentences, as a list of host arrays, read from the offsets."""
    s0, s1 = int(corpus.doc_offsets[d]), int(corpus.doc_offsets[d + 1])
    off = corpus.sentence_offsets
    return [np.asarray(corpus.tokens[off[s]:off[s + 1]]) for s in range(s0, s1)]


@pytest.fixture(scope="module")
def docs():
    return synthetic_documents()


@pytest.fixture(scope="module")
def tok(docs):
    return train_tokenizer(docs, 600)


@pytest.fixture(scope="module")
def corpus(docs, tok, tmp_path_factory):
    return TokenizedCorpus.build(docs, tok, tmp_path_factory.mktemp("cache"))


def test_cache_layout_and_content(corpus, docs, tok):
    assert isinstance(corpus.tokens, np.memmap) and corpus.tokens.dtype == np.uint16
    assert corpus.num_documents == len(docs)
    assert corpus.num_sentences == sum(len(d.sentences) for d in docs)
    for d in (0, 17, len(docs) - 1):
        got = document_tokens(corpus, d)
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
    other_tok = CountingTokenizer(train_tokenizer(docs, 400))
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


def test_special_token_text_is_plain_text_for_wordpiece_too(tmp_path):
    # WordPiece recognises a special token again once cleaning has dropped a character inside it
    # ("[MA\u200bSK]" is "[MASK]" to encode), so the cache must not take encode's default either
    wp = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[", "]", "mask", "sep", "use", "."])
    assert wp.encode("use [MA\u200bSK] .")[1] == wp.token_to_id("[MASK]")
    docs = [Document(("Use [MA\u200bSK] .", "Use [SEP] [MASK] ."), "x"), Document(("Use [\x00SEP] .",), "y")]
    c = TokenizedCorpus.build(docs, wp, tmp_path)
    assert not np.isin(np.asarray(c.tokens), list(wp.special_tokens.values())).any()
    assert list(c.tokens[:5]) == wp.encode("use [ mask ] .")


def test_empty_corpus_is_a_clear_error(tok, tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        TokenizedCorpus.build([], tok, tmp_path)
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(ValueError, match="empty corpus"):
        TokenizedCorpus.build(str(tmp_path / "blank.txt"), tok, tmp_path / "cache")
