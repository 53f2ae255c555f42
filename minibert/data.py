"""BERT pretraining data: corpus reading, a memory-mapped token cache, NSP pairs, MLM masking.

The pipeline follows Google's original ``create_pretraining_data.py`` (Devlin et al. 2019,
"BERT: Pre-training of Deep Bidirectional Transformers", section 3.1 and appendix A.1):

    documents --read_documents / default_corpus--> Document(sentences, source, name)
              --TokenizedCorpus.build--> tokens.npy, sentence_offsets.npy, doc_offsets.npy
                                         (memory-mapped, cached by corpus and tokenizer)
              --PretrainingData.epoch(e)--> EpochInstances: [CLS] A [SEP] B [SEP], masked
              --PretrainingData.batches--> (next_position, batch dict of host int64 arrays)

Dimension letters: N instances in an epoch, B batch, T sequence length (max_seq_len for an
epoch, the longest row for a batch), P max predictions per sequence, S sentences, D documents.

Corpus text formats (``format=`` of read_documents; "auto" picks one per file):
    "lines"  one sentence per line, a blank line between documents (the original BERT format).
    "text"   running text: paragraphs separated by blank lines are documents; a paragraph's
             lines are joined and split into sentences after . ! or ? (optionally followed by
             closing quotes or brackets) when whitespace and then an upper-case letter, digit,
             opening quote or bracket follow (``SENTENCE_BOUNDARY``). Abbreviations such as
             "Mr. Smith" are split too; that costs BERT little.
    "auto"   a file is "lines" when at least half of its non-blank lines end with sentence
             punctuation and at most a fifth of them contain a sentence boundary inside;
             otherwise "text". Hard-wrapped prose fails the first test (its lines end
             mid-sentence), one-paragraph-per-line prose fails the second.
Bytes that are not valid UTF-8 become U+FFFD, with one warning per file counting them.

Pretraining instances (PretrainingData.epoch) for each document, exactly as the original:
a target length of max_seq_len - 3 tokens, or with probability short_seq_prob a uniform one in
[2, max_seq_len - 3] (drawn once per document, as the original does); whole sentences are
packed into a chunk until it reaches the target; A is the chunk's first a_end sentences
(a_end uniform in [1, len(chunk) - 1]); B is the rest (label 0), or with probability 1/2, and
always for a one-sentence chunk, sentences from a random other document starting at a random
sentence (label 1), in which case the unused rest of the chunk is put back for the next chunk.
truncate_seq_pair then removes tokens from the longer segment (B on a tie), each from its front
or back with probability 1/2. One optional change, on by default (PretrainingData's
balance_nsp): a chunk that could go either way takes the 1/2 coin only while random labels are
not ahead in the epoch, because on short documents the forced one-sentence randoms would
otherwise make ~72% of the stdlib corpus's labels "random"; balance_nsp=False is the original.
Because a sentence range of one document is a contiguous range of
the flat token array, every segment, before and after truncation, is a (start, length) span.

Masking (mask_tokens): k = min(P, max(1, round(0.15 * n))) positions chosen uniformly without
replacement among the n non-special tokens of a sequence (the original counts [CLS]/[SEP] in n;
here they are never candidates, so they do not count); each chosen token becomes [MASK] with
probability 0.8, a uniformly random non-special token 0.1, unchanged 0.1. labels hold the
original id there and -100 everywhere else.

Differences from the original, all deliberate: k counts non-special tokens only; a random
replacement is never a special token; truncate_seq_pair's per-token front/back coins are drawn
as one binomial per segment (same distribution, vectorised); instead of dupe_factor static
copies, every epoch redraws pairs and masks; balance_nsp (above).

Everything random in epoch e is a function of (seed, e): masks are redrawn every epoch (dynamic
masking, as in RoBERTa) and pairs are re-drawn too. A data position is the pair
(epoch, index of the next batch), a JSON-friendly value a checkpoint stores and batches() resumes.
"""
import ast
import glob
import hashlib
import inspect
import itertools
import json
import os
import random
import re
import shutil
import struct
import sysconfig
import tempfile
import warnings
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minibert.model import IGNORE_INDEX
from minibert.tokenizer import SPECIAL_TOKENS

CACHE_VERSION = "minibert-tokenized-corpus-v1"  # bump when the on-disk layout changes

