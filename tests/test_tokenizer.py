"""Tests of minibert.tokenizer, minibert.bpe_train and minibert.vocab: round trips, exact
training, exact encoding, file formats, the training entry points and the train-and-save program.

Reference values come from elsewhere: the plain BPE of minibert/bpe.py (recount every pair
after every merge; rescan every pair when encoding), tiktoken's Rust encoder built from GPT-2's
files, Hugging Face `tokenizers`, and the reference merges in ../shared/fixtures. Tests that
need those skip cleanly when they are absent.
"""
import hashlib
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings, strategies as st

from minibert import bpe, bpe_train
from minibert import tokenizer as tokmod
from minibert import vocab as vocabmod
from minibert.corpus import heldout_split
from minibert.tokenizer import GPT2_PATTERN, BPETokenizer, bytes_to_token_str, token_str_to_bytes

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
BPE_REF = FIXTURES / "bpe-reference"
GPT2 = FIXTURES / "gpt2"
needs_bpe_ref = pytest.mark.skipif(not (BPE_REF / "corpus.en").is_file(), reason="../shared/fixtures/bpe-reference absent")
needs_gpt2 = pytest.mark.skipif(not (GPT2 / "vocab.json").is_file(), reason="../shared/fixtures/gpt2 absent")

BERT_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]

SMALL_CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away!\n",
    "Byte pair encoding merges the most frequent pair of adjacent tokens, again and again.\n\n",
    "Numbers like 12345 and 2024 appear too, and so do contractions: it's, we're, they'll.\n",
    "Unicode: café, naïve, Grüße, 東京タワー, Ελληνικά, emoji 🙂🚀, combining e\u0301.\n",
    "    indented code(x) = [1, 2, 3]  # a comment\n\tdef f(): return None\n",
] * 20

EDGE_TEXTS = [
    "",
    " ",
    "a",
    "\n",
    "🙂👍🏽👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵",
    "東京タワーと富士山。中文，汉字！한국어 텍스트",
    "e\u0301 a\u0308\u0323 combining \u0301\u0301\u0301 marks",
    "  \n\n\n   \t\t \r\n\r\n  \u00a0\u2003 end   ",
    "x" * 5000,
    "supercalifragilisticexpialidocious" * 30,
    "it's we're they'll I'd you've I'm 'tis ''' '",
    "[MASK] is here, [CLS][SEP] and [PAD] too: [MASK][MASK]",
    "a[MASK]b [MAS K] [mask] [[MASK]]",
    "\x00\x01\x7f\x80 control \ufeff bom \uffff",
]


@pytest.fixture(scope="module")
def small_tok():
    return BPETokenizer.train_from_iterator(SMALL_CORPUS, 256 + 4 + 120, special_tokens=BERT_SPECIALS, progress=False)


@pytest.fixture(scope="module")
def gpt2_tok():
    if not (GPT2 / "vocab.json").is_file():
        pytest.skip("../shared/fixtures/gpt2 absent")
    return BPETokenizer.from_gpt2_files(GPT2 / "vocab.json", GPT2 / "merges.txt")


def import_or_skip(name):
    """The module, or a skip when it is not installed (or fails to import)."""
    try:
        return __import__(name)
    except ImportError as e:
        pytest.skip(f"{name} not available: {e}")


def fixture_texts():
    if not BPE_REF.is_dir():
        return []
    return [(BPE_REF / n).read_text(encoding="utf-8") for n in ("tinystories_sample.txt", "address.txt", "german.txt")]


# ---------------------------------------------------------------------- round trips

@pytest.mark.parametrize("text", EDGE_TEXTS)
def test_round_trip_edges(small_tok, text):
    ids = small_tok.encode(text)
    assert small_tok.decode(ids) == text
    assert small_tok.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < small_tok.vocab_size for i in ids)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_hypothesis(small_tok, text):
    assert small_tok.decode(small_tok.encode(text)) == text
    assert small_tok.decode(small_tok.encode(text, allowed_special="none")) == text


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(BERT_SPECIALS)), max_size=8))
def test_special_tokens_inside_text(small_tok, parts):
    text = "".join(parts)
    ids = small_tok.encode(text)
    assert small_tok.decode(ids) == text
    # every special written in the text became exactly its id: as many ids as occurrences
    n_special = sum(len(regex.findall(regex.escape(s), text)) for s in BERT_SPECIALS)
    assert sum(i in set(small_tok.special_tokens.values()) for i in ids) == n_special
    assert not set(small_tok.encode(text, allowed_special="none")) & set(small_tok.special_tokens.values())


