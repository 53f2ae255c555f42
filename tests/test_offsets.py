"""encode_with_offsets on both tokenizers: the ids of encode, and each id's (start, end)
characters of the text equal to Hugging Face `tokenizers`' offset_mapping on the same files.

References (skip cleanly without `tokenizers`, or without ../shared/fixtures for GPT-2's files):
  - byte-level BPE: a `tokenizers.Tokenizer` with the same vocab and merges, the ByteLevel
    pre-tokenizer (add_prefix_space False) and no post-processor, which is what transformers'
    GPT-2 fast tokenizer runs (its TemplateProcessing trims nothing: " hello" spans (0, 6));
    checked against `GPT2TokenizerFast` itself when transformers is installed;
  - WordPiece: `tokenizers.BertWordPieceTokenizer` (BertNormalizer, BertPreTokenizer, WordPiece:
    what BertTokenizerFast runs, checked against it when transformers is installed) on one
    vocab.txt, with four lower-casing / accent-stripping settings, without [CLS]/[SEP].
    minibert's ids are the slow BertTokenizer's; where the fast tokenizer's ids differ (it does
    no NFC, lower-cases without final sigma, has its own Unicode tables: tests/test_wordpiece.py)
    its offsets are for other tokens, so offsets are compared only on texts whose ids agree,
    and the share of such texts is checked.
The drawn texts mix words with accents (precomposed and combining), combining marks alone and
reordered, CJK, emoji, control and format characters, whitespace runs and special tokens.
The rest needs no reference: worked examples, and the alignment helpers of minibert/offsets.py
against `unicodedata`.
"""
import json
import random
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from minibert.offsets import aligned, byte_spans, lower, nfc, nfd, nfd_as_tokenizers, text_of
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer
from minibert.wordpiece import WordPieceTokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
GPT2 = FIXTURES / "gpt2"
WP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

WORDS = ["the", "quick", "Brown", "FOX", "unaffable", "jumps", "over", "it's", "don't", "3.14", "1,000", "hello",
         "World", "running", "played", "tokenizer", "x", "a"]
ACCENTED = ["café", "CAFÉ", "cafe\u0301", "naïve", "Ångström", "\u212bngstrom", "A\u030angstrom", "São", "Zürich",
            "ΟΔΟΣ", "Σίσυφος", "İstanbul", "ǅemal", "ﬁne", "straße", "e\u0301\u0323", "q\u0323\u0301", "ạ\u0302",
            "x\u00e9\U0001d165b", "a\u0301\U0001d165", "\u0344x", "\u0f73", "가\u11a8", "\u1100\u1161"]
