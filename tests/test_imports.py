"""The package's import graph: no cycles, and a function-local import only for an optional library.

The graph is read from the source with ``ast``, not from ``sys.modules``, so an import inside a
function counts as much as one at the top: a cycle held together by a function-local import is
still a cycle, it only fails later. ``test_a_cycle_is_caught`` runs the same reader on a small
package written for the purpose, so the check itself is shown to fail.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "minibert"

# Libraries the package runs without (a GPU, MPI, plots) or switches off (MINIBERT_NUMBA=0):
# importing them inside the function that needs them is how an optional dependency stays optional.
# cpu_kernels is the package's one Numba module: importing it is importing (and compiling with) Numba.
OPTIONAL = {"cupy", "cupyx", "cupy_backends", "mpi4py", "numba", "cpu_kernels", "matplotlib"}


def read_imports(package_dir):
    """{module: [(imported module or library, line, at_top_level)]} for each module of the package.

    Names are the package's own modules ("kernels") or a library's top-level name ("numpy")."""
    package = package_dir.name
    modules = {p.stem for p in package_dir.glob("*.py") if p.stem != "__init__"}
    found = {}
    for path in sorted(package_dir.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        top = {id(node) for node in tree.body}
        for stmt in tree.body:  # an import under a module-level `if`/`try` is still a top-level one
            if isinstance(stmt, (ast.If, ast.Try)):
                top |= {id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level > 1:
                    raise AssertionError(f"{path.name}:{node.lineno}: relative import beyond the package")
                base = package if node.level == 1 else (node.module or "")
                if node.level == 1 and node.module:
                    base = f"{package}.{node.module}"
                # `from minibert import kernels` imports a module; `from minibert.model import X` its module
                names = [f"{base}.{a.name}" for a in node.names] if base == package else [base]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == package:
                    if len(parts) > 1 and parts[1] in modules:
                        edges.append((parts[1], node.lineno, id(node) in top))
                else:
                    edges.append((parts[0], node.lineno, id(node) in top))
        found[path.stem] = edges
    return found, modules


def find_cycles(found, modules):
    """Every cycle among the package's modules, each as a list of module names ending where it began."""
    graph = {m: sorted({t for t, _, _ in found.get(m, ()) if t in modules and t != m}) for m in modules}
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(m, path):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_cycles():
    found, modules = read_imports(PACKAGE)
    cycles = find_cycles(found, modules)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_function_local_imports_only_for_optional_libraries():
    found, modules = read_imports(PACKAGE)
    local = [f"{m}.py:{line} imports {name}" for m, edges in found.items() for name, line, at_top in edges
             if not at_top and name not in OPTIONAL]
    assert not local, "function-local imports of non-optional modules: " + "; ".join(local)


def test_a_cycle_is_caught(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("from pkg.c import f\n")
    (pkg / "c.py").write_text("def f():\n    from . import a  # a function-local import closes the cycle\n")
    (pkg / "d.py").write_text("import numpy\nfrom pkg import a\n")
    found, modules = read_imports(pkg)
    assert find_cycles(found, modules) == [["a", "b", "c", "a"]]
    assert ("a", 2, False) in found["c"]  # seen as function-local
    (pkg / "c.py").write_text("def f():\n    import numba\n")
    found, modules = read_imports(pkg)
    assert find_cycles(found, modules) == []
    assert ("numba", 2, False) in found["c"]