def test_special_token_ids_and_policy(small_tok):
    assert small_tok.special_tokens == {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3}
    assert small_tok.token_to_id("[MASK]") == 3 and small_tok.id_to_token(3) == "[MASK]"
    assert small_tok.vocab[4] == b"\x00" and small_tok.vocab[4 + 255] == b"\xff"   # bytes follow the specials
    assert small_tok.encode("[MASK]") == [3]
    assert small_tok.encode("hi [MASK]!", allowed_special={"[MASK]"}).count(3) == 1
    assert 3 not in small_tok.encode("[MASK]", allowed_special={"[CLS]"})
    assert 3 not in small_tok.encode("[MASK]", allowed_special="none")
    with pytest.raises(ValueError, match="not special tokens"):
        small_tok.encode("x", allowed_special={"<|endoftext|>"})
    with pytest.raises(ValueError):
        small_tok.encode("x", allowed_special="some")
    with pytest.raises(KeyError):
        small_tok.token_to_id("no such token")
    assert small_tok.encode_batch(EDGE_TEXTS) == [small_tok.encode(t) for t in EDGE_TEXTS]



def test_piece_cache_cleared_when_full_gives_the_same_ids(small_tok, monkeypatch):
    texts = EDGE_TEXTS + SMALL_CORPUS[:5]
    cold = []
    for t in texts:
        small_tok.clear_cache()
        cold.append(small_tok.encode(t))
    monkeypatch.setattr(vocabmod, "_CACHE_LIMIT", 3)   # cleared every third new piece
    small_tok.clear_cache()
    assert [small_tok.encode(t) for t in texts] == cold
    assert small_tok.encode_batch(texts, workers=1) == cold
    assert 0 < max(map(len, small_tok._caches.values())) <= 3
    small_tok.clear_cache()

def test_encode_batch_in_worker_processes_equals_one_by_one(small_tok, monkeypatch):
    monkeypatch.setattr(tokmod, "_PARALLEL_ENCODE_CHARS", 1)  # split even a small batch
    texts = EDGE_TEXTS * 3 + ["[PAD] tail", "x" * 50]
    for allowed in ("all", "none"):
        serial = [small_tok.encode(t, allowed_special=allowed) for t in texts]
        assert small_tok.encode_batch(texts, allowed_special=allowed, workers=2) == serial
        assert small_tok.encode_batch(texts, allowed_special=allowed, workers=3) == serial


def test_overlapping_special_tokens_longest_wins():
    specials = ["<|end|>", "<|endoftext|>", "ab", "abc", "<|"]
    tok = BPETokenizer.train_from_iterator(["abc <|endoftext|> <|end|> ab"] * 5, 300, special_tokens=specials, progress=False)
    sp = tok.special_tokens
    assert tok.encode("<|endoftext|>") == [sp["<|endoftext|>"]]
    assert tok.encode("<|end|>") == [sp["<|end|>"]]
    assert tok.encode("xabcx")[1] == sp["abc"]
    assert tok.encode("<|endof") [0] == sp["<|"]
    for text in ["<|endoftext|><|end|>abcab<|<|endoftext", "aabcc<|end|>>"]:
        assert tok.decode(tok.encode(text)) == text


def test_lone_surrogate_raises_with_position(small_tok):
    with pytest.raises(ValueError, match=r"U\+D800 at index 3"):
        small_tok.encode("abc\ud800def")
    with pytest.raises(ValueError, match="surrogate"):
        BPETokenizer.train_from_iterator(["fine", "bad \udfff"], 300, progress=False)


