"""Byte-level BPE tokenizer (as in GPT-2 and RoBERTa), in plain Python and `regex`.

Text becomes UTF-8 bytes, so the base alphabet is the 256 byte values and nothing is ever
unknown. Byte pair encoding (Sennrich et al. 2016, "Neural Machine Translation of Rare Words
with Subword Units"; byte-level as in Radford et al. 2019, GPT-2) learns merges: repeatedly
join the most frequent adjacent pair of tokens into a new token.

Pipeline, both for training and encoding:
  1. special tokens ("[MASK]", "<|endoftext|>") are cut out of the text first, longest first;
  2. each remaining part is split into pre-tokens with a regex (GPT-2's by default), so merges
     never cross a word/space/punctuation boundary;
  3. each pre-token's UTF-8 bytes are merged by rank: always the adjacent pair whose merge was
     learned earliest, leftmost first, until no learned pair is left.

Ids: a trained tokenizer numbers its special tokens first, then the 256 single bytes (in byte
order), then each new token in the order the merges created it. A tokenizer loaded from GPT-2
or Hugging Face files keeps the ids of those files.

Internally a token sequence is a `str` with one character per token (the "symbol"): bytes are
chr(0)..chr(255) (so `bytes.decode("latin-1")` turns UTF-8 into symbols), merge results are
chr(256), chr(257), ... A pair of adjacent tokens is then a 2-character string (a dict key),
finding it in a word is `str.find` and merging it throughout the word is `str.replace`: the C
loops of `str` do the scanning, Python does the bookkeeping.

Token strings (`token_to_id`, `id_to_token`, the saved files) use GPT-2's printable map of the
256 bytes (space is "Ġ", newline is "Ċ"), the same strings as GPT-2's vocab.json.

Lone surrogates (e.g. "\\ud800", which has no UTF-8 encoding) are rejected: `encode` and
`train` raise ValueError naming the position. See docs/tokenizer.md for a walk-through.
"""
from __future__ import annotations

import codecs
import hashlib
import heapq
import json
import os
import sys
import time
from collections import Counter, defaultdict
from itertools import chain
from operator import add
from pathlib import Path
from typing import Callable, Iterable, Iterator

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# BERT's special tokens, in the order of their ids when a tokenizer is trained with them
SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]
FORMAT_NAME = "minibert-bpe"
FORMAT_VERSION = 1

_CACHE_LIMIT = 1 << 19      # pre-token cache entries before the cache is cleared
_MAX_AUTO_SPECIALS = 256    # more unexplained vocab.json entries than this means broken files
_READ_BLOCK = 1 << 20       # characters read from a corpus file at a time
_BATCH_CHARS = 1 << 20      # characters of text per pre-token counting task
_POOL_AFTER_CHARS = 2 << 20  # a corpus larger than this is counted by worker processes too
_PARALLEL_ENCODE_CHARS = 2 << 20  # an encode_batch larger than this is split across processes


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes map to themselves,
    the other 68 (controls, space, ...) to chr(256), chr(257), ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + len(table) - len(keep))
    return dict(sorted(table.items()))


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def bytes_to_token_str(b: bytes) -> str:
    """Printable form of a token's bytes, as in GPT-2's vocab.json (b" the" -> "Ġthe")."""
    return "".join(BYTE_TO_CHAR[x] for x in b)


