"""The default tagging, QA and multiple-choice tasks: their documents are the corpus's and split as pretraining
split them, every tag and every answer is rechecked here independently of the code that made
it (parameters from the def by a plain ast walk, and by inspect.signature where the module
imports cleanly; answers read back from the context), the rules by hand, the files read back."""
import ast
import importlib
import inspect
import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from minibert import default_tasks as dt
from minibert.choice_data import ChoiceExample, read_choices
from minibert.compare import SCORES, compare_pretraining
from minibert.corpus import Document, default_corpus
from minibert.qa_data import read_squad
from minibert.tag_data import read_tagged
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer

ROOT = Path(__file__).resolve().parent.parent
PARAM = "B-PARAM"
IMPORTABLE = ("json.decoder", "json.encoder", "textwrap", "difflib", "fnmatch", "shlex", "string",
              "email.utils", "posixpath", "calendar", "fractions", "ipaddress", "urllib.parse", "shutil")


@pytest.fixture(scope="module")
def functions():
    return dt.documented_functions()


@pytest.fixture(scope="module")
def def_params(functions):
    """{(path, def line): the name of every ast.arg below the def's arguments (a lambda's in a
    default value left out)}."""
    trees, out = {}, {}
    for fn in functions:
        if fn.path not in trees:
            with open(fn.path, "rb") as f:
                tree = ast.parse(f.read())
            defs = (ast.FunctionDef, ast.AsyncFunctionDef)
            trees[fn.path] = {n.lineno: n for n in ast.walk(tree) if isinstance(n, defs)}
        node = trees[fn.path][fn.lineno]
        inner = {id(a) for lam in ast.walk(node.args) if isinstance(lam, ast.Lambda) for a in ast.walk(lam)}
        out[fn.path, fn.lineno] = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg) and id(a) not in inner}
    return out


def fn_of(sentences, params):
    return dt.DocumentedFunction(Document(tuple(sentences), "m", "m.f"), "m.py", 1, tuple(params))


def test_functions_are_corpus_documents_with_their_defs(functions, def_params):
    corpus = set(default_corpus("all"))
    assert 3000 < len(functions) < 8000
    assert all(fn.document in corpus for fn in functions)
    for fn in functions:
        assert set(fn.params) == def_params[fn.path, fn.lineno]


def test_deterministic(functions):
    tags, qa, choice = dt.default_tag_task(), dt.default_qa_task(), dt.default_choice_task()
    dt._functions_cache.clear()  # read the library again
    assert dt.documented_functions() == functions
    assert dt.default_tag_task() == tags and dt.default_qa_task() == qa and dt.default_choice_task() == choice


@pytest.mark.parametrize("fraction", [0.05, 0.2])
def test_split_is_pretrainings(functions, fraction):
    """Held out exactly the functions whose docstring pretraining held out, none on both sides."""
    heldout_docs = set(default_corpus("heldout", heldout_fraction=fraction))
    train_docs = set(default_corpus("train", heldout_fraction=fraction))
    assert not heldout_docs & train_docs
    tag_train, tag_held = dt.default_tag_task(fraction)
    qa_train, qa_held = dt.default_qa_task(fraction)
    held = [fn for fn in functions if fn.document in heldout_docs]
    assert all(fn.document in train_docs for fn in functions if fn.document not in heldout_docs)
    assert tag_held == [s for fn in held for s in dt.tag_sentences(fn)]
    assert qa_held == [e for fn in held for e in dt.qa_examples(fn)]
    assert len(tag_train) + len(tag_held) == sum(len(dt.tag_sentences(fn)) for fn in functions)
    assert not {e.context for e in qa_train} & {e.context for e in qa_held}


def test_every_tagged_word_is_a_parameter(functions, def_params):
    n_tagged = 0
    for fn in functions:
        text = "".join(fn.document.text.split())
        for s in dt.tag_sentences(fn):
            assert 1 <= len(s.words) <= dt.MAX_WORDS and len(s.tags) == len(s.words)
            assert "".join(s.words) in text  # the words are the docstring's characters, cut
            assert set(s.tags) <= {PARAM, "O"}
            for w, t in zip(s.words, s.tags):
                if t == PARAM:
                    n_tagged += 1
                    assert w in def_params[fn.path, fn.lineno] and w not in ("self", "cls") and len(w) > 1
                else:
                    assert w not in def_params[fn.path, fn.lineno] or len(w) == 1 or w in ("self", "cls") \
                        or re.search(rf"(?<=\.){re.escape(w)}\b", fn.document.text)
    assert n_tagged > 3000


