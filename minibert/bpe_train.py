"""Fast BPE training: the same merges as `bpe.train`, in time for real corpora.

The plain trainer in bpe.py recounts every pair of the corpus after every merge (merges x
corpus size). This one does the work once and then keeps it up to date:
  1. stream the corpus (files in blocks, iterators lazily) and count each distinct pre-token
     once (`count_pretokens`; past a few MB, worker processes share the regex scan, which is
     the slow part);
  2. index the pairs of those distinct "words" and pick the best with a heap; a merge then
     touches only the words that contain its pair (`learn_merges`).
`train` runs both and returns the merges; `BPETokenizer.train_from_files` and
`train_from_iterator` (tokenizer.py, which imports this module) are the entry points people
call, and `tokenizer.train_tokenizer` is the train-and-save program behind
scripts/train_tokenizer.py.

The rules that fix the result (pairs counted inside pre-tokens, overlaps included; ties to
the greatest (bytes_a, bytes_b); special tokens never merged) are those of bpe.py, and
tests/test_tokenizer.py compares the two on Hypothesis-drawn corpora.
"""
from __future__ import annotations

import codecs
import heapq
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, defaultdict
from itertools import chain
from operator import add
from pathlib import Path
from typing import Callable, Iterable, Iterator

import regex

from minibert.bpe import GPT2_PATTERN, Merge, special_regex, surrogate_error

_READ_BLOCK = 1 << 20        # characters read from a corpus file at a time
_BATCH_CHARS = 1 << 20       # characters of text per pre-token counting task
_POOL_AFTER_CHARS = 2 << 20  # a corpus larger than this is counted by worker processes too
_FILE_NAME_CHARS = 4096      # a text longer than this (or with a newline) is not checked as a file name


class Progress:
    """Rate-limited progress lines: nothing for the first 2 s, then at most one per 2 s."""

    every = 2.0

    def __init__(self, progress: bool | Callable[[str], None]):
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


# ---------------------------------------------------------------------- the corpus, streamed

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
    special_re = special_regex(special_tokens)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {str(path)!r} does not exist (to train on texts, use train_from_iterator)")
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


def read_files(paths: str | os.PathLike | Iterable[str | os.PathLike], special_tokens: Iterable[str] = ()) -> Iterator[str]:
    """The texts of `paths` (one path, or several), read lazily in blocks. Every path is
    checked before the first is read, so a typo in the last one fails at once."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"paths must be file paths (str or Path), got {type(p).__name__}")
        files.append(Path(p))
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"corpus file {str(f)!r} does not exist (to train on texts, use train_from_iterator)")
    special_tokens = list(special_tokens)
    return chain.from_iterable(read_file_blocks(f, special_tokens=special_tokens) for f in files)


def documents(texts: Iterable[str]) -> Iterator[str]:
    """The texts of train_from_iterator, consumed lazily, refusing what are plainly file paths:
    a bare str, Path items, or texts that all turn out to name existing files."""
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"texts is a single {type(texts).__name__} ({texts[:40]!r}), not an iterable of documents: "
                         f"to train on that text pass [text]; to read a file, did you mean train_from_files?")
    if isinstance(texts, os.PathLike):
        raise ValueError(f"texts is a path ({str(texts)!r}); did you mean train_from_files?")
    return _documents(iter(texts))


def _documents(texts: Iterator[str]) -> Iterator[str]:
    # Whether every text so far names a file is known only once the texts are used up; a
    # corpus that is a list of file names is tiny, so finding out after counting costs nothing.
    n, all_files, first = 0, True, None
    for t in texts:
        if not isinstance(t, str):
            hint = ": train_from_files reads files" if isinstance(t, os.PathLike) else ""
            raise TypeError(f"texts must be str documents, got {type(t).__name__}{hint}")
        if all_files and not (len(t) < _FILE_NAME_CHARS and "\n" not in t and os.path.isfile(t)):
            all_files = False
        if n == 0:
            first = t
        n += 1
        yield t
    if n and all_files:
        raise ValueError(f"each of the {n} texts given to train_from_iterator names an existing file (e.g. {first!r}), "
                         f"so it would train on the file names, not their contents; did you mean train_from_files?")


# ---------------------------------------------------------------------- counting pre-tokens

_worker_state: dict = {}


def _init_worker(pattern: str, specials: list[str]) -> None:
    _worker_state["pat"], _worker_state["special_re"] = regex.compile(pattern), special_regex(specials)


def _count_texts(texts: list[str]) -> Counter:
    """Pre-token counts of some texts, split on special tokens first (also runs in worker
    processes, which _init_worker has given the compiled regexes)."""
    pat, special_re = _worker_state["pat"], _worker_state["special_re"]
    counts: Counter = Counter()
    for text in texts:
        for part in (special_re.split(text) if special_re is not None else (text,)):
            counts.update(pat.findall(part))
    return counts


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


def count_pretokens(texts: Iterable[str], pattern: str, specials: list[str], workers: int | None,
                    report: Callable) -> Counter:
    """Distinct pre-tokens with their frequencies. The first _POOL_AFTER_CHARS are counted
    here; the rest of a larger corpus goes to worker processes (the regex scan is the slow part)."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    batches = _batches(iter(texts), _BATCH_CHARS)
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
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(pattern, specials)) as pool:
        for part in pool.imap_unordered(_count_texts, batches):
            counts.update(part)
            report(lambda: f"bpe: counting, {len(counts):,} distinct pre-tokens")
    return counts


# ---------------------------------------------------------------------- learning the merges

def learn_merges(pretokens: Counter, max_new_tokens: int, min_frequency: int, report: Callable) -> list[Merge]:
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
            raise surrogate_error(piece, "the corpus (pre-token)") from None
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

    merges: list[Merge] = []
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


def train(texts: Iterable[str], vocab_size: int, special_tokens: Iterable[str] = (), min_frequency: int = 1,
          pattern: str = GPT2_PATTERN, progress: bool | Callable[[str], None] = True,
          workers: int | None = None) -> list[Merge]:
    """The merges `bpe.train` would learn from `texts`, computed incrementally.

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
    report = Progress(progress)
    counts = count_pretokens(texts, pattern, special_tokens, workers, report)
    merges = learn_merges(counts, vocab_size - n_base, min_frequency, report)
    report.done(f"bpe: {len(merges):,} merges, vocab {n_base + len(set(a + b for a, b in merges)):,}")
    return merges
