"""What the DSL needs to know of the ops (the keys of the `nas_neck.ops` registries, and which
fusions keep their inputs' order), known without importing torch.

`nas_neck.ops` imports torch, which takes one to two seconds; checking a space's YAML (`nas-neck
spaces`, `show`, every option naming a space) and hashing a genotype need only these names. So
until `nas_neck.ops` is imported they are read from its source: each registry's dict literal
(`BLOCKS: dict[...] = {"conv": ..., ...}`), module-level `BLOCKS["name"] = ...` lines, and a
fusion's `ordered=True` (`Fusion(..., ordered=True)`), which is what the registries hold once
imported (`tests/test_startup.py` checks that they agree). Once `nas_neck.ops` is imported,
which anything that registers an op at runtime has done, the live registries are read, so ops
added at runtime count. Should the source ever declare a registry in a form not read here, the
registries are imported after all: slower, never wrong.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

REGISTRIES = ("BLOCKS", "FUSE_OPS", "UPSAMPLE_MODES", "DOWNSAMPLE_MODES")


def op_names(registry: str) -> list[str]:
    """The names in `registry` (one of `REGISTRIES`), in the registry's order."""
    ops = sys.modules.get("nas_neck.ops")
    if ops is None:
        declared = declared_ops()
        if declared is not None:
            return list(declared.names[registry])
        import nas_neck.ops as ops  # the source could not be read: import it after all
    return list(getattr(ops, registry))


def fusion_is_ordered(op: str) -> bool:
    """Whether fusion `op`'s inputs keep their order (`nas_neck.ops.fusion.fusion_is_ordered`:
    an unknown op or a plain factory, no)."""
    fusion = sys.modules.get("nas_neck.ops.fusion")
    if fusion is None:
        declared = declared_ops()
        if declared is not None:
            return op in declared.ordered
        import nas_neck.ops.fusion as fusion
    return bool(fusion.fusion_is_ordered(op))


@dataclass(frozen=True)
class DeclaredOps:
    """The registries' keys and the ordered fusions, as the source of `nas_neck.ops` has them."""

    names: dict[str, tuple[str, ...]]
    ordered: frozenset[str]


@functools.cache
def declared_ops() -> DeclaredOps | None:
    """What the source of `nas_neck.ops` declares; None when a registry is not found there in a
    form read here (then the registries are imported)."""
    spec = importlib.util.find_spec("nas_neck.ops")  # finds the folder, imports nothing of it
    folders = (spec.submodule_search_locations or []) if spec else []
    try:
        sources = sorted(p for folder in folders for p in Path(folder).glob("*.py"))
        trees = [ast.parse(p.read_text(encoding="utf-8")) for p in sources]
    except (OSError, SyntaxError, ValueError):
        return None
    found: dict[str, list[str]] = {}
    ordered: set[str] = set()
    for tree in trees:
        for node in tree.body:
            _read(node, found, ordered)
    if set(found) != set(REGISTRIES):
        return None
    return DeclaredOps({k: tuple(v) for k, v in found.items()}, frozenset(ordered))


def _read(node: ast.stmt, found: dict[str, list[str]], ordered: set[str]) -> None:
    """Add the registry entries a module-level statement declares."""
    if not isinstance(node, ast.AnnAssign | ast.Assign) or node.value is None:
        return
    targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
    for target in targets:
        if isinstance(target, ast.Name) and target.id in REGISTRIES:
            if not isinstance(node.value, ast.Dict):
                continue  # not a literal: left unread, so the registries are imported
            keys = [_text(k) for k in node.value.keys]
            if all(k is not None for k in keys):
                found[target.id] = list(keys)  # type: ignore[arg-type]
                for key, value in zip(keys, node.value.values, strict=True):
                    if target.id == "FUSE_OPS" and _is_ordered(value):
                        ordered.add(key)  # type: ignore[arg-type]
        elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
            registry, key = target.value.id, _text(target.slice)
            if registry in found and key is not None:
                if key not in found[registry]:
                    found[registry].append(key)
                if registry == "FUSE_OPS" and _is_ordered(node.value):
                    ordered.add(key)


def _text(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_ordered(value: ast.AST) -> bool:
    """Whether a registry value reads `Something(..., ordered=True)`."""
    return isinstance(value, ast.Call) and any(
        k.arg == "ordered" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in value.keywords
    )