def test_tagged_words_are_in_the_signature(functions):
    """inspect.signature of the live function, where its module imports cleanly."""
    checked = 0
    for fn in functions:
        if fn.document.source not in IMPORTABLE:
            continue
        obj = importlib.import_module(fn.document.source)
        try:
            for part in fn.document.name[len(fn.document.source) + 1:].split("."):
                obj = getattr(obj, part)
            params = set(inspect.signature(inspect.unwrap(obj)).parameters)
        except (AttributeError, TypeError, ValueError):  # nested, a property, a builtin twin
            continue
        if getattr(obj, "__code__", None) is None or obj.__code__.co_firstlineno > fn.lineno:
            continue  # decorated (the line is the decorator's) or redefined: not this def
        for s in dt.tag_sentences(fn):
            checked += s.tags.count(PARAM)
            assert {w for w, t in zip(s.words, s.tags) if t == PARAM} <= params, fn.document.name
    assert checked > 100


def test_tagging_rule_by_hand():
    (s,) = dt.tagged_pieces(["Open `path` in mode, as os.path does; self.name is a name."],
                            ["self", "path", "name", "a", "mode"])
    tags = dict(zip(s.words, s.tags))
    assert s.words[:5] == ["Open", "`", "path", "`", "in"]
    assert [w for w, t in zip(s.words, s.tags) if t == PARAM] == ["path", "mode", "name"]  # the second "name"
    assert tags["a"] == "O" and tags["self"] == "O"
    long = dt.tagged_pieces(["x " * 70, "tail mode."], ["mode"], max_words=64)
    assert [len(p.words) for p in long] == [64, 9]  # a long sentence is cut, its rest packed with the next
    kept = dt.tag_sentences(fn_of(["Nothing here.", "Uses mode."] + ["y " * 60], ["mode"]))
    assert [p.words for p in kept] == [["Nothing", "here", ".", "Uses", "mode", "."]]
    negative = dt.tag_sentences(fn_of(["Does things."], ["self", "mode"]))
    assert [p.tags for p in negative] == [["O", "O", "O"]]  # the one negative of a function
    assert dt.tag_sentences(fn_of(["Does things."], ["self"])) == []  # nothing it could name


def test_qa_rules_by_hand():
    assert dt.return_question("f", "Return the path of the file, or None.")[0] == "What does `f` return?"
    cases = {
        "Return the path of the file, or None.": "the path of the file",
        "Returns a list (possibly empty) of names.": "a list",
        "Return UTC time compatible with time.gmtime().": "UTC time compatible with time.gmtime()",
        "Return True if the object is a class (ABC).": "the object is a class (ABC)",
        ":returns: The text if found.": "The text",
        "Return a header block. info is a dict.": "a header block",
    }
    for sentence, answer in cases.items():
        _, a, b = dt.return_question("f", sentence)
        assert sentence[a:b] == answer
    assert dt.return_question("f", "Return True if x; else False.")[0] == "When does `f` return True?"
    assert dt.return_question("f", "Return True.") is None
    assert dt.return_question("f", "Returning home.") is None
    assert dt.return_question("f", "Return value is an integer.") is None
    assert dt.return_question("f", "Return (a // b, a % b).") is None  # cut inside the brackets
    params = {"self", "name", "mode"}
    cases = {
        "name -- the file to open": ("name", "the file to open"),
        "name - the file. More text": ("name", "the file"),
        "name: the file mode: how to open it": ("name", "the file"),
        ":param str name: the file,": ("name", "the file"),
        "**mode: how.": ("mode", "how"),
        ":param name: a path :return: a file": ("name", "a path"),
    }
    for sentence, (p, answer) in cases.items():
        q, question, a, b = dt.param_question(sentence, params)
        assert (q, question, sentence[a:b]) == (p, f"What is `{p}`?", answer)
    assert dt.param_question("self: the object", params) is None
    assert dt.param_question("other -- not a parameter", params) is None
    p, _, a, b = dt.prose_question("The optional `name` is the file to open, or None.", params)
    assert (p, "The optional `name` is the file to open, or None."[a:b]) == ("name", "the file to open")
    assert dt.prose_question("If name is a string, open it.", params) is None
    examples = dt.qa_examples(fn_of(["Open a file.", "Return the handle.", "name -- the file",
                                     "Return nothing.", "The name is a path."], ["name"]))
    assert [(e.question, e.answers) for e in examples] == [
        ("What does `f` return?", [("the handle", 20)]), ("What is `name`?", [("the file", 40)])]