MARKS = ["\u0301", "\u0308", "\u0323", "\u0307", "\U0001d165", "\u0345"]
CJK = ["中文", "字符", "日本語", "豈", "𠀋", "한국어", "ひらがな"]
EMOJI = ["😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤\ufe0f", "🧿"]
CONTROLS = ["\x00", "\x07", "\x7f", "\x85", "\u200b", "\u200d", "\ufeff", "\ufffd", "\ue000", "\u0378", "\u00ad"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \t ", "\xa0", "\u3000", "\u2028", "\u2000"]
PUNCT = [".", ",", "!", "?", "...", "'", "\"", "(", ")", "—", "«»", "$^`", "-", "。", "、"]
SPECIAL_TEXT = ["[MASK]", "[SEP]", "[CLS]", "[PAD]", "[UNK]", "<|endoftext|>", "[mask]", "wo[MASK]rd", "[MA\u200bSK]",
                "[[MASK]]"]
KINDS = [WORDS, ACCENTED, MARKS, CJK, EMOJI, CONTROLS, SPACES, PUNCT, SPECIAL_TEXT]

fragment = st.one_of(*[st.sampled_from(k) for k in KINDS], st.characters(blacklist_categories=("Cs",)))
drawn_text = st.lists(st.tuples(fragment, st.sampled_from(["", "", " ", "  ", "\n"])), max_size=10).map(
    lambda parts: "".join(a + b for a, b in parts))


def draw_texts(n, seed):
    """n texts from the same fragments, for the tests that count how many texts were compared."""
    rng = random.Random(seed)
    return ["".join(rng.choice(rng.choice(KINDS)) + rng.choice(["", " ", "  ", "\n"]) for _ in range(rng.randrange(1, 10)))
            for _ in range(n)]


def import_or_skip(name):
    try:
        return __import__(name)
    except ImportError as e:
        pytest.skip(f"{name} not available: {e}")


def check_spans(text, ids, offsets):
    """What holds for any tokenizer: one span per id, inside the text, in order."""
    assert len(offsets) == len(ids)
    assert all(0 <= s <= e <= len(text) for s, e in offsets)
    assert [s for s, _ in offsets] == sorted(s for s, _ in offsets)


# ---------------------------------------------------------------------- byte-level BPE

@pytest.fixture(scope="module")
def small_bpe():
    corpus = [" ".join(random.Random(i).choice(k) for k in KINDS for _ in range(3)) for i in range(300)]
    return BPETokenizer.train_from_iterator(corpus, 256 + 4 + 300, special_tokens=SPECIAL_TOKENS, progress=False)


@pytest.fixture(scope="module")
def gpt2_bpe():
    if not (GPT2 / "vocab.json").is_file():
        pytest.skip("../shared/fixtures/gpt2 absent")
    return BPETokenizer.from_gpt2_files(GPT2 / "vocab.json", GPT2 / "merges.txt")


def hf_byte_level(tok, directory):
    """The `tokenizers` pipeline transformers' GPT-2 fast tokenizer runs, on tok's files."""
    tokenizers = import_or_skip("tokenizers")
    vocab_path, merges_path = tok.save_gpt2_files(directory)
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(vocab_path), str(merges_path)))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.add_special_tokens(list(tok.special_tokens))
    return hf


