"""The WordPiece tokenizer of BERT (Devlin et al. 2019; Wu et al. 2016, section 4.1), read from
a `vocab.txt`, with the semantics of Hugging Face's slow `BertTokenizer`: the same ids for
every text.

`encode` runs three stages:
  1. special tokens ("[MASK]", "[SEP]", ...) are cut out of the text first, longest first,
     anywhere, even inside a word ("wo[MASK]rd" -> "wo", "[MASK]", "rd"). Matching is exact:
     "[mask]" is ordinary text (three words "[", "mask", "]").
  2. the basic tokenizer turns each remaining part into words:
       a. clean: drop every character of Unicode category C* (control, format, unassigned,
          private use, surrogate) except tab, newline and carriage return, and U+FFFD;
       b. put spaces around CJK ideographs (tokenize_chinese_chars), so each is a word;
       c. NFC-normalise, so "e" + U+0301 and "é" are one character either way;
       d. split on whitespace into tokens. A token that is in never_split or is one of the
          allowed special tokens is kept whole from here on: "[MA\u200bSK]" is "[MASK]" after
          a, and so is "[MAS\u212a]" after c (NFC makes the Kelvin sign a K);
       e. do_lower_case: lower-case, then (unless strip_accents is False) strip accents:
          NFD, then drop the combining marks (category Mn), "Café" -> "cafe". Without
          do_lower_case, strip_accents=True strips accents only. A token that is now in
          never_split or an allowed special token is kept whole ("FOO!" with never_split
          ["foo!"] is the one word "foo!");
       f. split every punctuation character off as its own word: Unicode categories P*,
          plus all ASCII characters that are neither letters, digits nor space ("$", "^",
          "`", "+", ...), which BERT counts as punctuation.
  3. WordPiece: each word is cut greedily into the longest vocabulary entry that starts it,
     then the longest "##"-prefixed entry that continues it, and so on ("unaffable" ->
     "un", "##aff", "##able"). A word with no such segmentation, or longer than
     max_input_chars_per_word (100) characters, becomes one [UNK]. A never_split word is not
     segmented: it is its vocabulary entry, or [UNK]. (A special token kept whole in d or e
     is a vocabulary entry, so WordPiece gives its id.)

These are the steps of Hugging Face's slow BertTokenizer (BertTokenizerLegacy in transformers
5), which passes its special tokens to the basic tokenizer's never_split: the specials are
recognised in the raw text (1) and again in the cleaned and lower-cased tokens (d, e).

`encode` is the one BPETokenizer has too (vocab.Vocabulary.encode, which does stage 1): it
gives the ids of the text only, and the programs add [CLS] and [SEP] themselves
(task_data.encode_example builds pairs with token types; inference adds them for fill-mask),
so both tokenizers are used alike.

Where the slow and fast Hugging Face tokenizers disagree, this one follows the slow one
(tests/test_wordpiece.py lists the cases: the fast one does no NFC (c), lower-cases
character by character (no final sigma), and uses its own Unicode tables).

Speed: stages a-d run on the whole text with C loops (str.translate, unicodedata.normalize,
str.split). Each distinct token they leave goes through e, f and WordPiece once, in Python,
and its ids are cached (one cache per set of allowed special tokens, since d and e depend on
it), so common text costs little more than the split. Characters are classified with this
Python's `unicodedata`, the tables the slow tokenizer consults (the `regex` module carries its
own, usually newer, tables), each one once, the first time it is seen.

Files: `load` reads a directory holding vocab.txt (and tokenizer_config.json with the options,
when present), a vocab.txt path, a Hugging Face tokenizer.json with a WordPiece model, or the
one-file JSON `save(".../tokenizer.json")` writes (format "minibert-wordpiece").
tokenizer_files.load_tokenizer picks BPETokenizer or WordPieceTokenizer from what is on disk.
"""
from __future__ import annotations

import json
import os
import unicodedata
from itertools import chain
from pathlib import Path
from typing import Iterable

from minibert.atomic import atomic_write
from minibert.offsets import Aligned, aligned, checked, lower, nfc, nfd, spans_of_lengths, split_words, text_of
from minibert.tokenizer import SPECIAL_TOKENS
from minibert.vocab import Vocabulary, read_json