def token_str_to_bytes(s: str) -> bytes:
    """Inverse of bytes_to_token_str; ValueError for a character outside GPT-2's byte map."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in s)
    except KeyError as e:
        raise ValueError(f"token string {s!r} has character {e.args[0]!r}, which is not in the byte-level alphabet") from None


def _special_regex(specials: Iterable[str]):
    """Alternation of the special tokens, longest first, so that at any position the longest
    special token that matches wins ("<|endoftext|>" over "<|end")."""
    specials = sorted(set(specials), key=lambda s: (-len(s), s))
    if not specials:
        return None
    return regex.compile("|".join(regex.escape(s) for s in specials))


_SURROGATE = regex.compile(r"[\ud800-\udfff]")


def _surrogate_error(text: str, where: str = "text") -> ValueError:
    m = _SURROGATE.search(text)
    pos = m.start() if m else -1
    ch = f"U+{ord(m.group()):04X}" if m else "a surrogate"
    return ValueError(f"{where} has a lone surrogate {ch} at index {pos}: it has no UTF-8 encoding, so it cannot be "
                      f"tokenized (fix the text, e.g. text.encode('utf-8', 'replace').decode('utf-8'))")


class _PieceCache(dict):
    """pre-token string -> list of ids; a miss computes and stores (cleared when full)."""

    def __init__(self, encode_piece: Callable[[str], list[int]]):
        super().__init__()
        self._encode_piece = encode_piece

    def __missing__(self, piece: str) -> list[int]:
        ids = self._encode_piece(piece)
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        self[piece] = ids
        return ids


class BPETokenizer:
    """A byte-level BPE tokenizer: merges (in rank order), special tokens, a pre-token regex.

    Build one with `train`, `load`, or `from_gpt2_files`. The constructor takes the parts
    directly: `merges` is a list of (bytes, bytes) in rank order; `special_tokens` is a list of
    strings (ids 0, 1, ... in that order) or a dict string -> id; `vocab` (optional) maps every
    non-special id to its bytes, for files whose ids are laid out differently from the default
    (specials first, then the 256 bytes, then merge results in order).
    """

    def __init__(self, merges: Iterable[tuple[bytes, bytes]], special_tokens: Iterable[str] | dict[str, int] = (),
                 pattern: str = GPT2_PATTERN, vocab: dict[int, bytes] | None = None):
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("pattern must be a non-empty regex string")
        try:
            self._pat = regex.compile(pattern)
        except regex.error as e:
            raise ValueError(f"pattern {pattern!r} is not a valid regex: {e}") from None
        self._pattern = pattern

        if isinstance(special_tokens, str):
            raise TypeError(f"special_tokens must be a list of strings, not the string {special_tokens!r}")
        if not isinstance(special_tokens, dict):
            special_tokens = list(special_tokens)
            if len(set(special_tokens)) != len(special_tokens):
                raise ValueError(f"duplicate special tokens in {special_tokens!r}")
            special_tokens = {s: i for i, s in enumerate(special_tokens)}
        for s, i in special_tokens.items():
            if not isinstance(s, str) or not s:
                raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
            if _SURROGATE.search(s):
                raise _surrogate_error(s, f"special token {s!r}")
            if not isinstance(i, int) or i < 0:
                raise ValueError(f"special token {s!r} has invalid id {i!r}")
        if len(set(special_tokens.values())) != len(special_tokens):
            raise ValueError("two special tokens share an id")
        self._special = dict(special_tokens)

        # Symbols: the 256 bytes, then each distinct merge result in order of creation.
        sym_bytes = [bytes([b]) for b in range(256)]
        sym_of = {b: i for i, b in enumerate(sym_bytes)}
        self._merges: list[tuple[bytes, bytes]] = []
        self._ranks: dict[str, int] = {}     # 2-symbol string -> rank
        self._merge_sym: list[str] = []      # rank -> symbol of the merge result
        for rank, pair in enumerate(merges):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, bytes) for p in pair)):
                raise ValueError(f"merge {rank} is {pair!r}, expected a pair of bytes")
            a, b = pair
            if a not in sym_of or b not in sym_of:
                missing = a if a not in sym_of else b
                raise ValueError(f"merge {rank} ({a!r}, {b!r}) uses {missing!r}, which is not a byte or the result of an earlier merge")
            key = chr(sym_of[a]) + chr(sym_of[b])
            if key in self._ranks:
                raise ValueError(f"merge {rank} ({a!r}, {b!r}) repeats merge {self._ranks[key]}")
            if a + b not in sym_of:
                sym_of[a + b] = len(sym_bytes)
                sym_bytes.append(a + b)
            self._ranks[key] = rank
            self._merge_sym.append(chr(sym_of[a + b]))
            self._merges.append((a, b))
        self._merge_pair = list(self._ranks)  # rank -> 2-symbol string (dicts keep insertion order)

        # Ids of the symbols.
        n_total = len(sym_bytes) + len(self._special)
        if vocab is None:
            free = sorted(set(range(n_total)) - set(self._special.values()))
            if len(free) < len(sym_bytes):
                raise ValueError(f"special token ids {sorted(self._special.values())} leave no room for the byte tokens")
            self._sym_id = free[:len(sym_bytes)]
        else:
            id_of = {}
            for i, b in vocab.items():
                if b in id_of:
                    raise ValueError(f"vocab gives bytes {b!r} two ids, {id_of[b]} and {i}")
                if b not in sym_of:
                    raise ValueError(f"vocab id {i} is {b!r}, which is neither a byte nor a merge result")
                id_of[b] = i
            missing = [b for b in sym_bytes if b not in id_of]
            if missing:
                raise ValueError(f"vocab lacks {len(missing)} tokens, e.g. {missing[0]!r} (every byte and merge result needs an id)")
            self._sym_id = [id_of[b] for b in sym_bytes]
        ids = sorted([*self._sym_id, *self._special.values()])
        if ids != list(range(n_total)):
            raise ValueError(f"token ids must be exactly 0..{n_total - 1} with no repeats or gaps")
        self._sym_bytes = sym_bytes
        self._id_bytes: list[bytes] = [b""] * n_total   # id -> bytes (a special token -> its UTF-8)
        for sym, i in enumerate(self._sym_id):
            self._id_bytes[i] = sym_bytes[sym]
        for s, i in self._special.items():
            self._id_bytes[i] = s.encode("utf-8")
        self._id_str = [bytes_to_token_str(b) for b in self._id_bytes]   # id -> printable token string
        for s, i in self._special.items():
            self._id_str[i] = s
        self._str_id = {s: i for i, s in enumerate(self._id_str)}
        for s, i in self._special.items():   # a special token's own string wins over a byte-level twin
            self._str_id[s] = i
        self._special_res: dict[frozenset, object] = {}
        self._cache = _PieceCache(self._encode_piece)

    # ------------------------------------------------------------------ inspection

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merges in rank order (a copy)."""
        return list(self._merges)

    @property
    def vocab(self) -> dict[int, bytes]:
        """id -> bytes for every id; a special token maps to its UTF-8 bytes (a copy)."""
        return dict(enumerate(self._id_bytes))

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def pattern(self) -> str:
        return self._pattern

    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    def token_to_id(self, token: str) -> int:
        """Id of a token given as its printable string ("Ġthe", "[MASK]"); KeyError if unknown."""
        try:
            return self._str_id[token]
        except KeyError:
            raise KeyError(f"unknown token {token!r} (tokens are GPT-2 byte-level strings like 'Ġthe', or special tokens)") from None

    def id_to_token(self, i: int) -> str:
        """Printable string of a token id (inverse of token_to_id)."""
        self._check_ids([i])
        return self._id_str[i]

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, special_tokens={self._special!r})"

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, allowed_special: str | Iterable[str] = "all") -> list[int]:
        """Token ids of `text`.

        allowed_special: "all" (default) turns every special token written in the text into its
        id, so a user typing "[MASK]" gets the mask token; "none" encodes special-token strings
        as ordinary text; a set of strings allows just those. Special tokens not allowed are
        plain text, never an error. Raises ValueError for a lone surrogate.
        """
        return self._encode(text, self._allowed_regex(allowed_special))

    def encode_batch(self, texts: Iterable[str], allowed_special: str | Iterable[str] = "all",
                     workers: int | None = None) -> list[list[int]]:
        """encode() for each text (they share the pre-token cache).

        A batch of more than _PARALLEL_ENCODE_CHARS characters is split into `workers`
        contiguous parts (None: 2 when the machine has them), encoded side by side in forked
        processes; the ids are the same as encoding one text at a time."""
        special_re = self._allowed_regex(allowed_special)
        texts = texts if isinstance(texts, list) else list(texts)
        if workers is None:
            workers = min(2, os.cpu_count() or 1)
        if workers > 1 and _can_fork() and sum(map(len, texts)) >= _PARALLEL_ENCODE_CHARS:
            return _encode_parallel(self, texts, special_re, workers)
        return [self._encode(t, special_re) for t in texts]

    def _encode(self, text: str, special_re) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        out: list[int] = []
        try:
            if special_re is None:
                self._encode_ordinary(text, out)
            else:
                start = 0
                for m in special_re.finditer(text):
                    self._encode_ordinary(text[start:m.start()], out)
                    out.append(self._special[m.group()])
                    start = m.end()
                self._encode_ordinary(text[start:], out)
        except UnicodeEncodeError:
            raise _surrogate_error(text) from None
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes the ids stand for; ValueError for an id outside the vocabulary."""
        ids = ids if isinstance(ids, list) else list(ids)
        self._check_ids(ids)
        return b"".join([self._id_bytes[i] for i in ids])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; byte sequences that are not valid UTF-8 (a token sequence cut in the
        middle of a character) become U+FFFD instead of raising."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _check_ids(self, ids: list[int]) -> None:
        n = len(self._id_bytes)
        if ids and (min(ids) < 0 or max(ids) >= n):
            bad = next(i for i in ids if not 0 <= i < n)
            raise ValueError(f"unknown token id {bad} (vocab size is {n})")

    def _allowed_regex(self, allowed_special):
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
        if allowed not in self._special_res:
            self._special_res[allowed] = _special_regex(allowed)
        return self._special_res[allowed]

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        # map + chain keep the per-pre-token loop in C; only cache misses run Python code.
        out.extend(chain.from_iterable(map(self._cache.__getitem__, self._pat.findall(text))))

    def _encode_piece(self, piece: str) -> list[int]:
        s = piece.encode("utf-8").decode("latin-1")   # one symbol per byte
        if len(s) > 1:
            s = self._merge(s)
        sym_id = self._sym_id
        return [sym_id[ord(c)] for c in s]

    def _merge(self, s: str) -> str:
        """Exact BPE on a symbol string: merge the lowest-rank adjacent pair, leftmost first,
        until no adjacent pair is a learned merge. O(n log n): a heap of (rank, position) over a
        linked list of symbols. Entries are not removed when a merge changes their pair; a popped
        entry is used only if its pair is still there (lazy invalidation)."""
        ranks, merge_pair, merge_sym = self._ranks, self._merge_pair, self._merge_sym
        n = len(s)
        sym = list(s)                    # sym[i]: symbol starting at position i ("" once merged away)
        nxt = list(range(1, n + 1))      # position of the next live symbol
        prv = list(range(-1, n - 1))
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get(s[i:i + 2])) is not None]
        heapq.heapify(heap)
        while heap:
            r, i = heapq.heappop(heap)
            j = nxt[i]
            if j >= n or not sym[i] or sym[i] + sym[j] != merge_pair[r]:
                continue                  # stale: this pair was changed by an earlier merge
            sym[i] = merge_sym[r]
            sym[j] = ""
            k = nxt[j]
            nxt[i] = k
            if k < n:
                prv[k] = i
                rk = ranks.get(sym[i] + sym[k])
                if rk is not None:
                    heapq.heappush(heap, (rk, i))
            p = prv[i]
            if p >= 0:
                rp = ranks.get(sym[p] + sym[i])
                if rp is not None:
                    heapq.heappush(heap, (rp, p))
        return "".join(sym)

    # ------------------------------------------------------------------ training

    @classmethod
    def train(cls, corpus, vocab_size: int, special_tokens: Iterable[str] = (), min_frequency: int = 1,
              pattern: str = GPT2_PATTERN, progress: bool | Callable[[str], None] = True,
              workers: int | None = None) -> "BPETokenizer":
        """Learn merges until the vocabulary (specials + 256 bytes + merge results) has
        `vocab_size` tokens, or no pair occurs at least `min_frequency` times.

        corpus: a file path (str or Path), or an iterable whose items are documents (str) or
        file paths (Path). Files are streamed in blocks, never held whole. Each document is
        pre-tokenized on its own.
        Rules (they fix the result exactly, whatever the document order): pairs are counted
        inside pre-tokens only, overlapping occurrences included ("aaa" has two "aa"); special
        tokens never take part; equal counts go to the lexicographically greatest
        (bytes_a, bytes_b).
        progress: True prints a line to stderr every few seconds (only for trainings that take
        that long), False prints nothing, a callable receives each line instead.
        workers: processes that count pre-tokens (None: 2 when the machine has them).
        """
        if isinstance(special_tokens, str):
            raise TypeError(f"special_tokens must be a list of strings, not the string {special_tokens!r}")
        special_tokens = list(special_tokens)
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"duplicate special tokens in {special_tokens!r}")
        n_base = 256 + len(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size < n_base:
            raise ValueError(f"vocab_size={vocab_size!r} is smaller than the 256 byte tokens plus "
                             f"{len(special_tokens)} special tokens ({n_base})")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
        report = _Progress(progress)
        cls([], special_tokens, pattern)   # fail early on a bad pattern or special token
        counts = _count_pretokens(corpus, pattern, special_tokens, workers, report)
        merges = _learn_merges(counts, vocab_size - n_base, min_frequency, report)
        report.done(f"bpe: {len(merges):,} merges, vocab {n_base + len(set(a + b for a, b in merges)):,}")
        return cls(merges, special_tokens, pattern)

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        """The JSON-ready content of the saved file."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": self._pattern,
            "special_tokens": dict(sorted(self._special.items(), key=lambda kv: kv[1])),
            "vocab": list(self._id_str),
            "merges": [[bytes_to_token_str(a), bytes_to_token_str(b)] for a, b in self._merges],
        }

    def _canonical_json(self) -> str:
        """The saved text: one key per line, one vocab entry or merge per line."""
        def dump(x):
            return json.dumps(x, ensure_ascii=False)
        lines = []
        for key, value in self.to_dict().items():
            if isinstance(value, list):
                body = ",\n".join(f"  {dump(v)}" for v in value)
                lines.append(f' {dump(key)}: [\n{body}\n ]' if value else f" {dump(key)}: []")
            else:
                lines.append(f" {dump(key)}: {dump(value)}")
        return "{\n" + ",\n".join(lines) + "\n}"

    def fingerprint(self) -> str:
        """Short hex id of the tokenizer (sha256 of its saved JSON), to key data caches."""
        return hashlib.sha256(self._canonical_json().encode("utf-8")).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as versioned JSON (atomically: temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self._canonical_json() + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, d, source: str = "tokenizer data") -> "BPETokenizer":
        def bad(msg):
            return ValueError(f"{source}: {msg}")
        if not isinstance(d, dict):
            raise bad("expected a JSON object")
        if d.get("format") != FORMAT_NAME:
            raise bad(f'"format" is {d.get("format")!r}, expected {FORMAT_NAME!r}')
        if d.get("version") != FORMAT_VERSION:
            raise bad(f'unsupported version {d.get("version")!r} (this code reads version {FORMAT_VERSION})')
        for key, typ in (("pattern", str), ("special_tokens", dict), ("vocab", list), ("merges", list)):
            if not isinstance(d.get(key), typ):
                raise bad(f'"{key}" is missing or not a {typ.__name__}')
        special = d["special_tokens"]
        vocab_strs = d["vocab"]
        try:
            merges = []
            for m in d["merges"]:
                if not (isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m)):
                    raise ValueError(f"merge {m!r} is not a pair of token strings")
                merges.append((token_str_to_bytes(m[0]), token_str_to_bytes(m[1])))
            vocab = {}
            special_ids = set(special.values())
            for i, s in enumerate(vocab_strs):
                if not isinstance(s, str):
                    raise ValueError(f"vocab entry {i} is not a string")
                if i in special_ids:
                    continue
                vocab[i] = token_str_to_bytes(s)
            for s, i in special.items():
                if not isinstance(i, int) or not 0 <= i < len(vocab_strs) or vocab_strs[i] != s:
                    raise ValueError(f"special token {s!r} has id {i!r}, which does not match the vocab list")
            return cls(merges, special, d["pattern"], vocab)
        except ValueError as e:
            raise bad(str(e)) from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        """Read a file written by save(); ValueError if it is malformed or truncated."""
        text = Path(path).read_text(encoding="utf-8")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); the file may be truncated or not a tokenizer file") from None
        return cls.from_dict(d, str(path))

    @classmethod
    def from_gpt2_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike,
                        special_tokens: Iterable[str] | None = None, pattern: str = GPT2_PATTERN) -> "BPETokenizer":
        """Load GPT-2 / Hugging Face byte-level BPE files (vocab.json: token string -> id;
        merges.txt: one "a b" merge per line, with or without a "#version" header line).

        special_tokens: None treats every vocab entry that is neither a byte nor a merge result
        as a special token (GPT-2's "<|endoftext|>", RoBERTa's "<s>", "<mask>", ...). A list
        names them instead: each keeps its vocab.json id, or gets the next free id if absent.
        """
        try:
            vocab_in = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{vocab_json}: not valid JSON ({e})") from None
        if not isinstance(vocab_in, dict) or not all(isinstance(i, int) for i in vocab_in.values()):
            raise ValueError(f"{vocab_json}: expected a JSON object mapping token strings to integer ids")
        merges = []
        lines = Path(merges_txt).read_text(encoding="utf-8").split("\n")
        for lineno, line in enumerate(lines, 1):
            line = line.rstrip("\r")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{merges_txt}:{lineno}: expected two tokens separated by one space, got {line!r}")
            try:
                merges.append((token_str_to_bytes(parts[0]), token_str_to_bytes(parts[1])))
            except ValueError as e:
                raise ValueError(f"{merges_txt}:{lineno}: {e}") from None
        produced = {bytes([b]) for b in range(256)} | {a + b for a, b in merges}
        special, vocab = {}, {}
        listed = None if special_tokens is None else list(special_tokens)
        for s, i in vocab_in.items():
            if listed is not None and s in listed:
                special[s] = i
                continue
            try:
                b = token_str_to_bytes(s)
            except ValueError:
                b = None
            if b is not None and b in produced:
                vocab[i] = b
            elif listed is None:
                special[s] = i
            else:
                raise ValueError(f"{vocab_json}: entry {s!r} (id {i}) is neither a byte, a merge result, nor one of the "
                                 f"special_tokens {listed!r}")
        if listed is None and len(special) > _MAX_AUTO_SPECIALS:
            raise ValueError(f"{vocab_json}: {len(special)} entries (e.g. {list(special)[:3]!r}) are neither bytes nor "
                             f"merge results; {merges_txt} may be truncated. Name the special tokens with special_tokens=[...]")
        next_id = len(vocab_in)
        for s in listed or ():
            if s not in special:
                special[s] = next_id
                next_id += 1
        try:
            return cls(merges, special, pattern, vocab)
        except ValueError as e:
            raise ValueError(f"{vocab_json}, {merges_txt}: {e}") from None

    def save_gpt2_files(self, directory: str | os.PathLike, prefix: str = "") -> tuple[Path, Path]:
        """Write vocab.json and merges.txt (with a "#version: 0.2" header), the files that
        GPT-2 code and Hugging Face's ByteLevelBPETokenizer read. Returns their paths. The
        pattern is not part of this format (readers assume GPT-2's)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab_path, merges_path = directory / f"{prefix}vocab.json", directory / f"{prefix}merges.txt"
        vocab_out = {s: i for i, s in enumerate(self._id_str)}
        if len(vocab_out) != len(self._id_str):
            raise ValueError("a special token has the same string as a byte-level token; vocab.json cannot hold both")
        vocab_path.write_text(json.dumps(vocab_out, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in self._merges]
        merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return vocab_path, merges_path


# ---------------------------------------------------------------------- training internals

class _Progress:
    """Rate-limited progress lines: nothing for the first 2 s, then at most one per 2 s."""

    every = 2.0

    def __init__(self, progress):
        self.emit = (lambda line: print(line, file=sys.stderr, flush=True)) if progress is True else (progress or None)
        self.t0 = self.last = time.perf_counter()
        self.spoke = False

    def __call__(self, line_fn: Callable[[], str]) -> None:
        if self.emit is None:
            return
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.spoke = True
            self.emit(f"{line_fn()} | {now - self.t0:.1f} s")

    def done(self, line: str) -> None:
        if self.emit is not None and self.spoke:
            self.emit(f"{line} | {time.perf_counter() - self.t0:.1f} s")


def _safe_cut(buf: str, special_re) -> int:
    """A position at which `buf` can be cut without changing its pre-tokens: just after a
    newline that has non-space characters on both sides ("a\\nb"). GPT-2's pattern never
    matches across such a newline: the newline is a pre-token on its own. Returns 0 if none."""
    pos = len(buf) - 1
    while True:
        pos = buf.rfind("\n", 0, pos)
        if pos <= 0:
            return 0
        if not buf[pos - 1].isspace() and not buf[pos + 1].isspace():
            cut = pos + 1
            if special_re is not None:    # do not cut through a special token that contains "\n"
                lo = max(0, cut - 256)
                if any(m.start() < cut < m.end() for m in special_re.finditer(buf, lo, cut + 256)):
                    continue
            return cut


def read_file_blocks(path: str | os.PathLike, stop: int | None = None, special_tokens: Iterable[str] = ()) -> Iterator[str]:
    """Stream a UTF-8 file as texts whose pre-tokens, taken one text at a time, are exactly
    those of the whole file (see _safe_cut). `stop`: read only the first `stop` bytes."""
    special_re = _special_regex(special_tokens)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {str(path)!r} does not exist (to train on a text, pass [text])")
    decoder = codecs.getincrementaldecoder("utf-8")()   # strict: a file that is not UTF-8 raises
    left = stop if stop is not None else -1
    buf, offset = "", 0
    with open(path, "rb") as f:   # bytes in, so "\r\n" stays as written
        while left != 0:
            block = f.read(_READ_BLOCK if left < 0 else min(_READ_BLOCK, left))
            if not block:
                break
            left = left - len(block) if left > 0 else left
            try:
                buf += decoder.decode(block)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not valid UTF-8 near byte {offset + e.start:,} ({e.reason})") from None
            offset += len(block)
            cut = _safe_cut(buf, special_re)
            if cut:
                yield buf[:cut]
                buf = buf[cut:]
    try:
        buf += decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8, it ends inside a character ({e.reason})") from None
    if buf:
        yield buf


def _corpus_texts(corpus, special_tokens) -> Iterator[str]:
    """Yield the corpus as texts that can be pre-tokenized independently."""
    if isinstance(corpus, (str, os.PathLike)):
        corpus = [Path(corpus)]
    for item in corpus:
        if isinstance(item, os.PathLike):
            yield from read_file_blocks(item, special_tokens=special_tokens)
        elif isinstance(item, str):
            yield item
        else:
            raise TypeError(f"corpus items must be str (a document) or Path (a file), got {type(item).__name__}")


_worker_state: dict = {}


def _can_fork() -> bool:
    import multiprocessing as mp
    return "fork" in mp.get_all_start_methods()


def _encode_part(bounds: tuple[int, int]) -> list[list[int]]:
    """Encode texts[lo:hi] of the batch that _encode_parallel left in _worker_state (a forked
    worker inherits the tokenizer, its cache and the texts without pickling them)."""
    tok, texts, special_re = _worker_state["encode_job"]
    lo, hi = bounds
    return [tok._encode(t, special_re) for t in texts[lo:hi]]


def _encode_parallel(tok: "BPETokenizer", texts: list[str], special_re, workers: int) -> list[list[int]]:
    """encode_batch over `workers` contiguous parts: this process encodes the first, forked
    workers the others, and the parts are joined in order."""
    import multiprocessing as mp
    cuts = [len(texts) * k // workers for k in range(workers + 1)]
    parts = list(zip(cuts[:-1], cuts[1:]))
    _worker_state["encode_job"] = (tok, texts, special_re)
    try:
        with mp.get_context("fork").Pool(workers - 1) as pool:
            rest = pool.map_async(_encode_part, parts[1:])
            out = _encode_part(parts[0])
            for part in rest.get():
                out.extend(part)
    finally:
        del _worker_state["encode_job"]
    return out


def _count_texts(texts: list[str]) -> Counter:
    """Pre-token counts of some texts, split on special tokens first (also runs in worker
    processes, which _init_worker has given the compiled regexes)."""
    pat, special_re = _worker_state["pat"], _worker_state["special_re"]
    counts: Counter = Counter()
    for text in texts:
        for part in (special_re.split(text) if special_re is not None else (text,)):
            counts.update(pat.findall(part))
    return counts


def _init_worker(pattern: str, specials: list[str]) -> None:
    _worker_state["pat"], _worker_state["special_re"] = regex.compile(pattern), _special_regex(specials)


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch, n = [], 0
    for t in texts:
        batch.append(t)
        n += len(t)
        if n >= size:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def _count_pretokens(corpus, pattern, specials, workers, report) -> Counter:
    """Distinct pre-tokens with their frequencies. The first _POOL_AFTER_CHARS are counted
    here; the rest of a larger corpus goes to worker processes (the regex scan is the slow part)."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    batches = _batches(_corpus_texts(corpus, specials), _BATCH_CHARS)
    _init_worker(pattern, specials)
    counts: Counter = Counter()
    seen = 0
    for batch in batches:   # count in-process until the corpus proves large
        counts.update(_count_texts(batch))
        seen += sum(map(len, batch))
        report(lambda: f"bpe: counted {seen / 1e6:,.1f} M chars, {len(counts):,} distinct pre-tokens")
        if workers > 1 and seen >= _POOL_AFTER_CHARS:
            break
    else:
        return counts
    import multiprocessing as mp
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(pattern, specials)) as pool:
        for part in pool.imap_unordered(_count_texts, batches):
            counts.update(part)
            report(lambda: f"bpe: counting, {len(counts):,} distinct pre-tokens")
    return counts