def test_decode_errors_and_replacement(small_tok):
    with pytest.raises(ValueError, match="unknown token id"):
        small_tok.decode([small_tok.vocab_size])
    with pytest.raises(ValueError, match="unknown token id"):
        small_tok.decode([5, -1])
    with pytest.raises(ValueError):
        small_tok.id_to_token(10**6)
    byte_ff = small_tok.token_to_id(bytes_to_token_str(b"\xff"))
    assert small_tok.decode([byte_ff]) == "\ufffd"
    ids = small_tok.encode("é")   # two bytes: cutting after the first leaves invalid UTF-8
    assert small_tok.decode(small_tok.encode("a") + [small_tok.token_to_id(bytes_to_token_str(b"\xc3"))]) == "a\ufffd"
    assert small_tok.decode(ids) == "é"
    assert small_tok.decode([]) == ""


def naive_encode(tok, text):
    """The ids of the plain encoder in minibert/bpe.py (quadratic; fine for tests)."""
    id_of = {b: i for i, b in tok.vocab.items() if i not in tok.special_tokens.values()}
    return [id_of[b] for b in bpe.encode(text, tok.merges, tok.pattern)]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from("the quick brown fox, it's aaaa 12 é東🙂\n\t"), max_size=300) | st.text())
def test_encoding_matches_naive_bpe(small_tok, text):
    assert small_tok.encode(text, allowed_special="none") == naive_encode(small_tok, text)


def test_encoding_matches_plain_bpe_on_real_text(small_tok):
    # words like " and" need a merge to the left of an earlier one (" a" then "nd", then " and")
    for text in SMALL_CORPUS[:5] + EDGE_TEXTS + fixture_texts():
        assert small_tok.encode(text, allowed_special="none") == naive_encode(small_tok, text), text[:80]


def test_long_pre_token(small_tok):
    rng = random.Random(0)
    for word in ["".join(rng.choice("the quick brwnfx") for _ in range(3000)), "aaaa" * 500 + "ab" * 500]:
        assert small_tok.encode(word, allowed_special="none") == naive_encode(small_tok, word)
    long_word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100_000))
    ids = small_tok.encode(long_word)     # one pre-token; quadratic merging would take minutes here
    assert small_tok.decode(ids) == long_word
    assert len(small_tok.encode(" the" * 25_000)) < 100_000 / 2


# ---------------------------------------------------------------------- training

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(alphabet="aab b'\n\té", max_size=40), min_size=1, max_size=12),
       st.integers(min_value=0, max_value=40), st.integers(min_value=1, max_value=3))
def test_training_matches_plain_trainer(docs, n_merges, min_frequency):
    vocab_size = 256 + 1 + n_merges
    tok = BPETokenizer.train_from_iterator(docs, vocab_size, special_tokens=["b'"], min_frequency=min_frequency,
                                           progress=False)
    assert tok.merges == bpe.train(docs, vocab_size, special_tokens=["b'"], min_frequency=min_frequency)


def test_training_on_overlaps_and_ties():
    docs = ["aaaa aaa aa", "abab ab ba", "zz yy"]
    assert BPETokenizer.train_from_iterator(docs, 270, progress=False).merges == bpe.train(docs, 270)
    # "aaa" has two overlapping "aa": count 2 beats "ab" (count 1) in a one-word corpus
    assert BPETokenizer.train_from_iterator(["aaa ab"], 257, progress=False).merges == [(b"a", b"a")]
    assert bpe.train(["aaa ab"], 257) == [(b"a", b"a")]
    # a tie goes to the lexicographically greatest pair
    assert BPETokenizer.train_from_iterator(["xy ab"], 257, progress=False).merges == [(b"x", b"y")]
    assert bpe.train(["xy ab"], 257) == [(b"x", b"y")]