FORMAT_NAME = "minibert-wordpiece"
FORMAT_VERSION = 1
VOCAB_FILE = "vocab.txt"
JSON_FILE = "tokenizer.json"   # in a directory without vocab.txt: a Hugging Face or minibert tokenizer.json
CONFIG_FILE = "tokenizer_config.json"
UNK_TOKEN = "[UNK]"
# HF config key -> default of the five BERT special tokens ([UNK] plus minibert's SPECIAL_TOKENS)
_SPECIAL_KEYS = {"unk_token": UNK_TOKEN, "pad_token": SPECIAL_TOKENS[0], "cls_token": SPECIAL_TOKENS[1],
                 "sep_token": SPECIAL_TOKENS[2], "mask_token": SPECIAL_TOKENS[3]}

# "Chinese characters" as BERT defines them: the CJK Unified Ideographs blocks and their
# extensions, and the compatibility ideographs. Hangul, kana etc. are words like any other.
_CJK_RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]
# ASCII that is neither letter, digit, space nor control: punctuation to BERT
_ASCII_PUNCT_RANGES = [(33, 47), (58, 64), (91, 96), (123, 126)]
# ASCII control characters (category Cc) other than tab, newline and carriage return
_ASCII_DROP = {cp: None for cp in [*range(0, 9), 11, 12, *range(14, 32), 127]}


# ---------------------------------------------------------------------- characters

def is_dropped(c: str) -> bool:
    """Stage a: a character the cleaning removes (category C*: control, format, unassigned,
    private use, surrogate; but not tab, newline or carriage return), or U+FFFD."""
    return (unicodedata.category(c)[0] == "C" and c not in "\t\n\r") or c == "\ufffd"


def is_cjk(c: str) -> bool:
    """Stage b: a CJK ideograph, which becomes a word of its own."""
    cp = ord(c)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def is_punctuation(c: str) -> bool:
    """Stage f: a character split off as its own word (category P*, or ASCII "$+<=>^`|~")."""
    cp = ord(c)
    return any(lo <= cp <= hi for lo, hi in _ASCII_PUNCT_RANGES) or unicodedata.category(c)[0] == "P"


class _CleanTable:
    """Stages a-b as one str.translate table (dropped character -> None, CJK ideograph ->
    itself between spaces), filled in as characters are first seen, so each character is
    looked up in unicodedata once per process rather than once per occurrence."""

    def __init__(self, chinese: bool):
        self.chinese = chinese
        self.seen: set[str] = set()
        self.changed: set[str] = set()    # the characters the table changes
        self.table: dict[int, str | None] = {}

    def apply(self, text: str) -> str:
        chars = set(text)
        for c in chars - self.seen:
            if is_dropped(c):
                self.table[ord(c)] = None
            elif self.chinese and is_cjk(c):
                self.table[ord(c)] = f" {c} "
            else:
                continue
            self.changed.add(c)
        self.seen |= chars
        return text.translate(self.table) if not self.changed.isdisjoint(chars) else text


_clean_tables = {True: _CleanTable(True), False: _CleanTable(False)}


# ---------------------------------------------------------------------- the tokenizer