# A boundary: sentence punctuation, optional closing quotes/brackets, whitespace, then a
# capital, a digit, or an opening quote/bracket. The split falls after the closing characters.
SENTENCE_BOUNDARY = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s+["'\u201c\u2018(\[]?[A-Z0-9])""")
_ENDS_SENTENCE = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*$""")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of a bad byte


class CorpusWarning(UserWarning):
    """Something in the corpus was repaired (invalid UTF-8) rather than rejected."""


@dataclass(frozen=True)
class Document:
    """One document: its sentences in order, where it came from, and a name unique within it.

    For the default corpus ``source`` is the module's dotted name ("json.decoder") and
    ``name`` the docstring's owner ("json.decoder.JSONDecoder.decode"); for files ``source``
    is the file path and ``name`` "path#k" for its k-th document.
    """
    sentences: tuple
    source: str
    name: str = ""

    @property
    def package(self):
        """The top-level package of the source: "json" for "json.decoder"."""
        return self.source.split(".")[0]

    @property
    def text(self):
        return " ".join(self.sentences)


# ---------------------------------------------------------------------------------------------
# Reading text
# ---------------------------------------------------------------------------------------------

def split_sentences(paragraph):
    """Split running text into sentences at SENTENCE_BOUNDARY; whitespace runs become one space."""
    text = " ".join(paragraph.split())
    out, start = [], 0
    for m in SENTENCE_BOUNDARY.finditer(text):
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def detect_format(text):
    """"lines" or "text" for a file's text, by the rule in the module docstring."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "text"
    ends = sum(1 for ln in lines if _ENDS_SENTENCE.search(ln))
    inner = sum(1 for ln in lines if SENTENCE_BOUNDARY.search(ln))
    return "lines" if ends >= 0.5 * len(lines) and inner <= 0.2 * len(lines) else "text"


def parse_text(text, format="auto", source="", warn_name=None):
    """Documents of one file's text in the given format ("auto", "lines" or "text")."""
    if format == "auto":
        format = detect_format(text)
    if format not in ("lines", "text"):
        raise ValueError(f"format must be 'auto', 'lines' or 'text', got {format!r}")
    docs = []
    for block in _BLANK_LINES.split(text.replace("\r\n", "\n")):
        if format == "lines":
            sentences = [" ".join(ln.split()) for ln in block.split("\n")]
            sentences = [s for s in sentences if s]
        else:
            sentences = split_sentences(block)
        if sentences:
            docs.append(Document(tuple(sentences), source, f"{source}#{len(docs)}"))
    return docs


def read_text_file(path):
    """A file's text; invalid UTF-8 bytes become U+FFFD with a CorpusWarning counting them."""
    text = Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
    bad = len(_ESCAPED_BYTE.findall(text))
    if bad:
        warnings.warn(f"{path}: replaced {bad} invalid UTF-8 byte(s) with U+FFFD", CorpusWarning,
                      stacklevel=2)
        text = _ESCAPED_BYTE.sub("\ufffd", text)
    return text


def expand_paths(paths):
    """Files named by paths: each a file, a directory (all files below it, sorted, hidden
    names skipped) or a glob pattern (recursive ``**`` allowed). Raises on a name matching nothing."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isfile(p):
            files.append(p)
        elif os.path.isdir(p):
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
        else:
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise FileNotFoundError(f"corpus path {p!r} is not a file, a directory or a glob matching anything")
            files += expand_paths(matches)
    return files


def iter_documents(paths, format="auto"):
    """Documents of text files, directories or globs, one file at a time (never the whole corpus).

    Raises ValueError when the files hold no document at all.
    """
    files = expand_paths(paths)
    count = 0
    for f in files:
        for doc in parse_text(read_text_file(f), format, source=f):
            count += 1
            yield doc
    if count == 0:
        raise ValueError(f"empty corpus: {len(files)} file(s) under {paths!r} hold no text")


def read_documents(paths, format="auto"):
    """All documents of text files, directories or globs, as a list (see iter_documents)."""
    return list(iter_documents(paths, format))


# ---------------------------------------------------------------------------------------------
# The embedded default corpus: the standard library's docstrings
# ---------------------------------------------------------------------------------------------

STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages",
                              "__pycache__", "turtledemo", "_bundled", "__phello__"})
MIN_DOC_CHARS = 40  # drop "Return self."-sized docstrings: too little text to model or classify
_stdlib_cache = {}


def docstring_sentences(doc):
    """Sentences of a cleaned docstring. Paragraphs are split at blank lines; a paragraph that
    looks like code or a list (a line starting with ">>>", or an indented line after the first)
    keeps one sentence per line; other paragraphs are joined and split by split_sentences."""
    out = []
    for para in _BLANK_LINES.split(doc):
        lines = [ln for ln in para.split("\n") if ln.strip()]
        if not lines:
            continue
        if any(ln.lstrip().startswith(">>>") for ln in lines) or any(ln[:1].isspace() for ln in lines[1:]):
            out += [" ".join(ln.split()) for ln in lines]
        else:
            out += split_sentences(" ".join(lines))
    return out


def _module_docstrings(path, module):
    """(qualified name, docstring) of a module and every class and function in it, by ast."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return []  # not parseable by this Python (e.g. lib2to3 fixtures): skipped, never run
    out = []

    def visit(node, qual):
        doc = ast.get_docstring(node, clean=False)
        if doc:
            out.append((qual, inspect.cleandoc(doc)))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{qual}.{child.name}")

    visit(tree, module)
    return out