def test_training_order_independent_and_streaming_exact(tmp_path, monkeypatch):
    docs = SMALL_CORPUS[:5]
    a = BPETokenizer.train_from_iterator(docs, 400, progress=False)
    b = BPETokenizer.train_from_iterator(iter(list(reversed(docs))), 400, progress=False)   # an iterator is fine
    assert a.merges == b.merges
    # one file read in tiny blocks gives exactly the pre-tokens of the whole file
    text = "".join(SMALL_CORPUS) + "tail  \n  spaces\n\nx\r\ny [MASK]\nz"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8", newline="")
    monkeypatch.setattr(bpe_train, "_READ_BLOCK", 37)
    quiet = bpe_train.Progress(False)
    streamed = bpe_train.count_pretokens(bpe_train.read_files([path], ["[MASK]"]), GPT2_PATTERN, ["[MASK]"], 1, quiet)
    whole = Counter(p for part in text.split("[MASK]") for p in regex.findall(GPT2_PATTERN, part))
    assert streamed == whole
    # worker processes count the same
    monkeypatch.setattr(bpe_train, "_POOL_AFTER_CHARS", 100)
    monkeypatch.setattr(bpe_train, "_BATCH_CHARS", 500)
    pooled = bpe_train.count_pretokens(bpe_train.read_files([path, path], ["[MASK]"]), GPT2_PATTERN, ["[MASK]"], 2, quiet)
    assert pooled == Counter({k: 2 * v for k, v in whole.items()})
    monkeypatch.undo()
    from_file = BPETokenizer.train_from_files(path, 400, ["[MASK]"], progress=False).merges
    assert from_file == BPETokenizer.train_from_iterator([text], 400, ["[MASK]"], progress=False).merges
    assert BPETokenizer.train_from_files([str(path)], 400, ["[MASK]"], progress=False).merges == from_file


def test_training_arguments(tmp_path):
    with pytest.raises(ValueError, match="smaller than"):
        BPETokenizer.train_from_iterator(["abc"], 256 + 3, special_tokens=BERT_SPECIALS, progress=False)
    with pytest.raises(ValueError, match="duplicate"):
        BPETokenizer.train_from_iterator(["abc"], 300, special_tokens=["x", "x"], progress=False)
    (tmp_path / "real.txt").write_text("abc", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="train_from_iterator"):   # checked before any file is read
        BPETokenizer.train_from_files([tmp_path / "real.txt", "/no/such/corpus.txt"], 300, progress=False)
    with pytest.raises(FileNotFoundError):   # texts passed as files fail loudly too
        BPETokenizer.train_from_files(["the quick brown fox"], 300, progress=False)
    with pytest.raises(TypeError):
        BPETokenizer.train_from_iterator([b"bytes"], 300, progress=False)
    with pytest.raises(TypeError, match="train_from_files"):
        BPETokenizer.train_from_iterator([tmp_path / "real.txt"], 300, progress=False)
    with pytest.raises(TypeError, match="list of strings"):
        BPETokenizer.train_from_iterator(["abc"], 300, special_tokens="[MASK]", progress=False)
    # min_frequency stops early; a corpus with few pairs gives a smaller vocabulary
    tok = BPETokenizer.train_from_iterator(["ab ab cd"], 300, min_frequency=2, progress=False)
    assert tok.merges == [(b"a", b"b")] and tok.vocab_size == 257
    assert BPETokenizer.train_from_iterator([""], 300, progress=False).vocab_size == 256