class WordPieceTokenizer(Vocabulary):
    """BERT's WordPiece tokenizer: a vocabulary (one token per id) and the basic tokenizer's options.

    Build one with `load` (a directory with vocab.txt, a vocab.txt, or a saved JSON file) or
    the constructor: `vocab` is the list of token strings in id order (vocab.txt's lines).
    `special_tokens` are cut out of text before anything else; None means the five BERT
    specials ([UNK], [PAD], [CLS], [SEP], [MASK]) that the vocabulary has. unk_token must be in
    the vocabulary. The options mean what they mean in Hugging Face's BertTokenizer.
    """
    _unknown_hint = "not a line of the vocabulary"
    _cache_per_allowed = True   # a token that stage d or e makes an allowed special token is kept whole

    def __init__(self, vocab: Iterable[str], do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, never_split: Iterable[str] = (), unk_token: str = UNK_TOKEN,
                 special_tokens: Iterable[str] | None = None, max_input_chars_per_word: int = 100,
                 do_basic_tokenize: bool = True, clean_up_tokenization_spaces: bool = True):
        if isinstance(vocab, (str, bytes)):
            raise TypeError("vocab must be a list of token strings; use WordPieceTokenizer.load for a file")
        self._id_str = list(vocab)
        if not all(isinstance(t, str) for t in self._id_str):
            raise ValueError("vocab entries must be strings")
        # token -> id; a token listed twice keeps its last id, as Hugging Face's load_vocab does
        self._str_id = {t: i for i, t in enumerate(self._id_str)}
        if unk_token not in self._str_id:
            raise ValueError(f"the unknown token {unk_token!r} is not in the vocabulary")
        if special_tokens is None:
            special_tokens = [t for t in _SPECIAL_KEYS.values() if t in self._str_id]
        self._special = {}
        for s in special_tokens:
            if s not in self._str_id:
                raise ValueError(f"special token {s!r} is not in the vocabulary")
            if not s:
                raise ValueError("special tokens must be non-empty strings")
            self._special[s] = self._str_id[s]
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.never_split = frozenset(never_split)
        self.unk_token = unk_token
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.do_basic_tokenize = bool(do_basic_tokenize)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self._unk = self._str_id[unk_token]
        self._strip = strip_accents if strip_accents is not None else self.do_lower_case
        # Pieces that may start a word (any vocabulary entry) and pieces that continue one
        # (entries "##x", stored without the "##"), with their longest lengths, so the greedy
        # search starts at the longest piece that could match rather than at the word's end.
        self._first = self._str_id
        self._next = {t[2:]: self._str_id[t] for t in self._str_id if t.startswith("##")}
        self._first_max = max(map(len, self._first), default=0)
        self._next_max = max(map(len, self._next), default=0)
        self._clean_table = _clean_tables[self.tokenize_chinese_chars]
        super().__init__()

    # ------------------------------------------------------------------ inspection

    @property
    def vocab(self) -> list[str]:
        """The token strings in id order (a copy): the lines of vocab.txt."""
        return list(self._id_str)

    def options(self) -> dict:
        """The tokenizer's settings, as tokenizer_config.json names them."""
        return {"do_lower_case": self.do_lower_case, "strip_accents": self.strip_accents,
                "tokenize_chinese_chars": self.tokenize_chinese_chars, "never_split": sorted(self.never_split),
                "unk_token": self.unk_token, "max_input_chars_per_word": self.max_input_chars_per_word,
                "do_basic_tokenize": self.do_basic_tokenize,
                "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces}

    def __repr__(self) -> str:
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
                f"special_tokens={self._special!r})")

    # ------------------------------------------------------------------ encoding

    # encode and encode_batch are Vocabulary's: allowed_special "all" (the default) is what
    # Hugging Face does, "none" is the fast tokenizer's split_special_tokens=True ("[MASK]" ->
    # "[", "mask", "]"), a set allows just those tokens, in stage 1 and in stages d and e.

    def tokenize(self, text: str, allowed_special: str | Iterable[str] = "all") -> list[str]:
        """The token strings of `text` ("un", "##aff", "##able"), for reading."""
        return [self._id_str[i] for i in self.encode(text, allowed_special)]

    def _encode_ordinary(self, text: str, out: list[int], cache) -> None:
        # stages a-d run on the whole text in C (str.translate, NFC, str.split); each distinct
        # token they leave is taken through e, f and WordPiece once (_encode_piece), then cached.
        # map + chain keep the per-token loop in C: only cache misses run Python code.
        tokens = self._clean(text).split() if self.do_basic_tokenize else text.split()
        out.extend(chain.from_iterable(map(cache.__getitem__, tokens)))

    def _clean(self, text: str) -> str:
        """Stages a-c: drop controls, space out CJK ideographs, NFC."""
        if text.isascii():
            return text.translate(_ASCII_DROP)    # ASCII is already NFC and has no CJK
        return unicodedata.normalize("NFC", self._clean_table.apply(text))

    def _encode_piece(self, token: str, allowed: frozenset) -> list[int]:
        """Ids of one whitespace-separated token of cleaned text (a cache miss), when the
        special tokens `allowed` may be matched."""
        if not self.do_basic_tokenize:
            return self._wordpiece(token)
        ids = []
        for word in self._words_of_token(token, self.never_split | allowed if allowed else self.never_split):
            if word in self.never_split:   # kept whole, looked up as it is (HF does the same)
                ids.append(self._str_id.get(word, self._unk))
            else:
                ids.extend(self._wordpiece(word))
        return ids

    def _words_of_token(self, token: str, keep: frozenset) -> list[str]:
        """Stages d-f on one token: a token in `keep` (never_split and the allowed special
        tokens) is one word; else lower-case and strip accents as configured, and unless the
        token is now in `keep`, split off each punctuation character."""
        if token in keep:
            return [token]
        if self.do_lower_case:
            token = token.lower()
        if self._strip:
            token = "".join([c for c in unicodedata.normalize("NFD", token) if unicodedata.category(c) != "Mn"])
        if token in keep:
            return [token]
        words, start = [], 0
        for i, c in enumerate(token):
            if is_punctuation(c):
                words += [token[start:i], c]
                start = i + 1
        words.append(token[start:])
        # joined and split again, as HF does: drops the empty words (and any whitespace)
        return " ".join(words).split()

    def _offsets_ordinary(self, text: str, start: int, allowed: frozenset, ids: list, offsets: list) -> None:
        """The ids of _encode_ordinary, each spanning the characters its piece came from: the
        stages run on an offsets.Aligned text (a-c, d, then _aligned_words for e-f)."""
        a = aligned(text, start)
        tokens = split_words(a)
        if self.do_basic_tokenize:
            self._clean_table.apply(text)   # now holds what stages a-b make of each character of text they change
            table = self._clean_table.table
            a = [(x, t) for c, t in a for x in table.get(ord(c), c) or ()]
            tokens = [nfc(token) for token in split_words(a)]   # NFC leaves whitespace alone: token by token
            cleaned = self._clean(text).split()
            if [text_of(token) for token in tokens] != cleaned:   # not reached: a safety net
                tokens = [checked(a, w) for w in cleaned]
        keep = self.never_split | allowed
        for token in tokens:
            words = self._aligned_words(token, keep) if self.do_basic_tokenize else [token]
            for word in words:
                w = text_of(word)
                kept = self.do_basic_tokenize and w in self.never_split   # as in _encode_piece
                word_ids = [self._str_id.get(w, self._unk)] if kept else self._wordpiece(w)
                ids += word_ids   # a piece's length is its string's, less "##" after the first
                offsets += spans_of_lengths(word, [len(self._id_str[i]) - 2 * (k > 0) for k, i in enumerate(word_ids)])

    def _aligned_words(self, token: Aligned, keep: frozenset) -> list[Aligned]:
        """The words of _words_of_token with their sources: the token lower-cased and stripped as
        there, cut where the words are (its characters in order, less whitespace)."""
        s = text_of(token)
        words = self._words_of_token(s, keep)
        if s not in keep:
            if self.do_lower_case:
                token = lower(token)
            if self._strip:
                token = [(c, t) for c, t in nfd(token) if unicodedata.category(c) != "Mn"]
        found, i = [], 0
        for w in words:
            while i < len(token) and token[i][0].isspace():
                i += 1
            found.append(checked(token[i:i + len(w)], w))
            i += len(w)
        return found

    def basic_tokenize(self, text: str) -> list[str]:
        """The words the basic tokenizer makes of `text` (stage 2 of the module docstring),
        before WordPiece; special tokens are not recognised here."""
        return [w for token in self._clean(text).split() for w in self._words_of_token(token, self.never_split)]

    def _wordpiece(self, word: str) -> list[int]:
        """Stage 3: greedy longest-match-first segmentation of one word into ids."""
        n = len(word)
        if n > self.max_input_chars_per_word:
            return [self._unk]
        ids = []
        start = 0
        pieces, longest = self._first, self._first_max
        while start < n:
            end = min(n, start + longest)
            while end > start:
                i = pieces.get(word[start:end])
                if i is not None:
                    break
                end -= 1
            else:
                return [self._unk]     # no piece continues the word here: the whole word is unknown
            ids.append(i)
            start = end
            pieces, longest = self._next, self._next_max
        return ids

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of the ids as Hugging Face's slow BertTokenizer.decode gives it: tokens joined
        by spaces, each "##" piece glued to the one before ("un ##aff ##able" -> "unaffable").

        clean_up_tokenization_spaces (None: the tokenizer's setting, from tokenizer_config.json,
        True by default as in BERT) removes the space before . , ! ? and English contractions
        ("it ' s" stays, "don n't" -> "donn't": the rules are HF's, string replacements).
        The text is not the original: case, accents, spacing and control characters are lost,
        and an unknown word comes back as "[UNK]".
        """
        ids = ids if isinstance(ids, list) else list(ids)
        self._check_ids(ids)
        if skip_special_tokens:
            special = set(self._special.values())
            ids = [i for i in ids if i not in special]
        text = " ".join([self._id_str[i] for i in ids]).replace(" ##", "").strip()
        if self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces:
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                                  (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        """The JSON-ready content of the one-file format."""
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **self.options(),
                "special_tokens": dict(sorted(self._special.items(), key=lambda kv: kv[1])),
                "vocab": list(self._id_str)}

    def save(self, path: str | os.PathLike) -> None:
        """A path ending in .json: the one-file JSON (what a run directory's tokenizer.json
        holds). Otherwise a directory: vocab.txt and tokenizer_config.json, which Hugging Face's
        BertTokenizer(Fast).from_pretrained reads. Files are written atomically."""
        path = Path(path)
        if path.suffix == ".json":
            super().save(path)
            return
        if any("\n" in t or "\r" in t for t in self._id_str):
            raise ValueError("a token holds a line break, which vocab.txt cannot store; save to a .json file")
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / VOCAB_FILE, "".join(t + "\n" for t in self._id_str))
        by_id = sorted(self._special.items(), key=lambda kv: kv[1])
        config = {"tokenizer_class": "BertTokenizer", **self.options(),
                  **{k: v for k, v in _SPECIAL_KEYS.items() if v in self._special and k != "unk_token"},
                  "added_tokens_decoder": {str(i): {"content": s, "special": True, "normalized": False,
                                                    "lstrip": False, "rstrip": False, "single_word": False}
                                           for s, i in by_id}}
        atomic_write(path / CONFIG_FILE, json.dumps(config, ensure_ascii=False, indent=2) + "\n")

    @classmethod
    def from_dict(cls, d, source: str = "tokenizer data") -> "WordPieceTokenizer":
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise ValueError(f'{source}: "format" is not {FORMAT_NAME!r}')
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f'{source}: unsupported version {d.get("version")!r} (this code reads {FORMAT_VERSION})')
        if not isinstance(d.get("vocab"), list) or not isinstance(d.get("special_tokens"), dict):
            raise ValueError(f'{source}: "vocab" (a list) or "special_tokens" (an object) is missing')
        opts = {k: d[k] for k in cls._option_names() if k in d}
        try:
            tok = cls(d["vocab"], special_tokens=list(d["special_tokens"]), **opts)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None
        if tok.special_tokens != d["special_tokens"]:
            raise ValueError(f"{source}: special token ids {d['special_tokens']} do not match the vocab list")
        return tok

    @staticmethod
    def _option_names() -> tuple[str, ...]:
        return ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "never_split", "unk_token",
                "max_input_chars_per_word", "do_basic_tokenize", "clean_up_tokenization_spaces")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordPieceTokenizer":
        """Read a directory (vocab.txt, plus tokenizer_config.json when present; else its
        tokenizer.json), a vocab.txt file (its directory's tokenizer_config.json counts too), a
        Hugging Face tokenizer.json whose model is WordPiece, or a file written by
        save("....json")."""
        path = Path(path)
        if path.is_dir():
            if (path / VOCAB_FILE).is_file():
                return cls.from_vocab_file(path / VOCAB_FILE)
            if (path / JSON_FILE).is_file():
                return cls.load(path / JSON_FILE)
            raise FileNotFoundError(f"{path} holds neither {VOCAB_FILE} nor {JSON_FILE}")
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer at {path}")
        if path.suffix == ".json":
            return cls.from_json(read_json(path), str(path))
        return cls.from_vocab_file(path)

    @classmethod
    def from_json(cls, d: dict, source: str = "tokenizer data") -> "WordPieceTokenizer":
        """A JSON object of the one-file format (save("....json")) or a Hugging Face tokenizer.json."""
        if d.get("format") == FORMAT_NAME:
            return cls.from_dict(d, source)
        return cls.from_hf_tokenizer_json(d, source)

    @classmethod
    def from_vocab_file(cls, vocab_txt: str | os.PathLike, config: dict | None = None) -> "WordPieceTokenizer":
        """vocab.txt (one token per line; the line number is the id) with the options of
        `config`, or of tokenizer_config.json beside it when config is None."""
        vocab_txt = Path(vocab_txt)
        # text mode, like HF's load_vocab: "\r\n" and "\r" end lines too
        with open(vocab_txt, encoding="utf-8") as f:
            vocab = [line.rstrip("\n") for line in f]
        if config is None:
            config = {}
            for name in ("special_tokens_map.json", CONFIG_FILE):   # the second wins, as in HF
                if (vocab_txt.parent / name).is_file():
                    config.update(read_json(vocab_txt.parent / name))
        try:
            return cls(vocab, **_options_from_config(config, vocab))
        except ValueError as e:
            raise ValueError(f"{vocab_txt}: {e}") from None

    @classmethod
    def from_hf_tokenizer_json(cls, d: dict, source: str = "tokenizer.json") -> "WordPieceTokenizer":
        """A Hugging Face `tokenizers` file (tokenizer.json) with a WordPiece model and a
        BertNormalizer (what BertTokenizerFast saves)."""
        model = d.get("model") if isinstance(d, dict) else None
        if not isinstance(model, dict) or model.get("type") != "WordPiece":
            raise ValueError(f"{source}: not a WordPiece tokenizer (neither {FORMAT_NAME!r} nor a Hugging Face "
                             "tokenizer.json with a WordPiece model)")
        if model.get("continuing_subword_prefix", "##") != "##":
            raise ValueError(f"{source}: continuing_subword_prefix {model['continuing_subword_prefix']!r} "
                             "(only '##' is supported)")
        ids = model["vocab"]
        vocab = [""] * len(ids)
        for t, i in ids.items():
            vocab[i] = t
        norm = d.get("normalizer") or {}
        if norm.get("type") != "BertNormalizer":
            raise ValueError(f"{source}: normalizer {norm.get('type')!r} (only BertNormalizer is supported)")
        specials = [t["content"] for t in d.get("added_tokens", []) if t.get("special") and t["content"] in ids]
        return cls(vocab, do_lower_case=norm.get("lowercase", True), strip_accents=norm.get("strip_accents"),
                   tokenize_chinese_chars=norm.get("handle_chinese_chars", True),
                   unk_token=model.get("unk_token", UNK_TOKEN), special_tokens=specials,
                   max_input_chars_per_word=model.get("max_input_chars_per_word", 100))


def _token_name(value):
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    return value["content"] if isinstance(value, dict) else value


def _options_from_config(config: dict, vocab: list[str]) -> dict:
    """Constructor arguments from a tokenizer_config.json (and special_tokens_map.json) dict."""
    opts = {k: config[k] for k in WordPieceTokenizer._option_names() if config.get(k) is not None}
    if "unk_token" in opts:
        opts["unk_token"] = _token_name(opts["unk_token"])
    opts["never_split"] = opts.get("never_split") or ()
    names = {_token_name(config.get(k) or default) for k, default in _SPECIAL_KEYS.items()}
    for t in (config.get("added_tokens_decoder") or {}).values():
        if t.get("special"):
            names.add(t["content"])
    present = set(vocab)
    opts["special_tokens"] = [s for s in names if s in present]
    return opts