def stdlib_documents(packages=None, min_chars=MIN_DOC_CHARS, stdlib=None):
    """One Document per module, class and function docstring of the running Python's standard
    library, read from source with ast (nothing imported or executed).

    packages: optional set of top-level names ("json", "email") to read only those.
    Skipped: test suites, idlelib, site-packages (STDLIB_SKIP_DIRS), files that do not parse,
    docstrings shorter than min_chars characters. Sorted by file path, then source order.
    """
    stdlib = stdlib or sysconfig.get_paths()["stdlib"]
    key = (stdlib, None if packages is None else frozenset(packages), min_chars)
    if key in _stdlib_cache:
        return list(_stdlib_cache[key])
    docs = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP_DIRS and "-" not in d
                             and not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, fn), stdlib)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            if not rel or (packages is not None and rel[0] not in packages):
                continue
            module = ".".join(rel)
            for qual, doc in _module_docstrings(os.path.join(dirpath, fn), module):
                if len(doc) < min_chars:
                    continue
                sentences = docstring_sentences(doc)
                if sentences:
                    docs.append(Document(tuple(sentences), module, qual))
    _stdlib_cache[key] = tuple(docs)
    return docs


def is_heldout(doc, heldout_fraction=0.05):
    """True for the fixed share of documents held out for evaluation.

    The rule hashes the document's text only (sha256 of its sentences joined by newlines; the
    first 8 bytes as a fraction of 2**64), so it is stable across runs, machines and Python
    versions, and identical docstrings in two places land on the same side.
    """
    h = hashlib.sha256("\n".join(doc.sentences).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") < heldout_fraction * 2 ** 64


def split_documents(docs, heldout_fraction=0.05):
    """(train, heldout) lists by is_heldout, each in the input order."""
    train, heldout = [], []
    for d in docs:
        (heldout if is_heldout(d, heldout_fraction) else train).append(d)
    return train, heldout


def default_corpus(split="train", heldout_fraction=0.05, packages=None, min_chars=MIN_DOC_CHARS):
    """The embedded corpus (stdlib_documents), split "train", "heldout" or "all"."""
    docs = stdlib_documents(packages=packages, min_chars=min_chars)
    if not docs:
        raise ValueError(f"empty corpus: no docstrings found in the standard library for packages={packages!r}")
    if split == "all":
        return docs
    train, heldout = split_documents(docs, heldout_fraction)
    if split == "train":
        return train
    if split == "heldout":
        return heldout
    raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


# ---------------------------------------------------------------------------------------------
# The tokenized corpus: a memory-mapped cache
# ---------------------------------------------------------------------------------------------

def default_cache_dir():
    """$MINIBERT_CACHE, else ~/.cache/minibert/corpora."""
    return os.environ.get("MINIBERT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minibert", "corpora")


def _npy_header(dtype, n, size=128):
    """A .npy (version 1.0) header of exactly `size` bytes for a 1-D array of n items, so the
    header can be written first as a placeholder and rewritten once n is known."""
    d = "{'descr': %r, 'fortran_order': False, 'shape': (%d,), }" % (np.dtype(dtype).str, n)
    body = d.ljust(size - 10 - 1) + "\n"
    assert len(body) == size - 10, "header too long"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


def _is_paths(source):
    if isinstance(source, (str, os.PathLike)):
        return True
    return (isinstance(source, (list, tuple)) and len(source) > 0
            and all(isinstance(p, (str, os.PathLike)) for p in source))


def _encode_sentences(tokenizer, sentences, specials):
    """Token ids of each sentence. Text that merely looks like a special token ("[SEP]" in a
    docstring) is encoded as plain text, never as the special id."""
    plain = [i for i, s in enumerate(sentences) if not any(sp in s for sp in specials)]
    out = [None] * len(sentences)
    for i, ids in zip(plain, tokenizer.encode_batch([sentences[i] for i in plain])):
        out[i] = ids
    for i, s in enumerate(sentences):
        if out[i] is None:
            out[i] = tokenizer.encode(s, allowed_special="none")
    return out


class TokenizedCorpus:
    """A tokenized corpus on disk, memory-mapped:

        tokens            (num_tokens,)    uint16 when the vocabulary fits, else int32
        sentence_offsets  (S + 1,) int64   sentence s is tokens[sentence_offsets[s]:sentence_offsets[s+1]]
        doc_offsets       (D + 1,) int64   document d is sentences doc_offsets[d]:doc_offsets[d+1]

    Sentences that encode to no tokens and documents left without sentences are dropped.
    Build with TokenizedCorpus.build; it lives in cache_dir/<key>/ where key is the sha256 of
    the corpus content and tokenizer.fingerprint(), so a second build with the same inputs just
    loads it, and a changed corpus or tokenizer gets a new directory.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.tokens = np.load(self.path / "tokens.npy", mmap_mode="r")  # (num_tokens,)
        self.sentence_offsets = np.load(self.path / "sentence_offsets.npy", mmap_mode="r")  # (S + 1,)
        self.doc_offsets = np.load(self.path / "doc_offsets.npy", mmap_mode="r")  # (D + 1,)

    @property
    def num_documents(self):
        return len(self.doc_offsets) - 1

    @property
    def num_sentences(self):
        return len(self.sentence_offsets) - 1

    @property
    def num_tokens(self):
        return len(self.tokens)

    def document(self, d):
        """Token ids of document d's sentences, as a list of host arrays."""
        s0, s1 = int(self.doc_offsets[d]), int(self.doc_offsets[d + 1])
        off = self.sentence_offsets
        return [np.asarray(self.tokens[off[s]:off[s + 1]]) for s in range(s0, s1)]

    @staticmethod
    def cache_key(source, tokenizer, format="auto"):
        """sha256 hex of the layout version, the tokenizer's fingerprint and the corpus content
        (file bytes for paths; sentences for Documents)."""
        h = hashlib.sha256()
        h.update(f"{CACHE_VERSION}\0{tokenizer.fingerprint()}\0".encode())
        if _is_paths(source):
            h.update(f"files\0{format}\0".encode())
            for f in expand_paths(source):
                fh = hashlib.sha256()
                with open(f, "rb") as fp:
                    for block in iter(lambda: fp.read(1 << 20), b""):
                        fh.update(block)
                h.update(fh.digest())
        else:
            h.update(b"documents\0")
            for doc in source:
                h.update("\x1e".join(doc.sentences).encode("utf-8", "surrogatepass"))
                h.update(b"\x1d")
        return h.hexdigest()

    @classmethod
    def build(cls, source, tokenizer, cache_dir=None, format="auto", chunk_sentences=4096):
        """Tokenize a corpus once and return it memory-mapped; later calls load the cache.

        source: a list of Documents, or text files / directories / globs (read with
        iter_documents, one file at a time). Tokens are written to disk chunk by chunk
        (encode_batch over chunk_sentences sentences), never held as Python lists, and the
        directory appears atomically (written under a temporary name, then renamed).
        """
        if not _is_paths(source):
            source = list(source)  # hashed, then tokenized: two passes
            if not source:
                raise ValueError("empty corpus: no documents given")
        cache_dir = Path(cache_dir or default_cache_dir())
        key = cls.cache_key(source, tokenizer, format)
        final = cache_dir / key
        if (final / "meta.json").exists():
            return cls(final)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=cache_dir))
        try:
            cls._write(tmp, source, tokenizer, format, chunk_sentences, key)
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished the same cache first: use theirs
                if not (final / "meta.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(final)

    @staticmethod
    def _write(tmp, source, tokenizer, format, chunk_sentences, key):
        dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
        specials = list(tokenizer.special_tokens)
        docs = iter_documents(source, format) if _is_paths(source) else iter(source)
        sent_lens = []  # numpy arrays, one per chunk
        doc_counts = array("q")  # kept sentences per document
        n_tokens = 0
        with open(tmp / "tokens.npy", "wb") as f:
            f.write(_npy_header(dtype, 0))  # placeholder, rewritten with the final length
            sentences, owner = [], []
            for doc in itertools.chain(docs, [None]):  # None flushes the last chunk
                if doc is not None:
                    doc_counts.append(0)
                    sentences += doc.sentences
                    owner += [len(doc_counts) - 1] * len(doc.sentences)
                    if len(sentences) < chunk_sentences:
                        continue
                if not sentences:
                    break
                # a chunk holds whole documents, about chunk_sentences sentences
                encoded = _encode_sentences(tokenizer, sentences, specials)
                lens = np.fromiter((len(e) for e in encoded), np.int64, len(encoded))  # (S_chunk,)
                flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype, int(lens.sum()))  # (tokens,)
                if flat.size and int(flat.max()) >= tokenizer.vocab_size:
                    raise ValueError("tokenizer produced an id outside its vocabulary")
                f.write(flat.tobytes())
                n_tokens += flat.size
                keep = lens > 0
                sent_lens.append(lens[keep])
                for d, c in zip(*np.unique(np.asarray(owner, np.int64)[keep], return_counts=True)):
                    doc_counts[int(d)] += int(c)
                sentences, owner = [], []
            f.seek(0)
            f.write(_npy_header(dtype, n_tokens))
        counts = np.frombuffer(doc_counts, dtype=np.int64) if len(doc_counts) else np.zeros(0, np.int64)
        counts = counts[counts > 0]  # (D,)
        if n_tokens == 0 or counts.size == 0:
            raise ValueError("empty corpus: no document has any tokens")
        sentence_offsets = np.concatenate([[0], np.cumsum(np.concatenate(sent_lens))]).astype(np.int64)  # (S + 1,)
        doc_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (D + 1,)
        np.save(tmp / "sentence_offsets.npy", sentence_offsets)
        np.save(tmp / "doc_offsets.npy", doc_offsets)
        meta = {"version": CACHE_VERSION, "key": key, "tokenizer": tokenizer.fingerprint(),
                "vocab_size": int(tokenizer.vocab_size), "dtype": np.dtype(dtype).name,
                "num_tokens": int(n_tokens), "num_sentences": int(sentence_offsets.size - 1),
                "num_documents": int(doc_offsets.size - 1)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


# ---------------------------------------------------------------------------------------------
# Masking, instances, batches
# ---------------------------------------------------------------------------------------------

def mask_tokens(ids, special_mask, rng, *, mask_id, replace_ids, masked_lm_prob=0.15, max_predictions=20):
    """Masked-LM corruption of each row of ids (a pure function of its inputs and rng's state).

    ids (N, T) or (T,) integer; special_mask same shape, True where a position may never be
    predicted ([CLS], [SEP], padding). In each row k = min(max_predictions, max(1,
    round(masked_lm_prob * n))) of its n candidates are chosen uniformly (k = 0 when n = 0);
    each chosen one becomes mask_id (80%), a uniform draw from replace_ids (10%) or stays (10%).
    Returns (masked_ids, labels) with ids' shape; labels (int64) is the original id where a
    position was chosen and -100 elsewhere.
    """
    ids = np.asarray(ids)
    one_row = ids.ndim == 1
    ids2 = ids.reshape(1, -1) if one_row else ids  # (N, T)
    cand = ~np.asarray(special_mask, bool).reshape(ids2.shape)  # (N, T)
    N, T = ids2.shape
    n = cand.sum(axis=1)  # (N,)
    # np.rint rounds half to even, as Python's round() in the original does
    k = np.minimum(max_predictions, np.maximum(1, np.rint(n * masked_lm_prob).astype(np.int64)))  # (N,)
    k = np.where(n > 0, k, 0)
    P = min(max_predictions, T)
    masked, labels = ids2.copy(), np.full(ids2.shape, IGNORE_INDEX, np.int64)  # (N, T), (N, T)
    if P <= 0 or N == 0:
        return (masked[0], labels[0]) if one_row else (masked, labels)
    # the k smallest of iid uniform keys are a uniform k-subset; non-candidates sort last
    keys = rng.random((N, T))  # (N, T)
    keys[~cand] = np.inf
    top = np.argpartition(keys, P - 1, axis=1)[:, :P] if P < T else np.tile(np.arange(T), (N, 1))  # (N, P)
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(keys, top, 1), axis=1), 1)  # (N, P), by key
    rows, cols = np.nonzero(np.arange(P)[None, :] < k[:, None])  # chosen (row, rank) pairs
    pos = top[rows, cols]  # (M,) positions in the row
    labels[rows, pos] = ids2[rows, pos]
    u = rng.random(rows.size)  # (M,)
    to_mask, to_random = u < 0.8, (u >= 0.8) & (u < 0.9)
    masked[rows[to_mask], pos[to_mask]] = mask_id
    replace_ids = np.asarray(replace_ids)
    masked[rows[to_random], pos[to_random]] = replace_ids[rng.integers(0, replace_ids.size, int(to_random.sum()))]
    return (masked[0], labels[0]) if one_row else (masked, labels)


