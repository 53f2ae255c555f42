"""WordPieceTokenizer against Hugging Face's BertTokenizer: the same ids on thousands of drawn texts.

A vocabulary is trained with `tokenizers`' BertWordPieceTokenizer (lower-cased and cased) on
stdlib docstrings plus words in many scripts, saved as vocab.txt, and read three ways: by
minibert, by the slow `BertTokenizer` (pure Python, the reference) and by `BertTokenizerFast`
(Rust). The drawn texts mix corpus words with accents, CJK, emoji, control and format
characters, odd whitespace, long words (around the 100-character limit), runs of punctuation,
special tokens inside words and in lower case ("[mask]"), and random code points.

minibert must equal the slow tokenizer on every text. The fast one disagrees with the slow one
on a few kinds of text (the fast one does no NFC normalisation, lower-cases character by
character so a final capital sigma becomes "σ" not "ς", and has its own Unicode tables);
minibert follows the slow one there, and the test checks that every disagreement is of those
kinds. Two Hypothesis tests on a vocabulary made for them draw what the slow tokenizer's basic
tokenizer looks at twice: special tokens written with characters that cleaning drops or NFC
composes, and never_split words that match only once lower-cased. The reference tests skip
without `tokenizers` and `transformers` (the parity extra); the hand-made-vocabulary tests run
everywhere.
"""
import hashlib
import json
import os
import random
import subprocess
import sys
import unicodedata
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibert.corpus import stdlib_documents
from minibert.finetune import FinetuneConfig, finetune
from minibert.inference import fill_mask, load_pretrained
from minibert.interop import save_hf
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer
from minibert.train import TrainConfig, pretrain
from minibert.tokenizer_files import load_tokenizer
from minibert.wordpiece import WordPieceTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
N_DRAWN = 2500  # drawn texts per casing

# Fragments the drawn texts are made of (besides corpus words and random code points).
SCRIPTS = ["café", "naïve", "Ünïcödé", "São Paulo", "Zürich", "façade", "Ångström", "ĲSSELMEER", "Øresund",
           "e\u0301", "A\u030a", "o\u0308\u0301", "\u0301", "ΟΔΟΣ", "Σίσυφος", "ΣΑΣ.", "ςσΣ", "Москва", "Ёлка",
           "مرحبا", "שלום", "नमस्ते", "ภาษาไทย", "한국어", "ひらがな", "カタカナ", "中文字符", "日本語", "𠀋", "豈",
           "\u2f00", "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤\ufe0f", "ﬁ", "Ⅻ", "ß", "İstanbul", "ǅ", "Ϊ"]
CONTROLS = ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u200b", "\u200d", "\ufeff", "\ufffd", "\ue000", "\U000e0041",
            "\u2028", "\u2029", "\xa0", "\u3000", "\u2003", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\u180e",
            "\U0001d173", "\U000f0000", "\u0378"]
PUNCT = ["...", "?!?", "--", "'\"", "«»", "¿¡", "—", "…", "$^`+=<>|~", "§¶", "@#%&*", "(", ")", ",", "‚„",
         "・", "。", "、", "！", "«", "\\", "_"]
SPECIAL_TEXT = ["[MASK]", "[SEP]", "[CLS]", "[PAD]", "[UNK]", "[mask]", "[Mask]", "[MASK", "MASK]", "[[MASK]]",
                "##", "##ing", "[ MASK ]"]
NUMBERS = ["3.14", "1,000", "½", "²", "٣", "⁴", "①"]
SEPARATORS = ["", " ", " ", " ", "  ", "\t", "\n"]


def long_word(rng):
    n = rng.choice([99, 100, 101, 102, rng.randrange(90, 130)])
    alphabet = rng.choice(["abcdefghij", "abcdé", "ab" + "e\u0301", "中a"])
    return "".join(rng.choice(alphabet) for _ in range(n))