def test_texts_that_are_file_paths_are_refused(tmp_path, monkeypatch):
    """The Hugging Face habit, train(["corpus.txt"]), must not train on the 10 characters."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(SMALL_CORPUS[:5]), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for texts in (["corpus.txt"], [str(corpus), "corpus.txt"], (p for p in ["corpus.txt"])):
        with pytest.raises(ValueError, match="did you mean train_from_files"):
            BPETokenizer.train_from_iterator(texts, 300, progress=False)
    for texts in ("corpus.txt", "some text", corpus):   # a bare str or path is never an iterable of documents
        with pytest.raises(ValueError, match="train_from_files"):
            BPETokenizer.train_from_iterator(texts, 300, progress=False)
    # one real document among them is enough to make them documents
    assert BPETokenizer.train_from_iterator(["corpus.txt", "just text"], 257, progress=False).merges == [(b"x", b"t")]
    assert BPETokenizer.train_from_files(["corpus.txt"], 300, progress=False).merges == bpe.train(SMALL_CORPUS[:5], 300)


def test_progress_lines(monkeypatch, capsys):
    monkeypatch.setattr(bpe_train.Progress, "every", 0.0)
    lines = []
    BPETokenizer.train_from_iterator(SMALL_CORPUS[:5], 300, progress=lines.append)
    assert any("merge" in line for line in lines) and "merges" in lines[-1]
    BPETokenizer.train_from_iterator(SMALL_CORPUS[:5], 300, progress=False)
    assert capsys.readouterr().err == ""


@needs_bpe_ref
def test_training_matches_reference_merges_and_vocab():
    tok = BPETokenizer.train_from_files(BPE_REF / "corpus.en", 500, special_tokens=["<|endoftext|>"], progress=False)
    ref_merges = [tuple(token_str_to_bytes(t) for t in line.split(" "))
                  for line in (BPE_REF / "reference-merges.txt").read_text(encoding="utf-8").splitlines() if line]
    assert tok.merges == ref_merges
    ref_vocab = json.loads((BPE_REF / "reference-vocab.json").read_text(encoding="utf-8"))
    ref_set = {s.encode("utf-8") if s == "<|endoftext|>" else token_str_to_bytes(s) for s in ref_vocab}
    assert set(tok.vocab.values()) == ref_set and tok.vocab_size == 500


# ---------------------------------------------------------------------- GPT-2 parity (tiktoken)

def _tiktoken_gpt2():
    tiktoken = import_or_skip("tiktoken")
    vocab = json.loads((GPT2 / "vocab.json").read_text(encoding="utf-8"))
    ranks = {token_str_to_bytes(s): i for s, i in vocab.items() if s != "<|endoftext|>"}
    return tiktoken.Encoding("gpt2-fixture", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    if not (GPT2 / "vocab.json").is_file():
        pytest.skip("../shared/fixtures/gpt2 absent")
    return _tiktoken_gpt2()


@needs_gpt2
def test_gpt2_parity_on_fixture_texts(gpt2_tok, tiktoken_gpt2):
    assert gpt2_tok.vocab_size == 50257 and gpt2_tok.special_tokens == {"<|endoftext|>": 50256}
    for text in fixture_texts() + EDGE_TEXTS:
        ids = gpt2_tok.encode(text)
        assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
        assert gpt2_tok.decode(ids) == text
        assert gpt2_tok.encode(text, allowed_special="none") == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2_tok.encode("hello world") == [31373, 995]


@needs_gpt2
@settings(max_examples=300, deadline=None)
@given(st.text())
def test_gpt2_parity_hypothesis(gpt2_tok, tiktoken_gpt2, text):
    assert gpt2_tok.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")


@needs_gpt2
def test_gpt2_files_with_and_without_version_header(gpt2_tok, tmp_path):
    merges = (GPT2 / "merges.txt").read_text(encoding="utf-8")
    assert not merges.startswith("#version")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    with_header = BPETokenizer.from_gpt2_files(GPT2 / "vocab.json", tmp_path / "merges.txt")
    assert with_header.merges == gpt2_tok.merges and with_header.vocab == gpt2_tok.vocab
    # and our writer reproduces files that load back to the same ids
    v, m = gpt2_tok.save_gpt2_files(tmp_path / "out")
    assert json.loads(v.read_text(encoding="utf-8")) == json.loads((GPT2 / "vocab.json").read_text(encoding="utf-8"))
    again = BPETokenizer.from_gpt2_files(v, m)
    assert again.vocab == gpt2_tok.vocab and again.merges == gpt2_tok.merges


def test_gpt2_files_errors(tmp_path, small_tok):
    v, m = small_tok.save_gpt2_files(tmp_path)
    m.write_text("#version: 0.2\nĠ t\nnot_a_pair\n", encoding="utf-8")
    with pytest.raises(ValueError, match="merges.txt:3"):
        BPETokenizer.from_gpt2_files(v, m)
    m.write_text("Ġ t\nĠt zz\n", encoding="utf-8")
    with pytest.raises(ValueError, match="earlier merge"):
        BPETokenizer.from_gpt2_files(v, m)
    lines = [f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in small_tok.merges]
    m.write_text("\n".join(lines[:10]), encoding="utf-8")   # truncated at a line end
    with pytest.raises(ValueError, match="neither a byte, a merge result"):
        BPETokenizer.from_gpt2_files(v, m, special_tokens=BERT_SPECIALS)
    v.write_text('{"a": 0', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        BPETokenizer.from_gpt2_files(v, m)


# ---------------------------------------------------------------------- Hugging Face round trip

def test_hugging_face_loads_what_minibert_trained(tmp_path):
    tokenizers = import_or_skip("tokenizers")
    docs = [(BPE_REF / "corpus.en").read_text(encoding="utf-8")] if BPE_REF.is_dir() else SMALL_CORPUS
    specials = ["<|endoftext|>", "[MASK]"]
    tok = BPETokenizer.train_from_iterator(docs, 600, special_tokens=specials, progress=False)
    v, m = tok.save_gpt2_files(tmp_path)
    hf = tokenizers.ByteLevelBPETokenizer(str(v), str(m))
    hf.add_special_tokens(specials)
    for text in fixture_texts() + EDGE_TEXTS + SMALL_CORPUS[:5]:
        assert hf.encode(text).ids == tok.encode(text), text[:80]


def test_minibert_loads_what_hugging_face_trained(tmp_path):
    tokenizers = import_or_skip("tokenizers")
    hf = tokenizers.ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<mask>"]
    hf.train_from_iterator(SMALL_CORPUS, vocab_size=500, min_frequency=2, special_tokens=specials, show_progress=False)
    hf.save_model(str(tmp_path))
    tok = BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt", special_tokens=specials)
    assert tok.special_tokens == {s: hf.token_to_id(s) for s in specials}
    for text in fixture_texts() + EDGE_TEXTS + SMALL_CORPUS[:5]:
        assert tok.encode(text) == hf.encode(text).ids, text[:80]


# ---------------------------------------------------------------------- the JSON format

def test_save_load_round_trip(small_tok, tmp_path):
    path = tmp_path / "tok.json"
    small_tok.save(path)
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d["format"] == "minibert-bpe" and d["version"] == 1 and d["pattern"] == GPT2_PATTERN
    loaded = BPETokenizer.load(path)
    assert loaded.merges == small_tok.merges and loaded.vocab == small_tok.vocab
    assert loaded.special_tokens == small_tok.special_tokens
    assert loaded.fingerprint() == small_tok.fingerprint()
    for text in EDGE_TEXTS:
        assert loaded.encode(text) == small_tok.encode(text)
    custom = BPETokenizer.train_from_iterator(SMALL_CORPUS[:5], 300, pattern=r"\S+|\s+", progress=False)
    custom.save(path)
    assert BPETokenizer.load(path).pattern == r"\S+|\s+"
    assert custom.fingerprint() != small_tok.fingerprint() and len(custom.fingerprint()) == 16



def test_saved_bytes_and_fingerprint_do_not_change(small_tok, tmp_path):
    """Checkpoints and token caches store the tokenizer's fingerprint, so the saved text must
    never change: these are the values the code gave before both tokenizers shared
    vocab.Vocabulary's writer (commit 8a706ba)."""
    small_tok.save(tmp_path / "tok.json")
    saved = (tmp_path / "tok.json").read_bytes()
    assert hashlib.sha256(saved).hexdigest() == "3cd1a3929b1bb44ea0544a49244498cf0bca9255a623776a167baef45be55070"
    assert small_tok.fingerprint() == hashlib.sha256(saved[:-1]).hexdigest()[:16] == "a000a111e8a131fe"

