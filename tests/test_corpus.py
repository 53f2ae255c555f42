"""Tests of minibert.corpus: reading text files and formats, the embedded stdlib-docstring
corpus and its held-out split.

Reference values are computed here independently (hand-written expectations, hashlib).
"""
import hashlib
import re
import warnings
from collections import Counter

import pytest

from minibert import corpus
from minibert.corpus import CorpusWarning

from data_helpers import five_sigma


# ---------------------------------------------------------------------------------------------
# Reading text
# ---------------------------------------------------------------------------------------------

def test_non_utf8_replaced_with_counting_warning(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"Caf\xe9 au lait is fine.\nNo \xff\xff problem here.\n")
    with pytest.warns(CorpusWarning, match=r"replaced 3 invalid UTF-8 byte"):
        docs = corpus.read_documents(str(p))
    text = " ".join(s for d in docs for s in d.sentences)
    assert text.count("\ufffd") == 3 and "Caf\ufffd au lait" in text
    good = tmp_path / "good.txt"
    good.write_text("Caf\u00e9 is fine.\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corpus.read_documents(str(good))


def test_split_sentences():
    assert corpus.split_sentences("It works. It (really) works! Does it? \"Yes.\" 3 cats.") == [
        "It works.", "It (really) works!", "Does it?", "\"Yes.\"", "3 cats."]
    assert corpus.split_sentences("Use e.g. this one. Then\n  that.") == ["Use e.g. this one.", "Then that."]
    assert corpus.split_sentences("   ") == []


def test_formats_bert_lines_wrapped_text_and_paragraph_lines(tmp_path):
    lines = "The first sentence.\nThe second sentence.\n\nAnother document here.\nIt ends.\n"
    wrapped = ("This is running text that is wrapped at a narrow width so that\nlines end in the "
               "middle of sentences. A second sentence\nfollows here. And a third.\n\nA new "
               "paragraph starts. It has\ntwo sentences.\n")
    prose = ("It was the best of times, it was the worst of times, it was the age\n"
             "of wisdom, it was the age of foolishness, it was the epoch of belief,\n"
             "it was the epoch of incredulity, it was the season of Light, it was\n"
             "the season of Darkness, it was the spring of hope.\n")
    assert corpus.detect_format(prose) == "text"
    assert corpus.parse_text(prose)[0].sentences[0].startswith("It was the best of times, it was the worst")
    para = "One paragraph per line. It has sentences. Many of them.\n\nAnother one. Yes.\n"
    assert corpus.detect_format(lines) == "lines"
    assert corpus.detect_format(wrapped) == "text"
    assert corpus.detect_format(para) == "text"
    docs = corpus.parse_text(lines)
    assert [d.sentences for d in docs] == [("The first sentence.", "The second sentence."),
                                           ("Another document here.", "It ends.")]
    docs = corpus.parse_text(wrapped)
    assert docs[0].sentences == ("This is running text that is wrapped at a narrow width so that lines end "
                                 "in the middle of sentences.", "A second sentence follows here.", "And a third.")
    assert docs[1].sentences == ("A new paragraph starts.", "It has two sentences.")
    assert [len(d.sentences) for d in corpus.parse_text(para)] == [3, 2]
    assert [len(d.sentences) for d in corpus.parse_text(para, format="lines")] == [1, 1]
    with pytest.raises(ValueError):
        corpus.parse_text(para, format="xml")


def test_empty_or_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(ValueError, match="empty corpus"):
        corpus.read_documents(str(tmp_path / "blank.txt"))
    with pytest.raises(FileNotFoundError):
        corpus.read_documents(str(tmp_path / "nothing-*.txt"))


# ---------------------------------------------------------------------------------------------
# The default corpus
# ---------------------------------------------------------------------------------------------

def test_default_corpus_sources_and_stable_split():
    docs = corpus.default_corpus("all")
    assert len(docs) > 3000
    sources = {d.source for d in docs}
    assert {"json.decoder", "email.message", "os", "collections"} <= sources
    assert not any(s.startswith(("test.", "idlelib")) or ".test." in s or ".tests." in s for s in sources)
    assert all(re.fullmatch(r"[A-Za-z_][\w.]*", s) for s in sources)
    assert all(d.name == d.source or d.name.startswith(d.source + ".") for d in docs)
    assert all(len(d.text) >= corpus.MIN_DOC_CHARS * 0.5 and d.sentences for d in docs)
    assert sum(len(d.sentences) >= 2 for d in docs) > 0.3 * len(docs)
    train, heldout = corpus.default_corpus("train"), corpus.default_corpus("heldout")
    assert len(train) + len(heldout) == len(docs)
    lo, hi = five_sigma(len(docs), 0.05)
    assert lo < len(heldout) < hi
    # the two splits partition the corpus: every document on exactly one side, none twice
    assert Counter(d.name for d in train) + Counter(d.name for d in heldout) == Counter(d.name for d in docs)
    assert not {d.name for d in heldout} & {d.name for d in train}
    # and no held-out text is trained on: a docstring found in two places lands on one side
    assert not {d.sentences for d in heldout} & {d.sentences for d in train}
    for d in heldout[:20] + train[:20]:  # the rule, recomputed independently
        h = int(hashlib.sha256("\n".join(d.sentences).encode()).hexdigest()[:16], 16)
        assert (h < 0.05 * 2 ** 64) == (d in heldout[:20])
    pkgs = corpus.default_corpus("all", packages={"json"})
    assert pkgs and all(d.package == "json" for d in pkgs)
    assert [d for d in docs if d.package == "json"] == pkgs


def test_default_corpus_reads_without_importing(tmp_path):
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    (lib / "pkg" / "__init__.py").write_text('"""The package docstring says hello. It has two sentences."""\n'
                                             'raise SystemExit("imported!")\n')
    (lib / "pkg" / "mod.py").write_text('class C:\n    """A class docstring that is long enough to keep.\n\n'
                                        '    >>> C()\n    C\n    """\n    def f(self):\n        "Short."\n')
    (lib / "test" / "test_x.py").write_text('"""A test module docstring that must be skipped entirely."""\n')
    (lib / "broken.py").write_text('"""Broken file docstring long enough to keep it."""\ndef (:\n')
    docs = corpus.stdlib_documents(stdlib=str(lib))
    assert [(d.source, d.name) for d in docs] == [("pkg", "pkg"), ("pkg.mod", "pkg.mod.C")]
    assert docs[0].sentences == ("The package docstring says hello.", "It has two sentences.")
    assert docs[1].sentences == ("A class docstring that is long enough to keep.", ">>> C()", "C")