def random_codepoint(rng):
    hi = rng.choice([0x80, 0x800, 0x3400, 0x10000, 0x30000, 0x110000])
    return chr(rng.randrange(hi))


def draw_text(rng, words):
    parts = []
    for _ in range(rng.randrange(1, 12)):
        kind = rng.random()
        if kind < 0.35:
            parts.append(rng.choice(words))
        elif kind < 0.5:
            parts.append(rng.choice(SCRIPTS))
        elif kind < 0.6:
            parts.append(rng.choice(CONTROLS))
        elif kind < 0.7:
            parts.append(rng.choice(PUNCT))
        elif kind < 0.8:
            parts.append(rng.choice(SPECIAL_TEXT))
        elif kind < 0.85:
            parts.append(rng.choice(NUMBERS))
        elif kind < 0.9:
            parts.append(long_word(rng))
        else:
            parts.append("".join(random_codepoint(rng) for _ in range(rng.randrange(1, 4))))
        parts.append(rng.choice(SEPARATORS))
    return "".join(parts)


def has_surrogate(text):
    return any(0xD800 <= ord(c) < 0xE000 for c in text)


# ---------------------------------------------------------------------- the reference tokenizers

def slow_class():
    """The slow (pure-Python) BertTokenizer class; skips the test without transformers."""
    transformers = pytest.importorskip("transformers")
    try:   # transformers 5 names the pure-Python one BertTokenizerLegacy; in 4.x it is BertTokenizer
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as Slow
    except ImportError:
        Slow = transformers.BertTokenizer
    return Slow


@pytest.fixture(scope="module")
def training_texts():
    docs = stdlib_documents(packages={"json", "email", "collections", "argparse", "csv"})
    texts = [" ".join(d.sentences) for d in docs]
    rng = random.Random(1)
    texts += [" ".join(rng.choice(SCRIPTS + NUMBERS + PUNCT) for _ in range(20)) for _ in range(300)]
    return texts


