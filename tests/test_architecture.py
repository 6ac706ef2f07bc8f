"""One-way imports: the gateway and the estimator are separate processes.

``hil -> gateway.codecs, gateway.config, estimator.network``; the gateway reaches into the
estimator only for the network model (config validation) and into ``models`` only for the
ONNX runtime of the data-quality stage; the estimator is a pure library that imports
nothing of the other packages; nothing imports ``hil`` but tests and the
command-line/benchmark entry points; torch is never loaded by what runs live.

The house rules beside the import direction: no module of the four packages takes part in
an import circle (every import counts, also inside functions), and no function is longer
than 80 lines (a short, commented allowlist holds only functions being reworked now).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> prefixes of other packages it may import (anywhere in a module)
#: the run-time part of ``models`` (cards, ONNX runtime, features, solar position): what
#: the gateway and the test rig may use; training and evaluation are entry points
MODELS_RUNTIME = ("models.runtime", "models.card", "models.features", "models.pv_features",
                  "models.solar", "models.errors")
ALLOWED: dict[str, tuple[str, ...]] = {
    # the estimator is a library the gateway uses whole; the quality stage runs the ONNX
    # models in the gateway process
    "gateway": ("estimator", *MODELS_RUNTIME),
    # a pure library: nothing of the other packages, not even in its entry points
    "estimator": (),
    # the test rig drives everything
    "hil": ("gateway", "estimator", *MODELS_RUNTIME),
    # the run-time part imports nothing of the other packages; entry points (below) may
    "models": (),
}
# entry points (CLI subcommands, benchmarks, evaluation) and the offline training code
# may use any package
ENTRY_POINT_PREFIXES = ("cli", "bench", "evaluate", "train", "data", "nets")
PACKAGES = tuple(ALLOWED)


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(module, at_top_level) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    top = set(id(n) for n in tree.body)
    out: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, id(node) in top) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, id(node) in top))
    return out


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_import_direction(path: Path) -> None:
    pkg = path.relative_to(ROOT).parts[0]
    # the estimator is a pure library: its entry points get no exemption
    entry = path.name.startswith(ENTRY_POINT_PREFIXES) and pkg != "estimator"
    for mod, top in imports_of(path):
        root = mod.split(".")[0]
        if root == "torch":
            assert pkg == "models" and (entry or not top), (
                f"{path.name} imports torch at module level; only training code may")
        if root not in PACKAGES or root == pkg or entry:
            continue
        assert mod.startswith(ALLOWED[pkg]), (
            f"{path.relative_to(ROOT)} imports {mod}: {pkg} may import only "
            f"{', '.join(ALLOWED[pkg])} from other packages")


def test_live_path_never_loads_torch_or_hil() -> None:
    """What `gridtwin run` loads (gateway, estimator process, quality stage) stays lean."""
    code = (
        "import importlib, pkgutil, sys\n"
        "live = ['gateway.config', 'gateway.snapshot']\n"
        "for name in ['gateway.app', 'gateway.quality.stage', 'gateway.quality.detector',"
        " 'gateway.estimator_worker', 'estimator.linear', 'models.runtime', 'models.serve',"
        " 'models.features', 'models.pv_features', 'models.solar', 'models.card']:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name != name: raise\n"
        "    else:\n"
        "        live.append(name)\n"
        "for m in live: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'hil'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"live path loads {out.stdout.strip()}"


# --------------------------------------------------------------------------- import cycles

def module_name(path: Path) -> str:
    """``gateway/config/__init__.py`` -> ``gateway.config``; ``hil/trace.py`` -> ``hil.trace``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, known: set[str]) -> str | None:
    """The module an import of ``name`` loads: ``name`` itself when it is one of ours, else
    its nearest enclosing module (``gateway.config.Schema`` -> ``gateway.config``); None
    for anything outside the four packages."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in known:
            return cand
        parts.pop()
    return None


def import_targets(path: Path, known: set[str]) -> set[str]:
    """Modules of ours that ``path`` imports anywhere (module level, inside functions,
    under ``TYPE_CHECKING``): ``from a.b import c`` counts as importing ``a.b.c`` when that
    is a module (a submodule import), else ``a.b``; relative imports are resolved."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            target = _resolve(name, known)
            if target is not None and target != me:
                out.add(target)
    return out | _packages_run_first(out, me, known)