@pytest.fixture(scope="module", params=["small", "gpt2"])
def bpe_pair(request, tmp_path_factory):
    tok = request.getfixturevalue("small_bpe" if request.param == "small" else "gpt2_bpe")
    return tok, hf_byte_level(tok, tmp_path_factory.mktemp("bpe"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=drawn_text)
def test_bpe_offsets_equal_tokenizers(bpe_pair, text):
    tok, hf = bpe_pair
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    check_spans(text, ids, offsets)
    e = hf.encode(text)
    if e.ids == ids:   # the pre-token regex's Unicode tables may differ (Rust's vs the regex module's)
        assert offsets == e.offsets


def test_bpe_ids_agree_with_tokenizers_on_most_texts(bpe_pair):
    tok, hf = bpe_pair
    texts = draw_texts(500, 0)
    agree = [t for t in texts if hf.encode(t).ids == tok.encode(t)]
    assert len(agree) > 0.95 * len(texts)
    assert all(tok.encode_with_offsets(t)[1] == hf.encode(t).offsets for t in agree)


def test_bpe_equals_gpt2_fast_tokenizer(gpt2_bpe, tmp_path):
    transformers = import_or_skip("transformers")
    vocab = json.loads((GPT2 / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in (GPT2 / "merges.txt").read_text(encoding="utf-8").split("\n")
              if line and not line.startswith("#version")]
    fast = transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)
    for text in [" hello  world", "a 😀b", "xéé 中文", "  \n\n  x<|endoftext|> y", "🙂👍🏽", "\t\t x", "it's"] + draw_texts(50, 1):
        got = fast(text, return_offsets_mapping=True)
        assert gpt2_bpe.encode_with_offsets(text) == (got["input_ids"], [tuple(o) for o in got["offset_mapping"]])


def test_bpe_worked_examples(small_bpe, gpt2_bpe):
    # plain ASCII: each span is its token's text; a leading space belongs to the token (GPT-2's "Ġ")
    for tok in (small_bpe, gpt2_bpe):
        text = "The quick brown fox, jumps!  over\n\nthe dog's 12345 [MASK] [SEP]x"
        ids, offsets = tok.encode_with_offsets(text)
        assert [text[s:e] for s, e in offsets] == [tok.decode([i]) for i in ids]
        assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
        assert all(e == s for (_, e), (s, _) in zip(offsets, offsets[1:]))   # contiguous, nothing dropped
    # GPT-2 cuts "😀" (4 bytes) after its third byte: both tokens span the whole character
    ids, offsets = gpt2_bpe.encode_with_offsets("a 😀b")
    assert offsets == [(0, 1), (1, 3), (2, 3), (3, 4)]
    assert gpt2_bpe.decode_bytes(ids[1:3]) == " 😀".encode()
    ids, offsets = gpt2_bpe.encode_with_offsets("x<|endoftext|> y")
    assert offsets == [(0, 1), (1, 14), (14, 16)] and ids[1] == 50256
    ids, offsets = gpt2_bpe.encode_with_offsets("x<|endoftext|>", allowed_special="none")
    assert 50256 not in ids and offsets[-1][1] == len("x<|endoftext|>")


@settings(max_examples=200, deadline=None)
@given(text=drawn_text)
def test_bpe_spans_cover_each_tokens_bytes(small_bpe, text):
    """Without a reference: the spans tile the text, a token sharing at most the character its
    neighbour ends in (a character cut between tokens), and a token that shares no character
    holds exactly the UTF-8 of the characters it spans."""
    ids, offsets = small_bpe.encode_with_offsets(text)
    check_spans(text, ids, offsets)
    assert all(s in (e_prev, e_prev - 1) for (_, e_prev), (s, _) in zip(offsets, offsets[1:]))
    if offsets:
        assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
    for i, (s, e) in enumerate(offsets):
        if (i == 0 or offsets[i - 1][1] <= s) and (i + 1 == len(offsets) or offsets[i + 1][0] >= e):
            assert small_bpe.decode_bytes([ids[i]]) == text[s:e].encode("utf-8")


def test_byte_spans():
    assert byte_spans("aé😀", 10, [1, 2, 1, 3]) == [(10, 11), (11, 12), (12, 13), (12, 13)]
    assert byte_spans("abc", 0, [3]) == [(0, 3)]


def test_surrogate_and_type_errors(small_bpe):
    with pytest.raises(ValueError, match="surrogate"):
        small_bpe.encode_with_offsets("ab\ud800")
    with pytest.raises(TypeError):
        small_bpe.encode_with_offsets(b"bytes")
    with pytest.raises(ValueError):
        small_bpe.encode_with_offsets("x", allowed_special="some")


# ---------------------------------------------------------------------- WordPiece

WP_SETTINGS = [(True, None), (False, None), (False, True), (True, False)]


@pytest.fixture(scope="module")
def wp_vocab(tmp_path_factory):
    """A vocab.txt trained with `tokenizers` (cased, accents kept) on the drawn fragments."""
    tokenizers = import_or_skip("tokenizers")
    directory = tmp_path_factory.mktemp("wp")
    trainer = tokenizers.BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    texts = draw_texts(2000, 2)
    trainer.train_from_iterator(texts + [t.lower() for t in texts] + [unicodedata.normalize("NFD", t) for t in texts],
                                vocab_size=1200, show_progress=False)
    trainer.save_model(str(directory))
    return directory / "vocab.txt"


@pytest.fixture(scope="module", params=WP_SETTINGS, ids=["uncased", "cased", "cased-strip", "uncased-keep-accents"])
def wp_pair(request, wp_vocab):
    tokenizers = import_or_skip("tokenizers")
    lower_case, strip = request.param
    hf = tokenizers.BertWordPieceTokenizer(str(wp_vocab), lowercase=lower_case, strip_accents=strip)
    vocab = wp_vocab.read_text(encoding="utf-8").splitlines()
    return WordPieceTokenizer(vocab, do_lower_case=lower_case, strip_accents=strip), hf


def hf_inner(hf, text):
    e = hf.encode(text, add_special_tokens=False)
    return e.ids, e.offsets


def assert_offsets_equal(mine, text, ids, offsets, hf_offsets):
    """Offsets equal where the ids do. One exception: the fast tokenizer's Unicode tables are
    older than Python's (it keeps unassigned characters, which the slow one's cleaning drops, and
    does not know newer combining marks, which accent stripping drops), so on a text with a
    character that Unicode 3.2 did not assign its [UNK] may cover other characters with the
    same ids; there only the other tokens are compared."""
    if any(unicodedata.ucd_3_2_0.category(c) == "Cn" for c in text):
        unk = mine.token_to_id("[UNK]")
        offsets, hf_offsets = [[o for i, o in zip(ids, offs) if i != unk] for offs in (offsets, hf_offsets)]
    assert offsets == hf_offsets


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=drawn_text)
def test_wordpiece_offsets_equal_tokenizers_where_ids_agree(wp_pair, text):
    mine, hf = wp_pair
    ids, offsets = mine.encode_with_offsets(text)
    assert ids == mine.encode(text)
    check_spans(text, ids, offsets)
    hf_ids, hf_offsets = hf_inner(hf, text)
    if hf_ids == ids:   # else the fast tokenizer made other tokens (no NFC, no final sigma, other tables)
        assert_offsets_equal(mine, text, ids, offsets, hf_offsets)