@pytest.fixture(scope="module", params=["uncased", "cased"])
def trio(request, training_texts, tmp_path_factory):
    """(minibert, slow HF, fast HF) tokenizers read from one vocab.txt + tokenizer_config.json."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    lower = request.param == "uncased"
    directory = tmp_path_factory.mktemp(request.param)
    trainer = tokenizers.BertWordPieceTokenizer(lowercase=lower)
    trainer.train_from_iterator(training_texts, vocab_size=3000, show_progress=False)
    trainer.save_model(str(directory))
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower}))
    slow = slow_class()(str(directory / "vocab.txt"), do_lower_case=lower)
    fast = transformers.BertTokenizerFast.from_pretrained(str(directory))
    mine = WordPieceTokenizer.load(directory)
    assert mine.do_lower_case == lower
    return mine, slow, fast


@pytest.fixture(scope="module")
def drawn(training_texts):
    rng = random.Random(0)
    words = " ".join(training_texts[:200]).split()
    return [draw_text(rng, words) for _ in range(N_DRAWN)]


def hf_ids(tok, text, **kw):
    return tok.encode(text, add_special_tokens=False, **kw)


@pytest.fixture(scope="module")
def reference(trio, drawn):
    """Ids of the drawn texts from the slow and the fast HF tokenizer (the fast one only for
    texts without lone surrogates, which Rust strings cannot hold)."""
    mine, slow, fast = trio
    return {"slow": [hf_ids(slow, t) for t in drawn],
            "fast": [None if has_surrogate(t) else hf_ids(fast, t) for t in drawn]}


def fast_may_differ(text):
    """Where the fast tokenizer may disagree with the slow one: a text that NFC changes (only
    the slow one normalises), with a capital sigma (str.lower gives a final "ς", the fast
    one "σ"), or with a character that Unicode 3.2 did not assign (unassigned or new
    characters: the two read different Unicode tables)."""
    return (unicodedata.normalize("NFC", text) != text or "Σ" in text
            or any(unicodedata.ucd_3_2_0.category(c) == "Cn" for c in text))


def test_ids_equal_slow_bert_tokenizer_on_drawn_texts(trio, drawn, reference):
    mine, slow, fast = trio
    bad = [(t, ref, mine.encode(t)) for t, ref in zip(drawn, reference["slow"]) if mine.encode(t) != ref]
    assert not bad, f"{len(bad)} of {len(drawn)} texts differ from the slow BertTokenizer; first: {bad[0]!r}"


def test_fast_and_slow_disagree_only_where_explained(trio, drawn, reference):
    """minibert follows the slow tokenizer; the fast one agrees with both on the other texts."""
    mine, slow, fast = trio
    pairs = [(t, s, f) for t, s, f in zip(drawn, reference["slow"], reference["fast"]) if f is not None]
    differ = [t for t, s, f in pairs if s != f]
    unexplained = [t for t in differ if not fast_may_differ(t)]
    assert not unexplained, f"fast and slow HF disagree on {unexplained[0]!r}"
    # cased, about a fifth differ: 496 of 2,486 texts with Python 3.11 and transformers 5.24, 502 of
    # 2,487 with Python 3.12 and transformers 5.17 (the drawn texts come from the stdlib's docstrings)
    assert len(differ) < len(pairs) // 4, "the fast tokenizer disagrees on too many texts to be the same scheme"
    assert all(mine.encode(t) == f for t, s, f in pairs if s == f)


def test_special_tokens_split_like_slow(trio):
    mine, slow, fast = trio
    for text in ["wo[MASK]rd", "a[SEP]b[CLS]", "[mask] [Mask] [MASK]", "x[[MASK]]y", "[UNK][PAD]", "ΟΔΟΣ[MASK]"]:
        assert mine.encode(text) == hf_ids(slow, text), text
        # "none" equals the fast tokenizer's split_special_tokens (the slow one still keeps a
        # space-separated "[MASK]" whole then: its basic tokenizer's never_split)
        if "Σ" not in text:   # the fast one has no final sigma
            assert mine.encode(text, allowed_special="none") == hf_ids(fast, text, split_special_tokens=True), text
    mask = mine.token_to_id("[MASK]")
    assert mine.encode("wo[MASK]rd").count(mask) == 1
    assert mask not in mine.encode("[mask]")            # matching is exact, as in HF
    assert mask not in mine.encode("[MASK]", allowed_special="none")
    assert mine.encode("a [MASK] [SEP]", allowed_special={"[MASK]"}) == \
        mine.encode("a [MASK]") + mine.encode("[SEP]", allowed_special="none")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40))
def test_hypothesis_text_equals_slow(trio, text):
    mine, slow, _ = trio
    assert mine.encode(text) == hf_ids(slow, text)


def test_decode_equals_slow(trio, drawn, reference):
    mine, slow, _ = trio
    for ids in reference["slow"][:500]:
        assert mine.decode(ids) == slow.decode(ids, clean_up_tokenization_spaces=True)
        assert mine.decode(ids, clean_up_tokenization_spaces=False) == \
            slow.decode(ids, clean_up_tokenization_spaces=False)
        assert mine.decode(ids, skip_special_tokens=True) == \
            slow.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)


def test_options_and_files_round_trip(trio, tmp_path):
    mine, slow, fast = trio
    texts = ["Héllo, WÖRLD! 中文 [MASK] naïve", "ΟΔΟΣ e\u0301 ﬁne"]
    # the directory form is what HF reads
    mine.save(tmp_path / "hf")
    transformers = pytest.importorskip("transformers")
    reread = transformers.BertTokenizerFast.from_pretrained(str(tmp_path / "hf"))
    assert [hf_ids(reread, t) for t in texts] == [hf_ids(fast, t) for t in texts]
    # the one-file JSON, what a run directory holds
    mine.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(again, WordPieceTokenizer) and again.fingerprint() == mine.fingerprint()
    assert [again.encode(t) for t in texts] == [mine.encode(t) for t in texts]
    # a Hugging Face tokenizer.json (what transformers 5 save_pretrained writes, without vocab.txt)
    fast.save_pretrained(str(tmp_path / "fast"))
    from_hf = load_tokenizer(tmp_path / "fast" / "tokenizer.json")
    assert from_hf.vocab == mine.vocab and from_hf.do_lower_case == mine.do_lower_case
    assert [from_hf.encode(t) for t in texts] == [mine.encode(t) for t in texts]


def test_strip_accents_option_equals_slow(training_texts, tmp_path):
    """strip_accents=False with lower-casing keeps accents; True without lower-casing strips them."""
    tokenizers = pytest.importorskip("tokenizers")
    Slow = slow_class()
    trainer = tokenizers.BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    trainer.train_from_iterator(training_texts[:200] + SCRIPTS * 20, vocab_size=1500, show_progress=False)
    trainer.save_model(str(tmp_path))
    rng = random.Random(2)
    texts = [draw_text(rng, SCRIPTS) for _ in range(300)]
    for lower, strip in [(True, False), (False, True), (True, True), (False, None)]:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower, "strip_accents": strip}))
        mine = WordPieceTokenizer.load(tmp_path / "vocab.txt")
        slow = Slow(str(tmp_path / "vocab.txt"), do_lower_case=lower, strip_accents=strip)
        assert [mine.encode(t) for t in texts] == [hf_ids(slow, t) for t in texts], (lower, strip)


def test_never_split_and_no_chinese_split_equal_slow(trio, tmp_path, drawn):
    mine, slow, _ = trio
    transformers = pytest.importorskip("transformers")
    Slow = type(slow)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(t + "\n" for t in mine.vocab), encoding="utf-8")
    options = {"do_lower_case": mine.do_lower_case, "never_split": ["ΟΔΟΣ", "Foo", "naïve", "the"],
               "tokenize_chinese_chars": False}
    other = WordPieceTokenizer.from_vocab_file(vocab, options)
    ref = Slow(str(vocab), **options)
    texts = drawn[:400] + ["Foo foo FOO ΟΔΟΣ. ΟΔΟΣ naïve the The 中文字符"]
    assert [other.encode(t) for t in texts] == [hf_ids(ref, t) for t in texts]


# ---------------------------------------------------------------------- specials and never_split, looked for twice
#
# The slow BertTokenizer passes its special tokens to the basic tokenizer as never_split, and the
# basic tokenizer checks never_split on each whitespace token twice: after cleaning, CJK spacing
# and NFC (so "[MA\u200bSK]" and "[MAS\u212a]", Kelvin sign, are "[MASK]" again), and after
# lower-casing and accent stripping (so "FOO!" with never_split ["foo!"] is one word). The
# vocabulary below has specials of its own ("[É]", "<Å>", "<eos>") with characters NFC composes
# and letters lower-casing reaches, and never_split words with punctuation inside.

DISGUISE_SPECIALS = BERT_SPECIALS + ["[É]", "<Å>", "<eos>"]
NEVER_SPLIT = ["foo!", "<end>", "naïve.", "naive.", "Bar?", "[x]"]
# what cleaning drops: category C* (control, format, private use, unassigned, surrogate) and U+FFFD
DROPPED = ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u200b", "\u200d", "\ufeff", "\ufffd", "\ue000", "\U000e0041",
           "\U000f0000", "\u0378", "\U0001d173", "\ud800"]
NFC_TWINS = {"K": ["\u212a"], "Å": ["\u212b", "A\u030a"], "É": ["E\u0301"], "é": ["e\u0301"], "å": ["a\u030a"]}
CONTEXT = ["", " ", "  ", "\t", "\n", "a ", " b", "!", "x", "é ", " [MASK] ", "\u200b", " foo! "]


@pytest.fixture(scope="module")
def disguise_vocab(tmp_path_factory):
    letters = "abcdefghijklmnopqrstuvwxyzéåïABEFKMNOSX"
    words = ["foo!", "<end>", "[", "]", "<", ">", "!", ".", "?", "mask", "foo", "end", "bar", "eos"]
    vocab = DISGUISE_SPECIALS + words + list(letters) + ["##" + c for c in letters]
    path = tmp_path_factory.mktemp("disguise") / "vocab.txt"
    path.write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=[(True, None), (False, None), (False, True), (True, False)],
                ids=["uncased", "cased", "cased-strip", "uncased-keep-accents"])
def disguise_pair(request, disguise_vocab):
    """(minibert, slow HF) on the vocabulary above, with its specials and never_split."""
    lower, strip = request.param
    options = dict(do_lower_case=lower, strip_accents=strip, never_split=NEVER_SPLIT)
    slow = slow_class()(str(disguise_vocab), additional_special_tokens=DISGUISE_SPECIALS[5:], **options)
    assert set(slow.all_special_tokens) == set(DISGUISE_SPECIALS)
    vocab = disguise_vocab.read_text(encoding="utf-8").splitlines()
    return WordPieceTokenizer(vocab, special_tokens=DISGUISE_SPECIALS, **options), slow


@st.composite
def disguised(draw, words):
    """One of `words` with dropped characters inside it, letters written as their NFC twins,
    perhaps in other case, between drawn context."""
    word = draw(st.sampled_from(words))
    out = []
    for c in word:
        out.append(draw(st.sampled_from([c, *NFC_TWINS.get(c, [])])))
        out += draw(st.lists(st.sampled_from(DROPPED), max_size=2))
    text = "".join(out)
    text = draw(st.sampled_from([text, text.upper(), text.lower(), text.title()]))
    return draw(st.sampled_from(CONTEXT)) + text + draw(st.sampled_from(CONTEXT))


def check_cached_equals_cold(tok, texts, mode):
    """encode twice, around encodes with the other modes, and once more from a cold cache: the same ids."""
    first = [tok.encode(t, allowed_special=mode) for t in texts]
    for other in ("all", "none", {"[MASK]"}):
        [tok.encode(t, allowed_special=other) for t in texts]
    assert [tok.encode(t, allowed_special=mode) for t in texts] == first
    tok.clear_cache()
    assert [tok.encode(t, allowed_special=mode) for t in texts] == first
    return first


@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_hypothesis_special_token_after_cleaning_and_nfc_equals_slow(disguise_pair, data):
    mine, slow = disguise_pair
    texts = [data.draw(disguised(DISGUISE_SPECIALS)) for _ in range(3)]
    texts.append("".join(texts))
    assert check_cached_equals_cold(mine, texts, "all") == [hf_ids(slow, t) for t in texts]
    # "none" (the fast tokenizer's split_special_tokens) recognises no special token, not even here:
    # the same ids as a tokenizer that has none
    plain = WordPieceTokenizer(mine.vocab, special_tokens=[], do_lower_case=mine.do_lower_case,
                               strip_accents=mine.strip_accents, never_split=mine.never_split)
    assert check_cached_equals_cold(mine, texts, "none") == [plain.encode(t) for t in texts]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_hypothesis_never_split_after_lower_casing_equals_slow(disguise_pair, data):
    mine, slow = disguise_pair
    texts = [data.draw(disguised(NEVER_SPLIT + ["foo", "end"])) for _ in range(3)]
    texts.append(" ".join(texts))
    assert check_cached_equals_cold(mine, texts, "all") == [hf_ids(slow, t) for t in texts]


def test_disguised_special_tokens_and_never_split_examples(disguise_pair):
    """The cases the two tests above are drawn for, spelled out, against the slow tokenizer."""
    mine, slow = disguise_pair
    mask, e_special = mine.token_to_id("[MASK]"), mine.token_to_id("[É]")
    assert mine.encode("a [MA\u200bSK] b")[1:-1] == [mask]           # a format character inside
    assert mine.encode("[MAS\u212a]") == [mask]                        # Kelvin sign: NFC makes it K
    assert mine.encode("[E\u0301]") == [e_special]                     # E + acute: NFC makes it É
    assert mask not in mine.encode("x[MA\x00SK]")                      # not a whole token: split as text
    assert mask not in mine.encode("[MA\u200bSK]", allowed_special="none")
    if mine.do_lower_case:
        assert mine.encode("<EOS>") == [mine.token_to_id("<eos>")]     # lower-cased, then a special token
        assert mine.encode("FOO!") == [mine.token_to_id("foo!")]       # lower-cased, then never_split: one word
    for text in ["a [MA\u200bSK] b", "[MAS\u212a]", "[E\u0301]", "x[MA\x00SK]", "<EOS>", "FOO!", "Bar? BAR?",
                 "NAÏVE. Naïve.", "<END>", "[X]"]:
        assert mine.encode(text) == hf_ids(slow, text), text


# ---------------------------------------------------------------------- a hand-made vocabulary (no HF needed)

@pytest.fixture
def small():
    vocab = BERT_SPECIALS + ["un", "##aff", "##able", "a", "##a", "aff", "the", "##s", "cafe", ",", ".", "!", "[", "]",
                             "mask", "中", "##é", "é"]
    return WordPieceTokenizer(vocab)


def test_greedy_longest_match_first(small):
    assert small.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert small.tokenize("UnAffable, the CAFÉ!") == ["un", "##aff", "##able", ",", "the", "cafe", "!"]
    assert small.tokenize("unx") == ["[UNK]"]              # "un" then nothing continues: the whole word
    assert small.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert small.tokenize("a" * 101) == ["[UNK]"]          # longer than max_input_chars_per_word
    assert small.tokenize("中中") == ["中", "中"]            # each ideograph is a word
    assert small.tokenize("x\x00\u200b") == ["[UNK]"]        # controls and format characters dropped
    assert small.tokenize("a[MASK]a [mask]") == ["a", "[MASK]", "a", "[", "mask", "]"]


def test_special_tokens_and_surface(small):
    for s in SPECIAL_TOKENS:
        assert small.id_to_token(small.token_to_id(s)) == s
    assert small.special_tokens == {s: i for i, s in enumerate(BERT_SPECIALS)}
    assert small.vocab_size == 23
    assert small.encode_batch(["unaffable", "the"]) == [small.encode("unaffable"), small.encode("the")]
    assert small.decode(small.encode("unaffable the cafe .")) == "unaffable the cafe."
    with pytest.raises(KeyError):
        small.token_to_id("nope")
    with pytest.raises(ValueError):
        small.decode([99])


def test_specials_and_never_split_are_looked_for_again_after_cleaning_and_lower_casing(small):
    # a special token with a character inside that cleaning drops, or that NFC makes a letter
    for text in ["[MA\u200bSK]", "[\x00MASK]", "[MAS\u212a]", "[MASK\ufeff]"]:
        assert small.tokenize(text) == ["[MASK]"], text
        # the same text with no special token allowed: ordinary text, whatever the cache holds
        assert small.tokenize(text, allowed_special="none") == ["[", "mask", "]"], text
        assert small.tokenize(text, allowed_special={"[SEP]"}) == ["[", "mask", "]"], text
        assert small.tokenize(text) == ["[MASK]"], text
    assert small.tokenize("a[MA\u200bSK]") == ["a", "[", "mask", "]"]   # only a whole token is one
    # never_split after lower-casing: "CAFE!" is the never_split word "cafe!", which is not in the vocabulary
    tok = WordPieceTokenizer(small.vocab, never_split=["cafe!"])
    assert tok.tokenize("CAFE! Café! cafe !") == ["[UNK]", "[UNK]", "cafe", "!"]
    assert small.tokenize("CAFE!") == ["cafe", "!"]


def test_cased_keeps_accents_and_case():
    tok = WordPieceTokenizer(BERT_SPECIALS + ["Café", "caf", "##é", "e"], do_lower_case=False)
    assert tok.tokenize("Café café") == ["Café", "caf", "##é"]
    assert tok.tokenize("Cafe\u0301") == ["Café"]            # NFC first: e + U+0301 is é
    stripped = WordPieceTokenizer(BERT_SPECIALS + ["Cafe"], do_lower_case=False, strip_accents=True)
    assert stripped.tokenize("Café") == ["Cafe"]


def test_fingerprint_and_load_tokenizer_picks_the_kind(small, tmp_path):
    small.save(tmp_path / "wp.json")
    assert load_tokenizer(tmp_path / "wp.json").fingerprint() == small.fingerprint()
    small.save(tmp_path / "dir")
    assert load_tokenizer(tmp_path / "dir").fingerprint() == small.fingerprint()
    assert load_tokenizer(tmp_path / "dir" / "vocab.txt").fingerprint() == small.fingerprint()
    cased = WordPieceTokenizer(small.vocab, do_lower_case=False)
    assert cased.fingerprint() != small.fingerprint()
    bpe = BPETokenizer.train_from_iterator(["hello world"] * 3, 270, special_tokens=SPECIAL_TOKENS, progress=False)
    bpe.save(tmp_path / "bpe.json")
    assert isinstance(load_tokenizer(tmp_path / "bpe.json"), BPETokenizer)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="unknown token"):
        WordPieceTokenizer(["a", "b"])



def test_saved_bytes_and_fingerprint_do_not_change(small, tmp_path):
    """Run directories store the tokenizer's fingerprint, so the one-file JSON must never change
    (never_split, a list, stays on one line; the vocabulary has one entry a line): these are the
    values the code gave before both tokenizers shared vocab.Vocabulary's writer (commit 8a706ba)."""
    tok = WordPieceTokenizer(small.vocab, never_split=["the", "a!"])
    tok.save(tmp_path / "wp.json")
    saved = (tmp_path / "wp.json").read_bytes()
    assert hashlib.sha256(saved).hexdigest() == "0ce959a9b2ab559b617934308bb218b9e2e929a7169c15c21e32748cac80909a"
    assert tok.fingerprint() == hashlib.sha256(saved[:-1]).hexdigest()[:16] == "782c20efe765c98e"
    assert small.fingerprint() == "7a8359b75ac82bad"