def _trivial_baselines(examples):
    """Accuracy of choosing the longest ending, and the ending sharing the most lowercased words
    with the context (ties: the first such ending), each computed here, not by the code under test."""
    def words(t):
        return set(re.findall(r"[a-z0-9]+", t.lower()))
    longest = np.mean([max(range(4), key=lambda i: len(e.endings[i])) == e.label for e in examples])
    overlap = np.mean([max(range(4), key=lambda i: (len(words(e.context) & words(e.endings[i])), -i)) == e.label
                       for e in examples])
    return float(longest), float(overlap)


@pytest.mark.parametrize("fraction", [0.05, 0.2])
def test_choice_task_is_next_sentence_split_by_document(fraction):
    """Each true ending is the sentence after its context in a document of the example's own
    split (read back from the document's text), every ending of a held-out example is text of
    held-out documents, the endings are distinct and the labels spread evenly."""
    splits = dict(zip(("train", "heldout"), dt.default_choice_task(fraction)))
    for split, examples in splits.items():
        docs = default_corpus(split, heldout_fraction=fraction)
        followers = {}  # first sentence of a document -> the sentences after it, from Document.text
        for d in docs:
            first = d.sentences[0]
            if len(d.sentences) > 1 and d.text.startswith(first + " "):
                followers.setdefault(first, set()).add(d.text[len(first) + 1:])
        seconds = {d.sentences[1] for d in docs if len(d.sentences) > 1}
        for e in examples:
            assert len(e.endings) == 4 and len(set(e.endings)) == 4 and 0 <= e.label < 4
            true = e.endings[e.label]
            rest = [t for t in followers[e.context] if t == true or t.startswith(true + " ")]
            assert rest, e  # the true ending follows its context in a document of this split
            assert set(e.endings) <= seconds  # every ending is text of this split's documents
            for i, wrong in enumerate(e.endings):
                if i != e.label:  # no distractor follows this context anywhere in the split
                    assert not any(t == wrong or t.startswith(wrong + " ") for t in followers[e.context])
        counts = Counter(e.label for e in examples)
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == 4
    assert not {e.context for e in splits["train"]} & {e.context for e in splits["heldout"]}


def test_choice_task_is_not_solved_by_a_trivial_baseline():
    """Chance is 25%; choosing by length or by words shared with the context stays near it."""
    for examples in dt.default_choice_task():
        longest, overlap = _trivial_baselines(examples)
        assert longest < 0.35 and overlap < 0.35, (longest, overlap)


def test_choice_rule_by_hand():
    texts = [["Open the file now.", "The file is read whole."],
             ["Close the socket.", "The socket is gone now."],
             ["Send some bytes.", "The bytes go out soon."],
             ["Read a line.", "A line ends at newline."],
             ["Write the file.", "Now the file is on disk."],
             ["One.", "Too short to use."],
             ["Open the file now.", "The socket is gone now."]]
    pairs = dt.choice_pairs([fn_of(t, []) for t in texts])
    assert [p[2] for p in pairs] == [t[1] for t in texts[:5] + texts[6:]]  # "One." has too few words
    examples = dt.choice_examples(pairs)
    first = examples[0]
    # of its length band, the most words shared with "Open the file now." (3: the file now, 1: the, 0), then
    # the nearest in length; not "The socket is gone now.", which follows the same context elsewhere
    assert first == ChoiceExample("Open the file now.", ["The file is read whole.", "Now the file is on disk.",
                                                         "The bytes go out soon.", "A line ends at newline."], 0)
    assert "The file is read whole." not in examples[-1].endings
    assert [e.label for e in examples] == [0, 1, 2, 3, 0, 1]
    assert all(e.endings[e.label] == p[2] for e, p in zip(examples, pairs))

