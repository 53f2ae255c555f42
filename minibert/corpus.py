"""Corpus reading: text files and the embedded stdlib-docstring corpus, as Documents.

The first step of the pretraining pipeline (corpus -> token_cache -> instances):

    text files / directories / globs --read_documents / iter_documents--> Document(sentences, source, name)
    the running Python's standard library --default_corpus--> one Document per docstring
    Documents --split_documents / is_heldout--> (train, heldout), a stable split by content hash
    a text file --heldout_split--> (bytes to train a tokenizer on, the held-out tail)

Corpus text formats (``format=`` of read_documents; "auto" picks one per file):
    "lines"  one sentence per line, a blank line between documents (the original BERT format
             of Google's ``create_pretraining_data.py``, Devlin et al. 2019, appendix A.1).
    "text"   running text: paragraphs separated by blank lines are documents; a paragraph's
             lines are joined and split into sentences after . ! or ? (optionally followed by
             closing quotes or brackets) when whitespace and then an upper-case letter, digit,
             opening quote or bracket follow (``SENTENCE_BOUNDARY``). Abbreviations such as
             "Mr. Smith" are split too; that costs BERT little.
    "auto"   a file is "lines" when at least half of its non-blank lines end with sentence
             punctuation and at most a fifth of them contain a sentence boundary inside;
             otherwise "text". Hard-wrapped prose fails the first test (its lines end
             mid-sentence), one-paragraph-per-line prose fails the second.
Bytes that are not valid UTF-8 become U+FFFD, with one CorpusWarning per file counting them.
"""
import ast
import glob
import hashlib
import inspect
import os
import re
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

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


def parse_text(text, format="auto", source=""):
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


def heldout_split(path, n_bytes):
    """(bytes of the file at `path` to train on, held-out text): the last ~n_bytes, from a line
    start (tokenizer.train_tokenizer measures compression on them). A file of at most
    2 * n_bytes holds out nothing."""
    path = Path(path)
    size = path.stat().st_size
    if n_bytes <= 0 or size <= 2 * n_bytes:   # too small to spare a slice: hold out nothing
        return size, ""
    with open(path, "rb") as f:
        f.seek(size - n_bytes)
        tail = f.read()
    start = tail.find(b"\n") + 1   # start the slice on a line (and so on a character) boundary
    return size - n_bytes + start, tail[start:].decode("utf-8")


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