def truncation_counts(len_a, len_b, max_num_tokens):
    """How many tokens truncate_seq_pair removes from A and from B (vectorised, exact).

    The original loop removes one token at a time from the longer segment (B on a tie) until
    len_a + len_b <= max_num_tokens: first the longer is cut down to the shorter's length,
    then the two alternate starting with B. Only front-or-back is random, so the counts are not.
    """
    la, lb = np.asarray(len_a, np.int64), np.asarray(len_b, np.int64)
    excess = np.maximum(la + lb - max_num_tokens, 0)
    ra = np.minimum(excess, np.maximum(la - lb, 0))
    excess = excess - ra
    rb = np.minimum(excess, np.maximum(lb - la, 0))
    excess = excess - rb
    return ra + excess // 2, rb + (excess + 1) // 2


class Instance(NamedTuple):
    """One pretraining example, unpadded (L = its length)."""
    input_ids: np.ndarray  # (L,) masked ids: [CLS] A [SEP] B [SEP]
    token_type_ids: np.ndarray  # (L,) 0 up to and including the first [SEP], 1 after
    labels: np.ndarray  # (L,) original id where masked, -100 elsewhere
    next_sentence_label: int  # 0: B follows A, 1: B is random


def make_batch(instances, pad_id, pad_to=None):
    """A batch dict of host int64 arrays from Instances, padded with pad_id to the longest
    (or to pad_to): input_ids, token_type_ids, attention_mask (1 = real token), labels
    (-100 at padding), all (B, T); next_sentence_label (B,)."""
    lengths = [len(x.input_ids) for x in instances]
    T = max(lengths) if pad_to is None else pad_to
    if max(lengths) > T:
        raise ValueError(f"an instance of length {max(lengths)} does not fit pad_to={pad_to}")
    B = len(instances)
    batch = {"input_ids": np.full((B, T), pad_id, np.int64),  # (B, T)
             "token_type_ids": np.zeros((B, T), np.int64),  # (B, T)
             "attention_mask": np.zeros((B, T), np.int64),  # (B, T)
             "labels": np.full((B, T), IGNORE_INDEX, np.int64)}  # (B, T)
    for i, (x, L) in enumerate(zip(instances, lengths)):
        batch["input_ids"][i, :L] = x.input_ids
        batch["token_type_ids"][i, :L] = x.token_type_ids
        batch["attention_mask"][i, :L] = 1
        batch["labels"][i, :L] = x.labels
    batch["next_sentence_label"] = np.array([x.next_sentence_label for x in instances], np.int64)  # (B,)
    return batch