def test_every_answer_is_a_span_of_its_context(functions, def_params):
    train, held = dt.default_qa_task()
    examples = train + held
    assert len({e.id for e in examples}) == len(examples)
    by_id = {f"{fn.document.name}:{fn.lineno}": fn for fn in functions}
    for e in examples:
        ((text, start),) = e.answers
        assert e.context[start:start + len(text)] == text and text == text.strip()
        assert 1 <= len(text.split()) <= dt.MAX_ANSWER_WORDS and not e.is_impossible
        fn = by_id[e.id.split(":param:")[0] if ":param:" in e.id else e.id.removesuffix(":return")]
        assert e.context == fn.document.text and e.title == fn.document.name
        if ":param:" in e.id:
            p = e.id.split(":param:")[1]
            assert p in def_params[fn.path, fn.lineno] and e.question == f"What is `{p}`?"
            assert re.search(rf"\b{re.escape(p)}\b", e.context)


def test_sizes():
    """The standard library's count: sane on any Python; Python 3.11's exact sizes in finetuning.md."""
    tag_train, tag_held = dt.default_tag_task()
    qa_train, qa_held = dt.default_qa_task()
    assert 2500 < len(tag_train) < 8000 and 80 < len(tag_held) < 600
    assert 1200 < len(qa_train) < 4000 and 40 < len(qa_held) < 300
    negatives = sum(PARAM not in s.tags for s in tag_train)
    assert 0.15 < negatives / len(tag_train) < 0.5  # some negatives, bounded
    choice_train, choice_held = dt.default_choice_task()
    assert 1500 < len(choice_train) < 5000 and 50 < len(choice_held) < 300
    if sys.version_info[:2] == (3, 11):
        assert (len(tag_train), len(tag_held), len(qa_train), len(qa_held)) == (4390, 213, 2038, 111)
        assert (len(choice_train), len(choice_held)) == (2623, 114)


