"""The tokenized corpus: a memory-mapped token cache built once per (corpus, tokenizer).

The second step of the pretraining pipeline (corpus -> token_cache -> instances):

    Documents or text files --TokenizedCorpus.build--> cache_dir/<key>/
        tokens.npy            (num_tokens,) uint16 when the vocabulary fits, else int32
        sentence_offsets.npy  (S + 1,) int64
        doc_offsets.npy       (D + 1,) int64
        meta.json             layout version, key, tokenizer fingerprint, counts

S sentences, D documents. A sentence range of one document is a contiguous range of the flat
token array, which is what lets instances.py describe every segment as a (start, length) span.
"""
import hashlib
import itertools
import json
import os
import shutil
import struct
import tempfile
from array import array
from pathlib import Path

import numpy as np

from minibert.corpus import expand_paths, iter_documents

CACHE_VERSION = "minibert-tokenized-corpus-v1"  # bump when the on-disk layout changes


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


def _encode_sentences(tokenizer, sentences):
    """Token ids of each sentence. Text that merely looks like a special token ("[SEP]" in a
    docstring, or a "[MA\u200bSK]" that WordPiece's cleaning would make "[MASK]") is encoded
    as plain text, never as the special id: allowed_special="none"."""
    return tokenizer.encode_batch(sentences, allowed_special="none")


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
                encoded = _encode_sentences(tokenizer, sentences)
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