@needs_gpt2
def test_save_load_keeps_foreign_id_layout(gpt2_tok, tmp_path):
    gpt2_tok.save(tmp_path / "gpt2.json")
    loaded = BPETokenizer.load(tmp_path / "gpt2.json")
    assert loaded.vocab == gpt2_tok.vocab and loaded.special_tokens == {"<|endoftext|>": 50256}
    assert loaded.encode("hello world<|endoftext|>") == [31373, 995, 50256]


def test_malformed_files_raise(small_tok, tmp_path):
    path = tmp_path / "tok.json"
    small_tok.save(path)
    good = path.read_text(encoding="utf-8")
    cases = {
        "truncated": good[: len(good) // 2],
        "empty": "",
        "wrong format": good.replace('"minibert-bpe"', '"other"'),
        "future version": good.replace('"version": 1', '"version": 2'),
    }
    d = json.loads(good)
    cases["unknown merge part"] = json.dumps({**d, "merges": [["Ġ", "t"], ["x", "Ġtt"]]})
    cases["bad token char"] = json.dumps({**d, "merges": [[" ", "t"]]})
    cases["missing key"] = json.dumps({k: v for k, v in d.items() if k != "merges"})
    cases["vocab too short"] = json.dumps({**d, "vocab": d["vocab"][:-1]})
    cases["special mismatch"] = json.dumps({**d, "special_tokens": {"[PAD]": 7}})
    for name, content in cases.items():
        path.write_text(content, encoding="utf-8")
        with pytest.raises(ValueError):
            BPETokenizer.load(path)
            pytest.fail(name)


def test_token_strings(small_tok):
    assert bytes_to_token_str(b" the\n") == "ĠtheĊ"
    assert token_str_to_bytes("ĠtheĊ") == b" the\n"
    for i in range(small_tok.vocab_size):
        assert small_tok.token_to_id(small_tok.id_to_token(i)) == i
    with pytest.raises(ValueError):
        token_str_to_bytes(" ")


@needs_gpt2
def test_gpt2_parity_across_code_points(gpt2_tok, tiktoken_gpt2):
    """Pre-tokenization classes (\\s, \\p{L}, \\p{N}) agree with tiktoken's Rust regex: every
    code point below U+3000 and a spread of higher ones, between letters and between spaces."""
    cps = [c for c in [*range(0x3000), *range(0x3000, 0x110000, 97)] if not 0xD800 <= c <= 0xDFFF]
    for ctx in ("a{}b", " {} ", "x {}\n", "'{}s"):
        text = "".join(ctx.format(chr(c)) for c in cps)
        assert gpt2_tok.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all"), ctx


def test_read_file_blocks(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    text = "line one\nline two\r\nthird  line\n\n   end é"
    path.write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(bpe_train, "_READ_BLOCK", 5)
    assert "".join(bpe_train.read_file_blocks(path)) == text
    assert "".join(bpe_train.read_file_blocks(path, stop=9)) == text[:9]
    path.write_bytes(b"ok\xff\xfe not utf-8")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        BPETokenizer.train_from_files(path, 300, progress=False)


def test_train_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(SMALL_CORPUS) * 3, encoding="utf-8")
    out = tmp_path / "tok.json"
    summary = tokmod.train_tokenizer([corpus], out, vocab_size=400, heldout_bytes=3000,
                                     gpt2_dir=tmp_path / "gpt2", progress=False)
    tok = BPETokenizer.load(out)
    assert tok.vocab_size == summary["vocab_size"] == 400 and tok.special_tokens["[MASK]"] == 3
    assert summary["fingerprint"] == tok.fingerprint()
    # the held-out slice (the file's tail, from a line start) was not trained on, and is measured
    size = corpus.stat().st_size
    train_bytes, heldout = heldout_split(corpus, 3000)
    assert 0 < size - train_bytes <= 3000 and heldout == corpus.read_bytes()[train_bytes:].decode("utf-8")
    assert tok.merges == bpe.train([corpus.read_bytes()[:train_bytes].decode("utf-8")], 400, BERT_SPECIALS, 2)
    assert summary["heldout_tokens"] == len(tok.encode(heldout))
    assert summary["bytes_per_token"] == round(summary["heldout_bytes"] / summary["heldout_tokens"], 3)
    assert BPETokenizer.from_gpt2_files(tmp_path / "gpt2" / "vocab.json", tmp_path / "gpt2" / "merges.txt",
                                        special_tokens=list(tok.special_tokens)).vocab == tok.vocab
    with pytest.raises(FileNotFoundError):
        tokmod.train_tokenizer([corpus, tmp_path / "missing.txt"], out, progress=False)


def test_train_tokenizer_script_runs(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(SMALL_CORPUS), encoding="utf-8")
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_tokenizer.py"
    run = subprocess.run([sys.executable, str(script), str(corpus), "--out", str(tmp_path / "tok.json"),
                          "--vocab-size", "300", "--heldout-bytes", "1000"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "vocab_size 300" in run.stdout and "bytes_per_token" in run.stdout
    assert BPETokenizer.load(tmp_path / "tok.json").vocab_size == 300
    missing = subprocess.run([sys.executable, str(script), str(tmp_path / "nope.txt")], capture_output=True, text=True)
    assert missing.returncode != 0 and "nope.txt" in missing.stderr


@needs_gpt2
def test_truncated_gpt2_merges_raise(tmp_path):
    lines = (GPT2 / "merges.txt").read_text(encoding="utf-8").splitlines()
    (tmp_path / "merges.txt").write_text("\n".join(lines[:40_000]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="truncated"):
        BPETokenizer.from_gpt2_files(GPT2 / "vocab.json", tmp_path / "merges.txt")