def _learn_merges(pretokens: Counter, max_new_tokens: int, min_frequency: int, report) -> list[tuple[bytes, bytes]]:
    """The BPE training loop over distinct pre-tokens ("words") and their frequencies.

    State, kept up to date after each merge instead of recounting:
      words[w]  the word as a symbol string; freqs[w] how often it occurs
      counts    pair (2-symbol string) -> occurrences, weighted by word frequency
      where     pair -> indices of words that contain it (may also hold words that no longer
                do: they are skipped when found, which is cheaper than removing them)
      heap      (-count, order key, pair); an entry whose count is out of date is fixed when
                popped (lazy invalidation), and every count increase pushes a fresh entry
    A merge touches only the words that contain its pair, and in them only the neighbours of
    each occurrence, so one merge costs time in proportion to where the pair occurs.
    """
    words, freqs = [], []
    for piece, f in pretokens.items():
        try:
            b = piece.encode("utf-8")
        except UnicodeEncodeError:
            raise _surrogate_error(piece, "the corpus (pre-token)") from None
        if len(b) > 1:           # single bytes have no pairs
            words.append(b.decode("latin-1"))
            freqs.append(f)
    del pretokens

    counts: dict[str, int] = defaultdict(int)
    where: dict[str, set[int]] = defaultdict(set)
    for w, s in enumerate(words):
        f = freqs[w]
        for p in map(add, s, s[1:]):
            counts[p] += f
            where[p].add(w)

    # Ties go to the greatest (bytes_a, bytes_b); heapq pops the smallest, so the key is an
    # order-reversing code of the bytes: each byte x -> chr(255 - x), then an end mark chr(256)
    # that sorts after every byte (so a prefix sorts after its extensions, as it must).
    sym_bytes = [bytes([b]) for b in range(256)]
    sym_of = {b: i for i, b in enumerate(sym_bytes)}
    rev = [bytes(255 - x for x in b).decode("latin-1") + "\u0100" for b in sym_bytes]

    def order_key(p: str) -> str:
        return rev[ord(p[0])] + rev[ord(p[1])]

    heap = [(-c, order_key(p), p) for p, c in counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    n_new = 0
    while n_new < max_new_tokens and heap:
        neg, key, pair = heapq.heappop(heap)
        c = counts.get(pair, 0)
        if c != -neg:          # stale entry
            if 0 < c < -neg:
                heapq.heappush(heap, (-c, key, pair))
            continue
        if c < min_frequency:
            break
        a_b, b_b = sym_bytes[ord(pair[0])], sym_bytes[ord(pair[1])]
        merges.append((a_b, b_b))
        new_b = a_b + b_b
        if new_b not in sym_of:    # two merge paths can make the same bytes; they share one token
            sym_of[new_b] = len(sym_bytes)
            sym_bytes.append(new_b)
            rev.append(bytes(255 - x for x in new_b).decode("latin-1") + "\u0100")
            n_new += 1
        new = chr(sym_of[new_b])
        touched = set()
        for w in where.pop(pair):
            s = words[w]
            i = s.find(pair)
            if i < 0:
                continue              # stale index entry
            f = freqs[w]
            t = s.replace(pair, new)  # left to right, non-overlapping: the same occurrences as find
            n = len(s)
            end = -1                  # end of the previous occurrence in s
            k = 0                     # occurrences so far, so i - k is the position in t
            while i >= 0:
                nxt = s.find(pair, i + 2)
                # pairs destroyed: (left, a) unless the previous occurrence already took it, (b, right)
                if i > 0 and i != end:
                    counts[s[i - 1:i + 1]] -= f
                if i + 2 < n:
                    counts[s[i + 1:i + 3]] -= f
                # pairs created: (left, new) and (new, right), the latter unless the next
                # occurrence is adjacent (its (new, new) is counted as that one's left pair)
                j = i - k
                if j > 0:
                    p = t[j - 1:j + 1]
                    counts[p] += f
                    where[p].add(w)
                    touched.add(p)
                if j + 1 < len(t) and nxt != i + 2:
                    p = t[j:j + 2]
                    counts[p] += f
                    where[p].add(w)
                    touched.add(p)
                end, i, k = i + 2, nxt, k + 1
            words[w] = t
        del counts[pair]
        for p in touched:
            heapq.heappush(heap, (-counts[p], order_key(p), p))
        report(lambda: f"bpe: merge {len(merges):,}/{max_new_tokens:,} | count {c:,}")
    return merges