def create_pairs(sentence_offsets, doc_offsets, max_num_tokens, short_seq_prob, rng, balance_nsp=False):
    """The sentence-level part of create_instances_from_document, for every document in order.

    sentence_offsets (S + 1,), doc_offsets (D + 1,) as in TokenizedCorpus; rng a random.Random.
    balance_nsp=False is the original: a chunk of two or more sentences gets a random B with
    probability 1/2, a one-sentence chunk always does. On corpora of short documents (the
    stdlib docstrings: 40% have one sentence) that makes ~72% of labels "random". With
    balance_nsp=True a chunk that has a choice takes the coin only while random labels are
    not ahead in this epoch, and a true continuation otherwise, so the labels come out near
    1/2 whenever the forced ones are under half.
    Returns int64 arrays (a_start, a_len, b_start, b_len, is_random), each (N,), spans of the
    flat token array before truncation.
    """
    off = np.asarray(sentence_offsets).tolist()
    doc = np.asarray(doc_offsets).tolist()
    D = len(doc) - 1
    out = array("q")
    n_random = n_true = 0
    for d in range(D):
        s_begin, s_end = doc[d], doc[d + 1]
        target = max_num_tokens
        if rng.random() < short_seq_prob:
            target = rng.randint(2, max_num_tokens)
        chunk, i = s_begin, s_begin  # the chunk is sentences chunk..i
        while i < s_end:
            if i == s_end - 1 or off[i + 1] - off[chunk] >= target:
                n_chunk = i + 1 - chunk
                a_end = 1 if n_chunk == 1 else rng.randint(1, n_chunk - 1)
                a0, a1 = off[chunk], off[chunk + a_end]
                if n_chunk == 1:
                    is_random = True
                elif balance_nsp and n_random > n_true:
                    is_random = False
                else:
                    is_random = rng.random() < 0.5
                n_random, n_true = n_random + is_random, n_true + (not is_random)
                if is_random:
                    target_b = target - (a1 - a0)
                    for _ in range(10):
                        r = rng.randint(0, D - 1)
                        if r != d:
                            break
                    j = rs = rng.randint(doc[r], doc[r + 1] - 1)
                    while j < doc[r + 1]:
                        j += 1
                        if off[j] - off[rs] >= target_b:
                            break
                    out.extend((a0, a1 - a0, off[rs], off[j] - off[rs], 1))
                    i -= n_chunk - a_end  # put the unused rest of the chunk back
                else:
                    out.extend((a0, a1 - a0, a1, off[i + 1] - a1, 0))
                chunk = i + 1
            i += 1
    spans = np.frombuffer(out, np.int64).reshape(-1, 5) if len(out) else np.zeros((0, 5), np.int64)  # (N, 5)
    return tuple(spans[:, c].copy() for c in range(5))


