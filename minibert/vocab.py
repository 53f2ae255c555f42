"""What both tokenizers share: `Vocabulary`, the base of tokenizer.BPETokenizer and
wordpiece.WordPieceTokenizer.

A subclass builds its tables and then calls `Vocabulary.__init__`; from there on the base does:
  - look-ups: ids <-> printable token strings (self._id_str: id -> string, self._str_id:
    string -> id), the special tokens (self._special: string -> id);
  - `encode`: the special tokens that `allowed_special` allows are cut out of the text first,
    longest first (bpe.special_regex), anywhere, even inside a word; each remaining part goes
    to the subclass's `_encode_ordinary(text, out, cache)`, which splits it into pieces
    (pre-tokens, whitespace-separated words) and takes each piece's ids from `cache`, a
    `PieceCache` over the subclass's `_encode_piece`: a piece costs Python code once, then a
    dict look-up. A piece that cannot be encoded as UTF-8 (a lone surrogate, which the BPE
    tokenizer meets; WordPiece's cleaning drops them) is a ValueError naming its index;
  - `encode_with_offsets`: the same ids and each one's (start, end) characters of the text, cut
    the same way; the subclass's `_offsets_ordinary` follows each part's characters
    (offsets.py);
  - the saved file: one JSON object (the subclass's `to_dict`) written canonically, one key
    per line and one entry per line for the long lists (`_one_per_line`), so the same
    tokenizer always gives the same bytes; `fingerprint` is the first 16 hex digits of their
    SHA-256, which checkpoints and data caches store to recognise their tokenizer.

A piece's ids may depend on which special tokens are allowed (WordPiece keeps whole a token
that its cleaning turns into an allowed special token): such a subclass sets
`_cache_per_allowed`, and each allowed set gets its own cache, so an encode with "none" never
reuses ids found with "all".
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from minibert.atomic import atomic_write
from minibert.bpe import special_regex, surrogate_error

_CACHE_LIMIT = 1 << 19   # piece cache entries before the cache is cleared


class PieceCache(dict):
    """piece string -> list of ids; a miss computes and stores (cleared when full)."""

    def __init__(self, encode_piece: Callable[[str], list[int]]):
        super().__init__()
        self._encode_piece = encode_piece

    def __missing__(self, piece: str) -> list[int]:
        ids = self._encode_piece(piece)
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        self[piece] = ids
        return ids


class Vocabulary:
    """Look-ups, special-token cutting, the piece caches and the saved JSON of a tokenizer.

    A subclass sets self._id_str, self._str_id and self._special, then calls
    Vocabulary.__init__(self); it defines `_encode_piece(piece, allowed)` (allowed: the
    frozenset of special tokens encode may match), `_encode_ordinary(text, out, cache)`,
    `_offsets_ordinary(text, start, allowed, ids, offsets)` (appends the ids of
    _encode_ordinary and the span of each in the whole text, where `text` starts at index
    `start`) and `to_dict()`."""
    _unknown_hint = "not in the vocabulary"  # what a KeyError adds about the token strings
    _one_per_line = ("vocab",)      # keys of to_dict whose lists are saved one entry per line
    _cache_per_allowed = False      # whether a piece's ids depend on the allowed special tokens

    def __init__(self):
        self._modes: dict[frozenset, tuple] = {}   # allowed special tokens -> (regex or None, PieceCache)
        self._caches: dict[frozenset, PieceCache] = {}

    @property
    def vocab_size(self) -> int:
        return len(self._id_str)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    def token_to_id(self, token: str) -> int:
        """Id of a token given as its printable string; KeyError if unknown."""
        try:
            return self._str_id[token]
        except KeyError:
            raise KeyError(f"unknown token {token!r} ({self._unknown_hint})") from None

    def id_to_token(self, i: int) -> str:
        """Printable string of a token id (inverse of token_to_id)."""
        self._check_ids([i])
        return self._id_str[i]

    def _check_ids(self, ids: list[int]) -> None:
        n = len(self._id_str)
        if ids and (min(ids) < 0 or max(ids) >= n):
            bad = next(i for i in ids if not 0 <= i < n)
            raise ValueError(f"unknown token id {bad} (vocab size is {n})")

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, allowed_special: str | Iterable[str] = "all") -> list[int]:
        """Token ids of `text` (no [CLS]/[SEP] added: the programs add them).

        allowed_special: "all" (default) turns every special token written in the text into its
        id, so a user typing "[MASK]" gets the mask token; "none" encodes special-token strings
        as ordinary text; a set of strings allows just those. Special tokens not allowed are
        plain text, never an error.
        """
        return self._encode(text, self._mode(allowed_special))

    def encode_batch(self, texts: Iterable[str], allowed_special: str | Iterable[str] = "all") -> list[list[int]]:
        """encode() for each text (they share the piece cache)."""
        mode = self._mode(allowed_special)
        return [self._encode(t, mode) for t in texts]

    def clear_cache(self) -> None:
        """Forget the encoded pieces, so the next encode starts cold (benchmarks)."""
        for cache in self._caches.values():
            cache.clear()

    def _encode(self, text: str, mode) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        special_re, cache = mode
        out: list[int] = []
        try:
            if special_re is None:
                self._encode_ordinary(text, out, cache)
            else:
                start = 0
                for m in special_re.finditer(text):
                    self._encode_ordinary(text[start:m.start()], out, cache)
                    out.append(self._special[m.group()])
                    start = m.end()
                self._encode_ordinary(text[start:], out, cache)
        except UnicodeEncodeError:   # a piece with a lone surrogate has no UTF-8 (BPE): name its index in the text
            raise surrogate_error(text) from None
        return out

    def encode_with_offsets(self, text: str, allowed_special: str | Iterable[str] = "all"
                            ) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of encode(text, allowed_special) and, for each, the (start, end) characters of
        `text` it stands for (str indices, end exclusive): Hugging Face `tokenizers`'
        offset_mapping. A special token spans its string; the subclass's
        `_offsets_ordinary` gives the rest (offsets.py says how). Slower than encode: it
        follows every character and uses no cache."""
        if not isinstance(text, str):
            raise TypeError(f"encode_with_offsets expects str, got {type(text).__name__}")
        special_re, _ = self._mode(allowed_special)
        allowed = self._allowed(allowed_special) if self._cache_per_allowed else frozenset()
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        start = 0
        try:
            for m in special_re.finditer(text) if special_re is not None else ():
                self._offsets_ordinary(text[start:m.start()], start, allowed, ids, offsets)
                ids.append(self._special[m.group()])
                offsets.append((m.start(), m.end()))
                start = m.end()
            self._offsets_ordinary(text[start:], start, allowed, ids, offsets)
        except UnicodeEncodeError:   # as in _encode
            raise surrogate_error(text) from None
        return ids, offsets

    def _allowed(self, allowed_special) -> frozenset:
        """The special tokens that allowed_special ("all", "none" or a set) allows."""
        if isinstance(allowed_special, str):
            if allowed_special == "all":
                allowed = frozenset(self._special)
            elif allowed_special == "none":
                allowed = frozenset()
            else:
                raise ValueError(f'allowed_special must be "all", "none" or a set of special tokens, got {allowed_special!r}')
        else:
            allowed = frozenset(allowed_special)
            unknown = allowed - set(self._special)
            if unknown:
                raise ValueError(f"allowed_special has tokens that are not special tokens: {sorted(unknown)!r}")
        return allowed

    def _mode(self, allowed_special):
        """(the regex that cuts out the special tokens encode may match, or None; the piece
        cache to use), memoised per allowed set."""
        allowed = self._allowed(allowed_special)
        if allowed not in self._modes:
            key = allowed if self._cache_per_allowed else frozenset()
            if key not in self._caches:
                self._caches[key] = PieceCache(partial(self._encode_piece, allowed=key))
            self._modes[allowed] = (special_regex(allowed), self._caches[key])
        return self._modes[allowed]

    # ------------------------------------------------------------------ the saved file

    def _canonical_json(self) -> str:
        """The saved text: one key per line, and one entry per line for the lists of _one_per_line."""
        def dump(x):
            return json.dumps(x, ensure_ascii=False)
        lines = []
        for key, value in self.to_dict().items():
            if key in self._one_per_line:
                body = ",\n".join(f"  {dump(v)}" for v in value)
                lines.append(f' {dump(key)}: [\n{body}\n ]' if value else f" {dump(key)}: []")
            else:
                lines.append(f" {dump(key)}: {dump(value)}")
        return "{\n" + ",\n".join(lines) + "\n}"

    def fingerprint(self) -> str:
        """Short hex id of the tokenizer (sha256 of its saved JSON), to key data caches."""
        return hashlib.sha256(self._canonical_json().encode("utf-8")).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as versioned JSON, atomically (atomic.atomic_write)."""
        atomic_write(path, self._canonical_json() + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """The JSON object in a file; ValueError naming the file if it is not one."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the file may be truncated or not a tokenizer file") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return d