def test_files_read_back(tmp_path):
    """write_default_tasks (scripts/make_default_tasks.py) writes what the readers read back."""
    spec = importlib.util.spec_from_file_location("make_default_tasks", ROOT / "scripts" / "make_default_tasks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path)]) == 0
    counts = dt.write_default_tasks(tmp_path / "again")
    for name in counts:
        assert (tmp_path / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    tag_train, tag_held = dt.default_tag_task()
    qa_train, qa_held = dt.default_qa_task()
    assert read_tagged(tmp_path / "tags.train.conll") == tag_train
    assert read_tagged(tmp_path / "tags.heldout.conll") == tag_held
    assert read_squad(tmp_path / "qa.train.json") == (qa_train, False)
    assert read_squad(tmp_path / "qa.heldout.json") == (qa_held, False)
    choice_train, choice_held = dt.default_choice_task()
    assert read_choices(str(tmp_path / "choice.train.jsonl")) == choice_train
    assert read_choices(str(tmp_path / "choice.heldout.jsonl")) == choice_held
    assert counts == {"tags.train.conll": len(tag_train), "qa.train.json": len(qa_train),
                      "tags.heldout.conll": len(tag_held), "qa.heldout.json": len(qa_held),
                      "choice.train.jsonl": len(choice_train), "choice.heldout.jsonl": len(choice_held)}


@pytest.mark.parametrize("task", ["tag", "qa", "choice"])
def test_compare_pretraining_on_the_default_task(tmp_path, task, capsys):
    """A tiny comparison: both arms fine-tune on the same drawn examples, are scored on the
    whole held-out split, and the table names the task's scores."""
    from test_finetune import fake_pretraining_run  # noqa: E402  (the tiny pretraining run those tests use)
    tag_train, _ = dt.default_tag_task()
    text = [" ".join(s.words) for s in tag_train[:300]]
    tok = BPETokenizer.train_from_iterator(text, 300, special_tokens=SPECIAL_TOKENS, progress=False)
    pretrained = fake_pretraining_run(tmp_path / "pt", tok)
    res = compare_pretraining(pretrained, str(tmp_path / "cmp"), seeds=(0,), task=task, train_examples=(24,),
                              epochs=1, max_length=64, doc_stride=8, max_question_length=24, log_every=1000)
    assert res == json.loads((tmp_path / "cmp" / "results.json").read_text())
    (g,) = res["regimes"]
    assert g["train_examples"] == 24 and g["train_examples_drawn"] == 24
    held = {"tag": dt.default_tag_task, "qa": dt.default_qa_task, "choice": dt.default_choice_task}[task]()[1]
    for init in ("pretrained", "random"):
        (run,) = g["runs"][init]
        assert run["examples"] == len(held) and all(0 <= run[k] <= 100 for k, _ in SCORES[task])
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert f"held-out {SCORES[task][0][1]}" in table and "| (b) random |" in table
    assert table in capsys.readouterr().out
    drawn = [json.loads((tmp_path / "cmp" / f"{init}-n24-seed0" / "config.json").read_text())["finetune"]["train"]
             for init in ("pretrained", "random")]
    assert drawn[0] == drawn[1] and drawn[0].startswith("24 examples in memory")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny random pretraining run whose config.json says heldout_fraction 0.1 (not the 0.05 default)."""
    from test_finetune import fake_pretraining_run  # noqa: E402  (the tiny pretraining run those tests use)
    tag_train, _ = dt.default_tag_task()
    text = [" ".join(s.words) for s in tag_train[:300]]
    tok = BPETokenizer.train_from_iterator(text, 300, special_tokens=SPECIAL_TOKENS, progress=False)
    run = fake_pretraining_run(tmp_path_factory.mktemp("pt") / "run", tok)
    (Path(run) / "config.json").write_text(json.dumps({"train": {"heldout_fraction": 0.1}}))
    return run


def _finetune_script():
    spec = importlib.util.spec_from_file_location("finetune_script", ROOT / "scripts" / "finetune.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize("task", ["tag", "qa", "choice"])
def test_finetune_without_train_uses_the_default_task(tmp_path, tiny_run, task, monkeypatch, capsys):
    """scripts/finetune.py --task tag|qa|choice with no --train: the default task, split with the
    pretraining run's heldout_fraction, evaluated on its held-out split (a slice of each
    here, so the test takes seconds)."""
    import minibert.choice_task
    import minibert.qa_task
    import minibert.tag_task
    module, name, full = {"tag": (minibert.tag_task, "default_tag_task", dt.default_tag_task),
                          "qa": (minibert.qa_task, "default_qa_task", dt.default_qa_task),
                          "choice": (minibert.choice_task, "default_choice_task", dt.default_choice_task)}[task]
    asked = []

    def sliced(heldout_fraction):
        asked.append(heldout_fraction)
        train, held = full(heldout_fraction)
        return train[:24], held[:12]
    monkeypatch.setattr(module, name, sliced)
    out = tmp_path / task
    args = ["--task", task, "--from", tiny_run, "--out", str(out), "--epochs", "1", "--max-length", "64",
            "--log-every", "1000"]
    if task == "qa":
        args += ["--doc-stride", "8", "--max-question-length", "24"]
    assert _finetune_script().main(args) == 0
    assert asked == [0.1]
    log = capsys.readouterr().out
    assert "default task:" in log and "(heldout_fraction 0.1)" in log
    res = json.loads((out / "results.json").read_text())
    assert res["train_examples"] == 24 and res["validation_examples"] == 12
    held = full(0.1)[1][:12]
    if task == "tag":
        assert res["entities"] == sum(t == PARAM for s in held for t in s.tags) and 0 <= res["entity_f1"] <= 1
    elif task == "qa":
        assert res["questions"] == 12 and res["version_2"] is False and 0 <= res["f1"] <= 100
    else:
        assert 0 <= res["acc"] <= 1
    assert json.loads((out / "config.json").read_text())["finetune"]["train"] == ""
    # the default task is evaluated on its held-out split, not on a --validation file; tagged IOB2
    assert _finetune_script().main(args + ["--overwrite", "--validation", str(out / "x")]) == 1
    assert "--validation goes with --train" in capsys.readouterr().err
    if task == "tag":
        assert _finetune_script().main(args + ["--overwrite", "--scheme", "BIOES"]) == 1
        assert "tagged IOB2" in capsys.readouterr().err