class EpochInstances:
    """All instances of one epoch, padded to max_seq_len T (a compact, read-only view):

        input_ids     (N, T) int32  masked, padded with [PAD]
        labels        (N, T) int32  original id where masked, -100 elsewhere
        lengths       (N,)   int32  real tokens: len(A) + len(B) + 3
        a_lengths     (N,)   int32  len(A) after truncation
        next_sentence_label (N,) int8
        spans         (N, 4) int64  (a_start, a_len, b_start, b_len) in the corpus token array
    """

    def __init__(self, input_ids, labels, lengths, a_lengths, next_sentence_label, spans, pad_id):
        self.pad_id = pad_id
        self.input_ids, self.labels = input_ids, labels
        self.lengths, self.a_lengths = lengths, a_lengths
        self.next_sentence_label, self.spans = next_sentence_label, spans

    def __len__(self):
        return len(self.lengths)

    def token_type_ids(self, rows):
        """(len(rows), T) 0 through the first [SEP], 1 over B and its [SEP], 0 at padding."""
        t = np.arange(self.input_ids.shape[1])[None, :]  # (1, T)
        a, L = self.a_lengths[rows][:, None], self.lengths[rows][:, None]
        return ((t >= a + 2) & (t < L)).astype(np.int64)  # (B, T)

    def instance(self, i):
        L = int(self.lengths[i])
        tt = self.token_type_ids(np.array([i]))[0, :L]
        return Instance(self.input_ids[i, :L].copy(), tt, self.labels[i, :L].astype(np.int64),
                        int(self.next_sentence_label[i]))

    def batch(self, rows, pad_to=None):
        """make_batch of these rows (a slice or index array), done with array slicing."""
        rows = np.arange(len(self))[rows]
        T = int(self.lengths[rows].max()) if pad_to is None else pad_to
        if int(self.lengths[rows].max()) > T:
            raise ValueError(f"an instance of length {int(self.lengths[rows].max())} does not fit pad_to={pad_to}")
        W = min(T, self.input_ids.shape[1])
        B = len(rows)
        ids = np.full((B, T), self.pad_id, np.int64)  # (B, T)
        ids[:, :W] = self.input_ids[rows, :W]
        labels = np.full((B, T), IGNORE_INDEX, np.int64)  # (B, T)
        labels[:, :W] = self.labels[rows, :W]
        tt = np.zeros((B, T), np.int64)  # (B, T)
        tt[:, :W] = self.token_type_ids(rows)[:, :W]
        am = (np.arange(T)[None, :] < self.lengths[rows][:, None]).astype(np.int64)  # (B, T)
        return {"input_ids": ids, "token_type_ids": tt, "attention_mask": am, "labels": labels,
                "next_sentence_label": self.next_sentence_label[rows].astype(np.int64)}  # (B,)


