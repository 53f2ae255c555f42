"""Character offsets: the (start, end) characters of the original text that each token stands
for (Python `str` indices, end exclusive), equal to Hugging Face `tokenizers`' offset_mapping.
`encode_with_offsets` (vocab.Vocabulary) cuts the special tokens out; these are the pieces each
tokenizer builds its offsets from.

Byte-level BPE (`byte_spans`): a token stands for bytes of one pre-token's UTF-8; its span is
the characters those bytes belong to. A token holding only some bytes of a character spans the
whole character, so neighbouring tokens may share it ("😀" cut into two tokens: both (i, i+1)),
which is what `tokenizers` reports.

WordPiece changes the text before it cuts it (controls dropped, NFC, lower case, accents
stripped), so its offsets follow each character through those changes: an `Aligned` string is
a list of (character, sources), `sources` the indices of the original characters it came from.
Each step below makes the same string as the `str`/`unicodedata` call it mirrors (checked; a step
that cannot follow a character gives every character the span of the whole input, rather than a
wrong string). A token's span is (the first source of its first character, the last source of
its last character + 1), as `tokenizers` takes (first alignment's start, last alignment's end);
a composed character counts its lowest and highest sources.
  - dropping and splitting keep each character's sources;
  - lower-casing gives every character it makes its source's sources ("İ" -> "i\\u0307", both
    from "İ"), as `tokenizers` does, unless they were one per decomposed part (see NFC);
  - NFD (`nfd_as_tokenizers`) as the `tokenizers` crate aligns it: each character's decomposition
    is its first part (which takes the next original character) then added parts (which take the
    original character taken last); canonical reordering moves parts with their kind, not with
    their source, so a reordered mark takes the source of the position it lands in;
  - NFC (`nfc`): text already in NFC is left as it is, which is what `tokenizers` (no NFC) sees;
    else that NFD is composed, and a composed character keeps the sources of its parts, one per
    part, so a later NFD (`nfd`, accent stripping after lower-casing) gives each part its own
    source back: "cafe\\u0301" stripped is "cafe" at (0, 4), the combining accent dropped with its
    own source, as in `tokenizers`. (The slow BertTokenizer does NFC, and so does minibert.)
"""
from __future__ import annotations

import unicodedata
from typing import Callable, Iterable

Aligned = list[tuple[str, tuple[int, ...]]]   # each character and the original characters it came from


def aligned(text: str, start: int = 0) -> Aligned:
    """`text` (found at `start` in the original) with each character its own source."""
    return [(c, (start + i,)) for i, c in enumerate(text)]


def text_of(a: Aligned) -> str:
    return "".join([c for c, _ in a])


def span(a: Aligned) -> tuple[int, int]:
    """(start, end) in the original of a non-empty aligned string."""
    return min(a[0][1]), max(a[-1][1]) + 1


def spans_of_lengths(word: Aligned, lengths: list[int]) -> list[tuple[int, int]]:
    """Spans of consecutive pieces of `word` with these lengths in characters; pieces that do
    not add up to the word (an [UNK] for a whole word) each span the whole word."""
    if len(lengths) == 1 or sum(lengths) != len(word):
        return [span(word)] * len(lengths)
    out, i = [], 0
    for n in lengths:
        out.append(span(word[i:i + n]))
        i += n
    return out


def byte_spans(piece: str, start: int, lengths: Iterable[int]) -> list[tuple[int, int]]:
    """Spans of consecutive tokens of `lengths` bytes that spell the UTF-8 of `piece`, found at
    `start` in the original; a token with part of a character spans that whole character."""
    if piece.isascii():
        char_at = range(len(piece))
    else:   # byte index -> character index
        char_at = [j for j, c in enumerate(piece) for _ in range(len(c.encode("utf-8")))]
    out, b = [], 0
    for n in lengths:
        out.append((start + char_at[b], start + char_at[b + n - 1] + 1))
        b += n
    return out