# ---------------------------------------------------------------------- the programs take a vocab.txt

SMALL = dict(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, max_position=64)


def write_corpus_and_vocab(directory):
    """A corpus of short sentences (BERT's format) and a vocab.txt made by hand for it: the
    specials, every word, every letter and its "##" twin (so nothing is [UNK])."""
    rng = random.Random(0)
    subjects, verbs = ["The parser", "A socket", "The queue", "This function"], ["reads", "writes", "closes", "yields"]
    objects = ["the next item", "a byte string", "the buffer", "a new list"]
    lines = []
    for _ in range(80):
        lines += [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(rng.randrange(2, 6))]
        lines.append("")
    (directory / "corpus.txt").write_text("\n".join(lines) + "\n")
    words = sorted({w for line in lines for w in line.lower().replace(".", " .").split()})
    letters = sorted(set("".join(words)))
    vocab = BERT_SPECIALS + words + [c for c in letters if c not in words] + ["##" + c for c in letters]
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    return str(directory / "corpus.txt"), str(directory / "vocab.txt")


def test_pretrain_fill_mask_and_finetune_take_a_vocab_txt(tmp_path):
    corpus, vocab = write_corpus_and_vocab(tmp_path)
    out = tmp_path / "run"
    tc = TrainConfig(corpus=[corpus], out=str(out), tokenizer=vocab, steps=8, batch_size=8, seq_len=32,
                     max_predictions=5, warmup=2, lr=3e-3, log_every=4, eval_every=8, save_every=8, eval_batches=2,
                     fill_mask_examples=0)
    model, tok, ev, _ = pretrain(tc, dict(SMALL))
    assert isinstance(tok, WordPieceTokenizer) and np.isfinite(ev["mlm_loss"])
    assert json.loads((out / "tokenizer.json").read_text())["format"] == "minibert-wordpiece"
    m, t = load_pretrained(str(out))          # the run reloads with its tokenizer, fingerprint checked
    assert t.fingerprint() == WordPieceTokenizer.load(vocab).fingerprint()
    (top,) = fill_mask(m, t, "The parser [MASK] the buffer.", top_k=3)
    assert len(top) == 3 and all(isinstance(w, str) and 0 <= p <= 1 for w, p in top)
    # fine-tuning from the run, and from a Hugging Face directory that carries its vocab.txt: the
    # verb is the label, and the held-out rows are 70% "writes", so a model that has not learned
    # to read the verb scores at most the majority's 0.7. (40 epochs of 3 steps take about a
    # second; 3 pretraining seeds x 8 fine-tuning seeds all scored 1.0.)
    train_rows, val_rows = sentence_rows(["reads", "writes"] * 12, 1), sentence_rows(["writes"] * 14 + ["reads"] * 6, 2)
    for name, rows in (("train", train_rows), ("val", val_rows)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    majority = max(Counter(r["label"] for r in val_rows).values()) / len(val_rows)
    ft = dict(train=str(tmp_path / "train.jsonl"), validation=str(tmp_path / "val.jsonl"), epochs=40, lr=1e-2,
              batch_size=8, max_length=16, log_every=1000)
    _, tok_ft, res = finetune(FinetuneConfig(init=str(out), out=str(tmp_path / "ft"), **ft))
    assert isinstance(tok_ft, WordPieceTokenizer) and res["validation_examples"] == len(val_rows)
    assert res["acc"] >= majority + 0.2, (res["acc"], majority)
    hf_dir = tmp_path / "hf"
    save_hf(m, str(hf_dir))
    t.save(hf_dir)                            # vocab.txt + tokenizer_config.json beside config.json
    _, tok_hf, res_hf = finetune(FinetuneConfig(init=str(hf_dir), hf=True, out=str(tmp_path / "ft_hf"), **ft))
    assert tok_hf.fingerprint() == t.fingerprint()
    assert res_hf["acc"] >= majority + 0.2, (res_hf["acc"], majority)


def sentence_rows(labels, seed):
    """A classification row per label: a sentence of the corpus's words whose verb is the label."""
    rng = random.Random(seed)
    subjects = ["the parser", "a socket", "the queue", "this function"]
    objects = ["the next item", "a byte string", "the buffer", "a new list"]
    return [{"text": f"{rng.choice(subjects)} {w} {rng.choice(objects)}", "label": w} for w in labels]


def test_pretrain_script_takes_tokenizer_vocab_txt(tmp_path):
    corpus, vocab = write_corpus_and_vocab(tmp_path)
    out = tmp_path / "run"
    args = [sys.executable, os.path.join(ROOT, "scripts", "pretrain.py"), "--corpus", corpus, "--out", str(out),
            "--tokenizer", vocab, "--steps", "2", "--seq-len", "32", "--batch-size", "4", "--max-predictions", "5",
            "--warmup", "1", "--log-every", "1", "--eval-every", "1000", "--eval-batches", "1",
            "--fill-mask-examples", "0", "--backend", "numpy", "--num-layers", "1", "--hidden-size", "32",
            "--num-heads", "2", "--intermediate-size", "64", "--max-position", "64"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert isinstance(load_tokenizer(out / "tokenizer.json"), WordPieceTokenizer)