EVAL_STREAM = 1  # eval instances come from their own random stream, never a training epoch's


class PretrainingData:
    """MLM + NSP instances of a TokenizedCorpus, one deterministic set per (seed, epoch).

    balance_nsp: keep next-sentence labels near 1/2 on short documents (see create_pairs);
    False reproduces the original exactly.
    position: (epoch, index of the next batch) -- two ints, stored as a JSON list in checkpoints.
    batches(batch_size, start=position) yields (next_position, batch) forever; each epoch's last
    partial batch is dropped.
    """

    def __init__(self, corpus, tokenizer, max_seq_len=128, max_predictions=20, short_seq_prob=0.1,
                 masked_lm_prob=0.15, seed=0, balance_nsp=True, chunk_rows=8192):
        if max_seq_len < 5:
            raise ValueError(f"max_seq_len must be at least 5 ([CLS] a [SEP] b [SEP]), got {max_seq_len}")
        self.corpus, self.max_seq_len, self.max_predictions = corpus, max_seq_len, max_predictions
        self.short_seq_prob, self.masked_lm_prob, self.seed = short_seq_prob, masked_lm_prob, seed
        self.balance_nsp, self.chunk_rows = balance_nsp, chunk_rows
        ids, missing = {}, []
        for s in SPECIAL_TOKENS:
            try:
                ids[s] = tokenizer.token_to_id(s)
            except KeyError:
                ids[s] = None
            if ids[s] is None:
                missing.append(s)
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}; train it with special_tokens=SPECIAL_TOKENS")
        self.pad_id, self.cls_id, self.sep_id, self.mask_id = (ids[s] for s in SPECIAL_TOKENS)
        special = set(ids.values()) | set(getattr(tokenizer, "special_tokens", {}).values())
        self.special_ids = np.array(sorted(special), np.int64)
        self.replace_ids = np.setdiff1d(np.arange(tokenizer.vocab_size), self.special_ids)  # never a special
        self._epochs = {}

    def _rngs(self, epoch, stream=0):
        """(random.Random for the pair walk, numpy Generator for truncation, shuffling, masks)."""
        seq = np.random.SeedSequence([self.seed, epoch, stream])
        a, b = seq.generate_state(2, np.uint64)
        return random.Random(int(a)), np.random.default_rng(int(b))

    def epoch(self, epoch, stream=0):
        """EpochInstances of an epoch (the last two built are kept)."""
        key = (int(epoch), stream)
        if key not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[key] = self._build_epoch(*key)
        return self._epochs[key]

    def num_instances(self, epoch=0):
        return len(self.epoch(epoch))

    def _build_epoch(self, epoch, stream):
        py_rng, rng = self._rngs(epoch, stream)
        T, M = self.max_seq_len, self.max_seq_len - 3
        a0, la, b0, lb, nsp = create_pairs(self.corpus.sentence_offsets, self.corpus.doc_offsets, M,
                                           self.short_seq_prob, py_rng, self.balance_nsp)
        ra, rb = truncation_counts(la, lb, M)  # (N,), (N,)
        fa, fb = rng.binomial(ra, 0.5), rng.binomial(rb, 0.5)  # tokens cut from each front
        a0, la, b0, lb = a0 + fa, la - ra, b0 + fb, lb - rb
        perm = rng.permutation(len(a0))  # shuffle instances, as the original does
        a0, la, b0, lb, nsp = a0[perm], la[perm], b0[perm], lb[perm], nsp[perm]
        N = len(a0)
        input_ids = np.empty((N, T), np.int32)  # (N, T)
        labels = np.empty((N, T), np.int32)  # (N, T)
        t = np.arange(T)[None, :]  # (1, T)
        tokens = self.corpus.tokens
        for s in range(0, N, self.chunk_rows):  # chunks bound the (rows, T) int64 temporaries
            sl = slice(s, s + self.chunk_rows)
            ca, cla, cb, clb = a0[sl, None], la[sl, None], b0[sl, None], lb[sl, None]
            in_a = (t >= 1) & (t <= cla)  # (n, T)
            in_b = (t >= cla + 2) & (t < cla + 2 + clb)  # (n, T)
            src = np.where(in_a, ca + t - 1, np.where(in_b, cb + t - cla - 2, 0))  # (n, T)
            ids = np.where(in_a | in_b, tokens[src], self.pad_id).astype(np.int64)  # (n, T)
            rows = np.arange(ids.shape[0])
            ids[:, 0] = self.cls_id
            ids[rows, cla[:, 0] + 1] = self.sep_id
            ids[rows, cla[:, 0] + clb[:, 0] + 2] = self.sep_id
            special = ~(in_a | in_b) | np.isin(ids, self.special_ids)  # (n, T)
            m, lab = mask_tokens(ids, special, rng, mask_id=self.mask_id, replace_ids=self.replace_ids,
                                 masked_lm_prob=self.masked_lm_prob, max_predictions=self.max_predictions)
            input_ids[sl], labels[sl] = m, lab
        ep = EpochInstances(input_ids, labels, (la + lb + 3).astype(np.int32), la.astype(np.int32),
                            nsp.astype(np.int8), np.stack([a0, la, b0, lb], axis=1), self.pad_id)
        for arr in (ep.input_ids, ep.labels, ep.lengths, ep.a_lengths, ep.next_sentence_label, ep.spans):
            arr.flags.writeable = False
        return ep

    def batches(self, batch_size, start=(0, 0), pad_to=None):
        """Yield (next_position, batch) forever from position start = (epoch, batch index).

        Saving next_position and later calling batches(batch_size, start=saved) continues with
        exactly the batch that would have come next (the same batch_size is required).
        """
        epoch, index = (int(v) for v in start)
        while True:
            ep = self.epoch(epoch)
            n_batches = len(ep) // batch_size
            if n_batches == 0:
                raise ValueError(f"epoch {epoch} has {len(ep)} instances, fewer than batch_size={batch_size}")
            while index < n_batches:
                batch = ep.batch(slice(index * batch_size, (index + 1) * batch_size), pad_to)
                index += 1
                yield ((epoch, index) if index < n_batches else (epoch + 1, 0)), batch
            epoch, index = epoch + 1, 0

    def batches_per_epoch(self, batch_size, epoch=0):
        return len(self.epoch(epoch)) // batch_size

    def eval_batches(self, batch_size, num_batches=None, pad_to=None):
        """The same list of batches on every call: instances from a fixed eval stream of this
        seed (independent of training epochs), in order; the last batch may be partial.
        num_batches=None takes all of them."""
        ep = self.epoch(0, stream=EVAL_STREAM)
        n = -(-len(ep) // batch_size)
        n = n if num_batches is None else min(n, num_batches)
        return [ep.batch(slice(i * batch_size, (i + 1) * batch_size), pad_to) for i in range(n)]