def test_wordpiece_ids_agree_on_most_texts(wp_pair):
    """Most drawn texts have the fast tokenizer's ids, so the comparison above means something."""
    mine, hf = wp_pair
    texts = draw_texts(500, 3)
    agree = [t for t in texts if hf_inner(hf, t)[0] == mine.encode(t)]
    assert len(agree) > 0.6 * len(texts), len(agree)
    for t in agree:
        assert_offsets_equal(mine, t, *mine.encode_with_offsets(t), hf_inner(hf, t)[1])
    normalised = [t for t in agree if unicodedata.normalize("NFC", t) != t or any(c in t for c in CONTROLS)]
    assert len(normalised) > 50   # texts that NFC or cleaning change are among those compared


def test_wordpiece_equals_bert_fast_tokenizer(wp_vocab, tmp_path):
    transformers = import_or_skip("transformers")
    tokenizers = import_or_skip("tokenizers")
    (tmp_path / "vocab.txt").write_bytes(wp_vocab.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    fast = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    hf = tokenizers.BertWordPieceTokenizer(str(wp_vocab), lowercase=True)
    for text in ["Café [MASK] naïve", "ΟΔΟΣ 中文 x\u200by"] + draw_texts(100, 4):
        got = fast(text, return_offsets_mapping=True, add_special_tokens=False)
        assert (got["input_ids"], [tuple(o) for o in got["offset_mapping"]]) == hf_inner(hf, text)


@settings(max_examples=100, deadline=None)
@given(text=drawn_text, mode=st.sampled_from(["all", "none", frozenset({"[MASK]"})]))
def test_ids_equal_encode_in_every_mode(wp_pair, small_bpe, text, mode):
    for tok in (wp_pair[0], small_bpe):
        ids, offsets = tok.encode_with_offsets(text, allowed_special=mode)
        assert ids == tok.encode(text, allowed_special=mode)
        check_spans(text, ids, offsets)


# A hand-made vocabulary: the worked examples need no reference.
HAND_VOCAB = WP_SPECIALS + ["un", "##aff", "##able", "cafe", "café", "naive", "the", "i", "##stanbul", "οδος", "οδοσ",
                            "中", "文", "x", "##y", "!", ",", "[", "]", "mask", "ab", "##c", "a", "##b"]


@pytest.mark.parametrize("lower_case", [True, False])
def test_wordpiece_worked_examples(lower_case):
    tok = WordPieceTokenizer(HAND_VOCAB, do_lower_case=lower_case)

    def pieces(text, **kw):
        ids, offsets = tok.encode_with_offsets(text, **kw)
        assert ids == tok.encode(text, **kw)
        return [(tok.id_to_token(i), text[s:e]) for i, (s, e) in zip(ids, offsets)]

    # "##" pieces are contiguous inside their word
    assert pieces(" unaffable, x") == [("un", "un"), ("##aff", "aff"), ("##able", "able"), (",", ","), ("x", "x")]
    # a special token spans its string, even inside a word; with "none" it is ordinary text
    assert pieces("un[MASK]x") == [("un", "un"), ("[MASK]", "[MASK]"), ("x", "x")]
    mask_word = "mask" if lower_case else "[UNK]"
    assert pieces("[MASK]", allowed_special="none") == [("[", "["), (mask_word, "MASK"), ("]", "]")]
    # dropped characters are skipped (a zero-width space inside a word), CJK ideographs are words
    assert pieces("a\u200bb \u200bx\u200b 中文") == [("ab", "a\u200bb"), ("x", "x"), ("中", "中"), ("文", "文")]
    if lower_case:
        # spans point into the original text: the upper-case and accented letters are there
        assert pieces("CAFÉ  Naïve") == [("cafe", "CAFÉ"), ("naive", "Naïve")]
        # a combining accent after the word is stripped with its own character, as in tokenizers
        assert pieces("cafe\u0301!") == [("cafe", "cafe"), ("!", "!")]
        # "İ" lower-cases to two characters, both from "İ"; a final capital sigma still spans one
        assert pieces("İstanbul ΟΔΟΣ") == [("i", "İ"), ("##stanbul", "stanbul"), ("οδος", "ΟΔΟΣ")]
    else:
        # no accent stripping: NFC composes "e" + U+0301, and the composed "é" spans both
        assert pieces("cafe\u0301") == [("café", "cafe\u0301")]
        assert pieces("Café") == [("[UNK]", "Café")]   # an unknown word spans the whole word


def test_wordpiece_special_tokens_and_never_split_found_after_cleaning():
    tok = WordPieceTokenizer(HAND_VOCAB + ["foo!"], never_split=["foo!"])
    text = "x [MA\u200bSK] FOO! x"   # cleaning makes "[MASK]", lower-casing "foo!": each one word
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert [(tok.id_to_token(i), text[s:e]) for i, (s, e) in zip(ids, offsets)] == \
        [("x", "x"), ("[MASK]", "[MA\u200bSK]"), ("foo!", "FOO!"), ("x", "x")]


def test_wordpiece_without_basic_tokenize():
    tok = WordPieceTokenizer(HAND_VOCAB, do_basic_tokenize=False)
    text = "  unaffable\tab [MASK]ab!"
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert [text[s:e] for s, e in offsets] == ["un", "aff", "able", "ab", "[MASK]", "ab!"]


def test_offsets_leave_the_encode_cache_as_it_was(wp_pair, small_bpe):
    texts = draw_texts(200, 5)
    for tok in (wp_pair[0], small_bpe):
        for mode in ("all", "none"):
            before = [tok.encode(t, allowed_special=mode) for t in texts]
            with_offsets = [tok.encode_with_offsets(t, allowed_special=mode)[0] for t in texts]
            tok.clear_cache()
            assert with_offsets == before == [tok.encode(t, allowed_special=mode) for t in texts]


# ---------------------------------------------------------------------- the alignment helpers

mark_text = st.text(st.sampled_from("aeiouAEKz\u00e9\u212b\u0130\u03a3" + "".join(MARKS) + "\u0344\u0f73\u1100\u1161"
                                    "\u11a8\u0323\u0302 "), max_size=12)


@settings(max_examples=300, deadline=None)
@given(text=mark_text)
def test_alignment_helpers_make_the_unicodedata_strings(text):
    """Each step spells what str/unicodedata make, with sources in range and in order, never
    falling back to the span of the whole input (which would give all characters one source set)."""
    a = aligned(text)
    for step, expected in [(nfd_as_tokenizers(a), unicodedata.normalize("NFD", text)),
                           (nfc(a), unicodedata.normalize("NFC", text)),
                           (nfd(nfc(a)), unicodedata.normalize("NFD", text)),
                           (lower(nfc(a)), unicodedata.normalize("NFC", text).lower())]:
        assert text_of(step) == expected
        assert all(0 <= s < len(text) for _, t in step for s in t)
    # NFD after a composing NFC gives each part the source NFD alone gives it (what accent
    # stripping needs), and the sources stay in order
    if not unicodedata.is_normalized("NFC", text):
        assert nfd(nfc(a)) == nfd_as_tokenizers(a)
    starts = [min(t) for _, t in nfc(a)]
    assert starts == sorted(starts)


@settings(max_examples=200, deadline=None)
@given(text=mark_text)
def test_nfd_alignment_equals_tokenizers(text):
    tokenizers = import_or_skip("tokenizers")
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    hf.normalizer = tokenizers.normalizers.NFD()
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), "isolated")
    assert [(t[0], t[-1] + 1) for _, t in nfd_as_tokenizers(aligned(text))] == hf.encode(text).offsets