def _packages_run_first(targets: set[str], me: str, known: set[str]) -> set[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: a module outside
    package ``a.b`` that imports one of its submodules depends on the package's
    ``__init__`` too (the circle a package's loader and an outside module can form)."""
    out: set[str] = set()
    for t in targets:
        parts = t.split(".")
        for i in range(1, len(parts)):
            pkg = ".".join(parts[:i])
            if pkg in known and pkg != me and not me.startswith(pkg + "."):
                out.add(pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    paths = modules()
    known = {module_name(p) for p in paths}
    return {module_name(p): import_targets(p, known) for p in paths}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iterative (no recursion limit on deep
    import chains); every module of a component with more than one member is on a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                components.append(sorted(comp))
    return components


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete import circle inside ``component``, for the failure message."""
    members = set(component)
    path = [component[0]]
    seen = {component[0]: 0}
    while True:
        nxt = sorted(graph[path[-1]] & members)[0]
        if nxt in seen:
            return [*path[seen[nxt]:], nxt]
        seen[nxt] = len(path)
        path.append(nxt)


def test_strongly_connected_finds_cycles() -> None:
    """The detector itself: a circle is one component, a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    comps = strongly_connected(graph)
    assert ["a", "b", "c"] in comps
    assert all(len(c) == 1 for c in comps if c != ["a", "b", "c"])
    assert _cycle_in(["a", "b", "c"], graph) == ["a", "b", "c", "a"]


def test_no_import_cycles_between_modules() -> None:
    """No module of gateway/estimator/models/hil takes part in an import circle, counting
    every import (also inside functions): a circle makes import order matter and blocks
    splitting the packages, and a function-level import only hides it."""
    graph = import_graph()
    assert "gateway.config" in graph and graph["hil.scenario"], "import graph is empty"
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not circles, "import circles: " + "; ".join(
        " -> ".join(_cycle_in(c, graph)) + f" (component: {', '.join(c)})" for c in circles)


# --------------------------------------------------------------------------- function size

MAX_FUNCTION_LINES = 80
#: functions allowed to be longer. Split a function instead of adding it here.
LONG_FUNCTION_ALLOWLIST: set[tuple[str, str]] = set()


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines from ``def`` to its last line) of every function and method
    in the file, nested ones included."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                assert child.end_lineno is not None
                out.append((name, child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return out


def test_function_lengths_measured() -> None:
    """The measure itself: methods and nested functions are found with their length."""
    lengths = dict(function_lengths(ROOT / "hil" / "emulator.py"))
    assert lengths["EmulatorRunner.run"] > 5
    assert "run_in_thread.target" in lengths


def test_no_function_longer_than_80_lines() -> None:
    """Functions stay short enough to read in one screen: a long one is several steps that
    deserve names (and docstrings saying why)."""
    offenders = []
    for path in modules():
        rel = path.relative_to(ROOT).as_posix()
        for name, n in function_lengths(path):
            if n > MAX_FUNCTION_LINES and (rel, name) not in LONG_FUNCTION_ALLOWLIST:
                offenders.append(f"{rel}:{name} ({n} lines)")
    assert not offenders, (f"functions longer than {MAX_FUNCTION_LINES} lines: "
                           + ", ".join(offenders))


#: the project's fixed top level, plus its CI script, docs and ignore file
TOP_LEVEL = {"pyproject.toml", "README.md", "gateway", "estimator", "models", "tests", "hil",
             "deploy", "docs", ".ci", ".gitignore"}


def test_nothing_outside_the_fixed_top_level_is_committed() -> None:
    """A run's by-product (a historian spool in the working folder, say) once slipped into
    a commit: whatever git tracks lies under the fixed top level."""
    res = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    tops = {line.split("/", 1)[0] for line in res.stdout.splitlines() if line}
    assert tops and tops <= TOP_LEVEL, sorted(tops - TOP_LEVEL)
