"""The byte-level BPE tokenizer (as in GPT-2 and RoBERTa): a model of merges that encodes,
decodes, and reads and writes its files.

bpe.py defines BPE in plain code (start there); this module is its fast encoder, and
bpe_train.py its fast trainer; `train_tokenizer` at the end trains, saves and measures one
(scripts/train_tokenizer.py). What both tokenizers share (look-ups, cutting out special
tokens, the piece cache, the saved JSON and its fingerprint) is vocab.Vocabulary. Pipeline of
`encode`:
  1. special tokens ("[MASK]", "<|endoftext|>") are cut out of the text first, longest first;
  2. each remaining part is split into pre-tokens with a regex (GPT-2's by default);
  3. each pre-token's UTF-8 bytes are merged by rank: always the adjacent pair whose merge was
     learned earliest, leftmost first, until no learned pair is left (`bpe.encode`, fast).

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
training raise ValueError naming the position. See docs/tokenizer.md for a walk-through.
"""
from __future__ import annotations

import heapq
import json
import multiprocessing as mp
import os
import time
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable

import regex

from minibert import bpe_train
from minibert.atomic import atomic_write
from minibert.corpus import heldout_split
from minibert.bpe import GPT2_PATTERN, bytes_to_token_str, has_surrogate, surrogate_error, token_str_to_bytes
from minibert.offsets import byte_spans
from minibert.vocab import Vocabulary, read_json

# BERT's special tokens, in the order of their ids when a tokenizer is trained with them
SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]
FORMAT_NAME = "minibert-bpe"
FORMAT_VERSION = 1

_MAX_AUTO_SPECIALS = 256    # more unexplained vocab.json entries than this means broken files
_PARALLEL_ENCODE_CHARS = 2 << 20  # an encode_batch larger than this is split across processes