def checked(a: Aligned, expected: str) -> Aligned:
    """`a` if it spells `expected` (the string the mirrored call made); else `expected` with
    every character spanning all of `a`, so the text is right even where a step lost track."""
    if text_of(a) == expected:
        return a
    whole = (min(min(t) for _, t in a), max(max(t) for _, t in a)) if a else ()
    return [(c, whole) for c in expected]


def split_words(a: Aligned) -> list[Aligned]:
    """The whitespace-separated words of `a` (as str.split makes them)."""
    words, word = [], []
    for c, t in a:
        if not c.isspace():
            word.append((c, t))
        elif word:
            words.append(word)
            word = []
    if word:
        words.append(word)
    return words


def lower(a: Aligned) -> Aligned:
    """str.lower: a character that becomes several gives each its sources (one each when there
    is one source per character made, as from a composed character)."""
    s = text_of(a)
    low = s.lower()   # the whole string at once: a final capital sigma becomes "ς" only here
    if s.isascii():
        return [(x, t) for x, (_, t) in zip(low, a)]
    out, i = [], 0
    for c, t in a:
        n = len(c.lower())
        part = low[i:i + n]
        i += n
        out += [(part, t)] if n == 1 else [(x, (t[j],) if n == len(t) else t) for j, x in enumerate(part)]
    return checked(out, low)


def _reorder(items: list, key: Callable) -> list:
    """Canonical ordering: each run of non-starters (combining class > 0) stably sorted by class."""
    out, run = [], []
    for item in items:
        if unicodedata.combining(key(item)):
            run.append(item)
        else:
            out += sorted(run, key=lambda x: unicodedata.combining(key(x)))
            run = []
            out.append(item)
    return out + sorted(run, key=lambda x: unicodedata.combining(key(x)))


def nfd_as_tokenizers(a: Aligned) -> Aligned:
    """NFD of characters with one source each, aligned as the `tokenizers` crate aligns it
    (module docstring): first parts take the next source, added parts the last one taken."""
    parts = [(d, j > 0) for c, _ in a for j, d in enumerate(c if c < "\x80" else unicodedata.normalize("NFD", c))]
    sources = iter([t for _, t in a])
    out, last = [], a[0][1] if a else ()
    for d, added in _reorder(parts, lambda p: p[0]):
        if not added:
            last = next(sources)
        out.append((d, last))
    return checked(out, unicodedata.normalize("NFD", text_of(a)))


def nfd(a: Aligned) -> Aligned:
    """NFD of an aligned string; a composed character with one source per part (`nfc`) gives
    each part its own source back, and reordering moves a part with its source."""
    if text_of(a).isascii():
        return a
    parts = []
    for c, t in a:
        d = unicodedata.normalize("NFD", c)
        parts += [(x, (t[j],) if len(d) == len(t) else t) for j, x in enumerate(d)]
    return checked(_reorder(parts, lambda p: p[0]), unicodedata.normalize("NFD", text_of(a)))


def nfc(a: Aligned) -> Aligned:
    """NFC. A string already in NFC is left as it is, each character its own source (what
    `tokenizers`, which does no NFC, sees); else canonical composition of `nfd_as_tokenizers(a)`,
    a composed character keeping the sources of its parts, one per part."""
    if unicodedata.is_normalized("NFC", text_of(a)):
        return a
    out: Aligned = []
    starter, last_class = None, -1   # index in out of the last starter; class of the last character after it
    for c, t in nfd_as_tokenizers(a):
        cls = unicodedata.combining(c)
        # c composes with the last starter if nothing stands between them, or only characters of
        # lower class (and no composition has an ASCII second part)
        if starter is not None and (last_class == -1 or last_class < cls) and c >= "\x80":
            both = unicodedata.normalize("NFC", out[starter][0] + c)
            if len(both) == 1:
                out[starter] = (both, out[starter][1] + t)
                continue
        if cls == 0:
            starter, last_class = len(out), -1
        else:
            last_class = cls
        out.append((c, t))
    return checked(out, unicodedata.normalize("NFC", text_of(a)))
