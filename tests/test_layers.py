"""The package is layered: no import cycle between its modules, nor between its subpackages.

The graph is read from the source (each file's AST), not by importing anything, so it covers every
module under `nas_neck/` as it is on disk, including ones no test imports.

What counts as an edge:

* every `import nas_neck...` and `from nas_neck... import ...` (relative forms resolved), wherever
  it stands: inside a function (a lazy import only postpones a cycle, it does not remove it) and
  under `if TYPE_CHECKING:` too (an annotation naming a module that imports this one back is the
  same knot in the design, and the package has none, so none need excusing);
* `from package import name` points at the submodule `package.name` when there is one, else at
  the package (its `__init__`); importing `a.b.c` is an edge to `a.b.c` only, not to the parent
  packages Python runs first (a package's `__init__` re-exporting its own submodules is no cycle).

At the subpackage level each module stands for its subpackage (`nas_neck.search.study` ->
`nas_neck.search`); a top-level module (`nas_neck.proxy`, `nas_neck.cli`) is its own node.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "nas_neck"
ROOT = PACKAGE.name
Graph = dict[str, set[str]]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name, found on disk."""
    return {
        _module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts
    }


def _imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement in `tree`, at any depth."""
    return (node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom))


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The module behind an imported dotted name: itself, else its longest known prefix."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _targets(module: str, path: Path, modules: dict[str, Path]) -> Iterable[str]:
    """The package's modules that `module` imports (absolute names)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            if node.level:  # relative: `from . import x`, `from ..pkg import y`
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            names = [
                f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin
                for a in node.names
            ]
        for name in names:
            if name == ROOT or name.startswith(f"{ROOT}."):
                yield _resolve(name, modules)


def module_graph() -> Graph:
    """Module -> the package's modules it imports."""
    modules = _modules()
    return {m: set(_targets(m, p, modules)) - {m} for m, p in modules.items()}


def _subpackage(module: str) -> str:
    """`nas_neck.search.study` -> `nas_neck.search`; `nas_neck.proxy` stays itself."""
    parts = module.split(".")
    if len(parts) <= 2:
        return module
    return ".".join(parts[:2])


def subpackage_graph(graph: Graph) -> Graph:
    out: Graph = {}
    for m, targets in graph.items():
        node = _subpackage(m)
        out.setdefault(node, set()).update(_subpackage(t) for t in targets)
    for node, targets in out.items():
        targets.discard(node)
    return out


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle per strongly connected component of more than one node (Tarjan), each listed
    from its smallest node along edges back to it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_cycle_in(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_in(graph: Graph, component: set[str]) -> list[str]:
    """A shortest path from the component's smallest node back to itself (breadth first)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def _explain(found: list[list[str]]) -> str:
    return "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in found)


# ---- the graph reader itself ---------------------------------------------------------------------
def test_cycle_finder_on_a_known_graph() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "e2", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_from_package_imports_resolve(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / ROOT
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import Y\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from .. import top\n"
        "from . import other\n"
        "if TYPE_CHECKING:\n"
        "    from nas_neck.sub.hidden import Z\n"
        "def f():\n"
        "    import nas_neck.sub.lazy as lazy\n"
        "    from nas_neck import __version__\n"
    )
    for name in ("other", "hidden", "lazy"):
        (pkg / "sub" / f"{name}.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = module_graph()
    assert graph[f"{ROOT}.sub"] == {f"{ROOT}.sub.leaf"}
    assert graph[f"{ROOT}.sub.leaf"] == {
        f"{ROOT}.top",
        f"{ROOT}.sub.other",
        f"{ROOT}.sub.hidden",  # under TYPE_CHECKING: counted
        f"{ROOT}.sub.lazy",  # inside a function: counted
        ROOT,
    }
    assert subpackage_graph(graph)[f"{ROOT}.sub"] == {f"{ROOT}.top", ROOT}


# ---- the package -------------------------------------------------------------------------------
def test_no_import_cycle_between_modules() -> None:
    found = cycles(module_graph())
    assert not found, _explain(found)


def test_no_import_cycle_between_subpackages() -> None:
    found = cycles(subpackage_graph(module_graph()))
    assert not found, _explain(found)


def test_metrics_imports_only_the_standard_library() -> None:
    """`nas_neck.metrics` is the bottom of the metric vocabulary: anything may import it."""
    path = PACKAGE / "metrics.py"
    imported = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            imported.add(".")
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        imported.update(str(n).split(".")[0] for n in names)
    assert imported <= set(sys.stdlib_module_names), sorted(imported - set(sys.stdlib_module_names))