class BPETokenizer(Vocabulary):
    """A byte-level BPE tokenizer: merges (in rank order), special tokens, a pre-token regex.

    Build one with `train_from_files`, `train_from_iterator`, `load`, or `from_gpt2_files`. The constructor takes the parts
    directly: `merges` is a list of (bytes, bytes) in rank order; `special_tokens` is a list of
    strings (ids 0, 1, ... in that order) or a dict string -> id; `vocab` (optional) maps every
    non-special id to its bytes, for files whose ids are laid out differently from the default
    (specials first, then the 256 bytes, then merge results in order).

    encode (Vocabulary.encode) raises ValueError for a text with a lone surrogate.
    """
    _unknown_hint = "tokens are GPT-2 byte-level strings like 'Ġthe', or special tokens"
    _one_per_line = ("vocab", "merges")

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
            if has_surrogate(s):
                raise surrogate_error(s, f"special token {s!r}")
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
        super().__init__()

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
    def pattern(self) -> str:
        return self._pattern

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, special_tokens={self._special!r})"

    # ------------------------------------------------------------------ encoding

    def encode_batch(self, texts: Iterable[str], allowed_special: str | Iterable[str] = "all",
                     workers: int | None = None) -> list[list[int]]:
        """encode() for each text (they share the pre-token cache).

        A batch of more than _PARALLEL_ENCODE_CHARS characters is split into `workers`
        contiguous parts (None: 2 when the machine has them), encoded side by side in forked
        processes; the ids are the same as encoding one text at a time."""
        mode = self._mode(allowed_special)
        texts = texts if isinstance(texts, list) else list(texts)
        if workers is None:
            workers = min(2, os.cpu_count() or 1)
        if workers > 1 and _can_fork() and sum(map(len, texts)) >= _PARALLEL_ENCODE_CHARS:
            return _encode_parallel(self, texts, mode, workers)
        return [self._encode(t, mode) for t in texts]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes the ids stand for; ValueError for an id outside the vocabulary."""
        ids = ids if isinstance(ids, list) else list(ids)
        self._check_ids(ids)
        return b"".join([self._id_bytes[i] for i in ids])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; byte sequences that are not valid UTF-8 (a token sequence cut in the
        middle of a character) become U+FFFD instead of raising."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _encode_ordinary(self, text: str, out: list[int], cache) -> None:
        # map + chain keep the per-pre-token loop in C; only cache misses run Python code.
        out.extend(chain.from_iterable(map(cache.__getitem__, self._pat.findall(text))))

    def _offsets_ordinary(self, text: str, start: int, allowed: frozenset, ids: list, offsets: list) -> None:
        for m in self._pat.finditer(text):   # each pre-token's ids, and the characters their bytes are of
            piece_ids = self._encode_piece(m.group(), allowed)
            ids += piece_ids
            offsets += byte_spans(m.group(), start + m.start(), [len(self._id_bytes[i]) for i in piece_ids])

    def _encode_piece(self, piece: str, allowed: frozenset) -> list[int]:
        """Ids of one pre-token (a cache miss); they do not depend on the allowed special tokens."""
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
    def train_from_files(cls, paths: str | os.PathLike | Iterable[str | os.PathLike], vocab_size: int,
                         special_tokens: Iterable[str] = (), min_frequency: int = 1, pattern: str = GPT2_PATTERN,
                         progress: bool | Callable[[str], None] = True, workers: int | None = None) -> "BPETokenizer":
        """Learn a tokenizer from UTF-8 text files: `paths` is one path (str or Path) or an
        iterable of them. Every path is checked first (FileNotFoundError); files are streamed
        in blocks, never held whole. Arguments after `paths` as in train_from_iterator."""
        special_tokens = cls._check_training(special_tokens, pattern)
        return cls._train(bpe_train.read_files(paths, special_tokens), vocab_size, special_tokens, min_frequency,
                          pattern, progress, workers)

    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int, special_tokens: Iterable[str] = (),
                            min_frequency: int = 1, pattern: str = GPT2_PATTERN,
                            progress: bool | Callable[[str], None] = True,
                            workers: int | None = None) -> "BPETokenizer":
        """Learn a tokenizer from documents: `texts` is an iterable of str (a list, a generator;
        consumed once, lazily). Each document is pre-tokenized on its own.

        Learns merges until the vocabulary (specials + 256 bytes + merge results) has
        `vocab_size` tokens, or no pair occurs at least `min_frequency` times. The merges are
        those of the plain `bpe.train`, whatever the document order (ties go to the
        lexicographically greatest (bytes_a, bytes_b); special tokens never take part).
        progress: True prints a line to stderr every few seconds (only for trainings that take
        that long), False prints nothing, a callable receives each line instead.
        workers: processes that count pre-tokens (None: 2 when the machine has them).

        A bare str, or texts that all name existing files, raise ValueError: file paths go to
        train_from_files.
        """
        special_tokens = cls._check_training(special_tokens, pattern)
        return cls._train(bpe_train.documents(texts), vocab_size, special_tokens, min_frequency, pattern,
                          progress, workers)

    @classmethod
    def _check_training(cls, special_tokens, pattern) -> list[str]:
        """The special tokens as a list, once the constructor has accepted them and the pattern,
        so that a bad one fails before any text is read."""
        return list(cls([], special_tokens, pattern).special_tokens)

    @classmethod
    def _train(cls, texts, vocab_size, special_tokens, min_frequency, pattern, progress, workers) -> "BPETokenizer":
        merges = bpe_train.train(texts, vocab_size, special_tokens, min_frequency, pattern, progress, workers)
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
        return cls.from_dict(read_json(path), str(path))

    @classmethod
    def from_gpt2_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike,
                        special_tokens: Iterable[str] | None = None, pattern: str = GPT2_PATTERN) -> "BPETokenizer":
        """Load GPT-2 / Hugging Face byte-level BPE files (vocab.json: token string -> id;
        merges.txt: one "a b" merge per line, with or without a "#version" header line).

        special_tokens: None treats every vocab entry that is neither a byte nor a merge result
        as a special token (GPT-2's "<|endoftext|>", RoBERTa's "<s>", "<mask>", ...). A list
        names them instead: each keeps its vocab.json id, or gets the next free id if absent.
        """
        vocab_in = read_json(vocab_json)
        if not all(isinstance(i, int) for i in vocab_in.values()):
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
        atomic_write(vocab_path, json.dumps(vocab_out, ensure_ascii=False))
        lines = ["#version: 0.2"] + [f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in self._merges]
        atomic_write(merges_path, "\n".join(lines) + "\n")
        return vocab_path, merges_path


# ---------------------------------------------------------------------- the train-and-save program

def train_tokenizer(corpus: Iterable[str | os.PathLike], out: str | os.PathLike, vocab_size: int = 8192,
                    special_tokens: Iterable[str] | None = None, min_frequency: int = 2, pattern: str = GPT2_PATTERN,
                    heldout_bytes: int = 1_000_000, gpt2_dir: str | os.PathLike | None = None,
                    workers: int | None = None, progress: bool | Callable[[str], None] = True) -> dict:
    """Train a tokenizer on corpus files, save it to `out` (and GPT-2 files to `gpt2_dir`), and
    return a summary: vocab_size, merges, train_s, fingerprint, and, when the last
    `heldout_bytes` of the last file were kept out of training, the compression on them
    (heldout_bytes, heldout_tokens, bytes_per_token, encode_s).
    special_tokens: None gives BERT's (SPECIAL_TOKENS)."""
    special_tokens = list(SPECIAL_TOKENS if special_tokens is None else special_tokens)
    files = [Path(c) for c in ([corpus] if isinstance(corpus, (str, os.PathLike)) else corpus)]
    if not files:
        raise ValueError("no corpus files given")
    for f in files:   # every file exists, before any work
        if not f.is_file():
            raise FileNotFoundError(f"corpus file {str(f)!r} does not exist")
    train_bytes, heldout = heldout_split(files[-1], heldout_bytes)
    texts = chain(bpe_train.read_files(files[:-1], special_tokens),
                  bpe_train.read_file_blocks(files[-1], train_bytes, special_tokens))
    emit = bpe_train.Progress(progress).emit
    if emit is not None:
        total = sum(f.stat().st_size for f in files)
        emit(f"corpus: {len(files)} file(s), {total / 1e6:,.1f} MB; held out {len(heldout.encode()) / 1e6:,.2f} MB "
             f"| vocab_size {vocab_size} | specials {special_tokens}")

    t0 = time.perf_counter()
    tok = BPETokenizer.train_from_iterator(texts, vocab_size, special_tokens, min_frequency, pattern,
                                           progress=progress, workers=workers)
    train_s = time.perf_counter() - t0
    tok.save(out)
    if gpt2_dir:
        tok.save_gpt2_files(gpt2_dir)

    summary = {"out": str(out), "vocab_size": tok.vocab_size, "merges": len(tok.merges),
               "train_s": round(train_s, 2), "fingerprint": tok.fingerprint()}
    if heldout:
        t0 = time.perf_counter()
        n_tokens = len(tok.encode(heldout, allowed_special="all"))
        encode_s = time.perf_counter() - t0
        n_bytes = len(heldout.encode("utf-8"))
        summary |= {"heldout_bytes": n_bytes, "heldout_tokens": n_tokens,
                    "bytes_per_token": round(n_bytes / max(n_tokens, 1), 3), "encode_s": round(encode_s, 3)}
    return summary


