"""The docs cannot rot: their code runs, and their commands name flags that exist.

Python blocks. Every fenced block whose info string is ``python`` in README.md and in
docs/*.md runs here, in order, one namespace per file (a later block may use what an earlier
one made), in a fresh temporary directory that is the working directory, on the NumPy
backend. A block that must not run says so in its info string: ```` ```python no-run ````.
A fenced block whose info string ends in ``output`` (```` ```text output ````) right after a
python block is what that block prints: the test compares it with the captured stdout, line
by line with trailing spaces ignored. An output block that names a Python version
(```` ```text output python3.11 ````) is what that version prints, from data Python itself
holds (its standard library's docstrings, say): the block still runs on any version, and its
output is compared on that one.
Use it sparingly: for code that needs a trained run or minutes of CPU, and say in the text
around it what it needs. A failing block fails the test of its file, and the traceback names
the file and the line of the block.

Commands. Blocks that must not run here (pretraining, benchmarks, fine-tuning) are shell
commands; every ``scripts/NAME.py`` command anywhere in the docs (indented blocks, fenced
shell blocks, inline code) is checked against NAME.py's own argparse parser: each flag it uses
must be an option string of that parser, spelled out in full (argparse would accept an
abbreviation; a doc should not rely on it). The parser is taken from the script itself by
intercepting ``ArgumentParser.parse_args`` when its ``main()`` runs, so nothing is trained.
"""
import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from minibert import backend

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(`{3,}|~{3,})\s*(.*)$")
SCRIPT = re.compile(r"scripts/(\w+)\.py\b")
FLAG = re.compile(r"^--?[A-Za-z][\w-]*")
SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "2>", "&"}


def fenced_blocks(text):
    """(info string, first line number of the code (1-based), code) of each fenced block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i + 1
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        blocks.append((info, start + 1, "\n".join(lines[start:i])))
        i += 1
    return blocks


def python_blocks(text):
    """(line, code, runs, expected output or None) of each ```python block; runs is False for
    ```python no-run; the expected output is the fenced block right after it marked output."""
    out, blocks = [], fenced_blocks(text)
    for k, (info, line, code) in enumerate(blocks):
        words = info.split()
        if words and words[0] == "python":
            nxt = blocks[k + 1] if k + 1 < len(blocks) else None
            expected = nxt[2] if nxt and "output" in nxt[0].split()[1:] else None
            version = next((w for w in nxt[0].split() if w.startswith("python3.")), None) if expected else None
            if version and version != f"python{sys.version_info[0]}.{sys.version_info[1]}":
                expected = None  # another Python's output: run the block, compare nothing
            out.append((line, code, "no-run" not in words[1:], expected))
    return out


def run_blocks(path, text, workdir):
    """Execute the python blocks of one markdown text in order, in one namespace, in workdir;
    check each printed output that the text states."""
    namespace = {"__name__": "__docs__"}
    old_cwd, old_xp = os.getcwd(), backend.name
    os.chdir(workdir)
    backend.use("numpy")
    try:
        for line, code, runs, expected in python_blocks(text):
            if not runs:
                continue
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                # padding with blank lines makes tracebacks point at the line in the .md file
                exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)
            if expected is not None:
                got = [x.rstrip() for x in printed.getvalue().rstrip("\n").splitlines()]
                if got != [x.rstrip() for x in expected.splitlines()]:
                    raise AssertionError(f"{path}:{line}: the block prints\n" + "\n".join(got)
                                         + "\nbut the text after it says\n" + expected)
    finally:
        os.chdir(old_cwd)
        backend.use(old_xp)
    return namespace


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_python_blocks_run(path, tmp_path):
    """Each file's blocks run in a fresh interpreter, as a reader runs them: nothing that other
    tests imported (transformers patches logging.Logger, say) can change what a block sees."""
    env = dict(os.environ, MINIBERT_BACKEND="numpy")
    r = subprocess.run([sys.executable, __file__, str(path), str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, f"{path.name}: its python blocks failed\n{r.stdout[-2000:]}\n{r.stderr[-6000:]}"


def test_a_broken_block_fails(tmp_path):
    """The runner is not a no-op: a wrong statement in a block fails, naming its line."""
    text = "Intro.\n\n```python\nx = 1\n```\n\nMore.\n\n```python\nassert x == 2, 'doc is wrong'\n```\n"
    with pytest.raises(AssertionError, match="doc is wrong") as info:
        run_blocks(Path("broken.md"), text, tmp_path)
    assert any(str(e.path) == "broken.md" and e.lineno + 1 == 10 for e in info.traceback)  # lineno is 0-based
    skipped = "```python no-run\nraise SystemExit('must not run')\n```\n"
    assert run_blocks(Path("skip.md"), skipped, tmp_path)["__name__"] == "__docs__"
    stale = "```python\nprint(1 + 1)\n```\n\n```text output\n3\n```\n"
    with pytest.raises(AssertionError, match="the block prints\n2\n"):
        run_blocks(Path("stale.md"), stale, tmp_path)
    here = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    with pytest.raises(AssertionError, match="the block prints\n2\n"):  # this Python's output is compared
        run_blocks(Path("stale.md"), stale.replace("text output", f"text output {here}"), tmp_path)
    run_blocks(Path("other.md"), stale.replace("text output", "text output python3.1"), tmp_path)  # another's is not


# ----------------------------------------------------------------------------------------
# commands: every flag a doc passes to scripts/NAME.py exists in NAME.py's parser


class _Parser(Exception):
    def __init__(self, parser):
        self.parser = parser


def script_parser(name, _cache={}):
    """The ArgumentParser that scripts/NAME.py builds, taken when main() calls parse_args."""
    if name not in _cache:
        spec = importlib.util.spec_from_file_location(f"_docs_script_{name}", ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses in the script look their module up
        sys.path.insert(0, str(ROOT / "scripts"))  # scripts import each other (compare_pretraining -> finetune)
        original = argparse.ArgumentParser.parse_args

        def capture(self, *args, **kw):
            raise _Parser(self)

        argparse.ArgumentParser.parse_args = capture
        try:
            spec.loader.exec_module(module)
            module.main()
            raise AssertionError(f"scripts/{name}.py main() returned without parsing arguments")
        except _Parser as e:
            _cache[name] = e.parser
        finally:
            argparse.ArgumentParser.parse_args = original
            sys.path.remove(str(ROOT / "scripts"))
    return _cache[name]


def doc_commands(text):
    """(line, script name, flags) of every scripts/NAME.py command outside python blocks."""
    lines = text.splitlines()
    skip = set()
    for line, code, _, _ in python_blocks(text):
        skip.update(range(line - 1, line - 1 + len(code.splitlines())))
    out = []
    for i, line in enumerate(lines):
        if i in skip:
            continue
        for m in SCRIPT.finditer(line):
            rest = line[m.end():]
            if line[:m.start()].count("`") % 2:  # inline code: the command ends at the backtick
                rest = rest.split("`")[0]
            j = i
            while rest.rstrip().endswith("\\") and j + 1 < len(lines):  # shell line continuation
                j += 1
                rest = rest.rstrip()[:-1] + " " + lines[j]
            try:
                words = shlex.split(rest, comments=True)
            except ValueError:  # an unbalanced quote in prose: take the words as they are
                words = rest.split()
            flags = []
            for w in words:
                if w in SHELL_STOP or w.startswith((">", "2>")):
                    break
                if FLAG.match(w):
                    flags.append(FLAG.match(w).group(0))
            out.append((i + 1, m.group(1), flags))
    return out


def all_commands():
    return [(p, *c) for p in DOC_FILES for c in doc_commands(p.read_text(encoding="utf-8"))]


def test_docs_have_commands():
    names = {name for _, _, name, _ in all_commands()}
    assert {"pretrain", "finetune", "fill_mask", "train_tokenizer", "bench"} <= names


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_command_flags_exist(path):
    problems = []
    for line, name, flags in doc_commands(path.read_text(encoding="utf-8")):
        if not (ROOT / "scripts" / f"{name}.py").exists():
            problems.append(f"{path.name}:{line}: scripts/{name}.py does not exist")
            continue
        known = script_parser(name)._option_string_actions
        problems += [f"{path.name}:{line}: scripts/{name}.py has no flag {f}" for f in flags if f not in known]
    assert not problems, "\n".join(problems)


def test_a_wrong_flag_is_caught():
    """The flag check is not a no-op: a misspelt flag and a missing script are both found."""
    text = "Run\n\n    python scripts/pretrain.py --steps 10 --stepz 5   # typo\n\nand `scripts/nope.py --x`.\n"
    (line, name, flags), _ = doc_commands(text)
    assert (line, name, flags) == (3, "pretrain", ["--steps", "--stepz"])
    known = script_parser("pretrain")._option_string_actions
    assert [f for f in flags if f not in known] == ["--stepz"]


# ----------------------------------------------------------------------------------------
# names: every `minibert/x.py::name` and `tests/test_x.py::name` a doc points at exists

REFERENCE = re.compile(r"\b((?:minibert|tests)/\w+\.py)::([\w.]+)")


def test_named_functions_exist():
    problems = []
    for path in DOC_FILES:
        for m in REFERENCE.finditer(path.read_text(encoding="utf-8")):
            file, name = m.group(1), m.group(2).rstrip(".")
            if file.startswith("tests/"):
                ok = re.search(rf"^def {re.escape(name)}\b", (ROOT / file).read_text(), re.M) is not None
            else:
                obj = importlib.import_module(file[:-3].replace("/", "."))
                for part in name.split("."):
                    obj = getattr(obj, part, None)
                ok = obj is not None
            if not ok:
                problems.append(f"{path.name}: {file}::{name} does not exist")
    assert not problems, "\n".join(problems)


if __name__ == "__main__":  # python tests/test_docs.py DOC.md WORKDIR: run one file's blocks
    run_blocks(Path(sys.argv[1]), Path(sys.argv[1]).read_text(encoding="utf-8"), sys.argv[2])