# ---------------------------------------------------------------------- encode_batch in processes

_worker_state: dict = {}


def _can_fork() -> bool:
    return "fork" in mp.get_all_start_methods()


def _encode_part(bounds: tuple[int, int]) -> list[list[int]]:
    """Encode texts[lo:hi] of the batch that _encode_parallel left in _worker_state (a forked
    worker inherits the tokenizer, its cache and the texts without pickling them)."""
    tok, texts, mode = _worker_state["encode_job"]
    lo, hi = bounds
    return [tok._encode(t, mode) for t in texts[lo:hi]]


def _encode_parallel(tok: "BPETokenizer", texts: list[str], mode, workers: int) -> list[list[int]]:
    """encode_batch over `workers` contiguous parts: this process encodes the first, forked
    workers the others, and the parts are joined in order."""
    cuts = [len(texts) * k // workers for k in range(workers + 1)]
    parts = list(zip(cuts[:-1], cuts[1:]))
    _worker_state["encode_job"] = (tok, texts, mode)
    try:
        with mp.get_context("fork").Pool(workers - 1) as pool:
            rest = pool.map_async(_encode_part, parts[1:])
            out = _encode_part(parts[0])
            for part in rest.get():
                out.extend(part)
    finally:
        del _worker_state["encode_job"]
    return out
