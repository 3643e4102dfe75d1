"""Architecture: one fully concrete neck graph (the genotype), with a canonical form and hash.

Node inputs name either a cell input level (`P3`, ..., `P7`: a backbone level or an extra level
in the first cell, the previous cell's output at that level in later cells) or an earlier node.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from nas_neck.dsl.opnames import fusion_is_ordered


@dataclass(frozen=True)
class Node:
    """One fusion node: resample `inputs` to `level`, fuse them, refine with `block` x `depth`."""

    name: str
    level: int
    inputs: tuple[str, ...]
    fuse: str = "sum"
    block: str = "conv"
    depth: int = 1
    width: int = 64
    upsample: str | None = "nearest"
    downsample: str | None = "conv"
    output: bool = False


@dataclass(frozen=True)
class Architecture:
    """A concrete neck: cell inputs, nodes in topological order, extras and repeats."""

    inputs: tuple[int, ...]
    nodes: tuple[Node, ...]
    name: str = "neck"
    width: int = 64
    repeat: int = 1
    extra_levels: tuple[int, ...] = ()
    extra_downsample: str = "conv"
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # ---- structure -----------------------------------------------------------------------
    @property
    def cell_levels(self) -> tuple[int, ...]:
        """Levels a cell reads: backbone levels then extra levels."""
        return self.inputs + self.extra_levels

    @property
    def outputs(self) -> tuple[Node, ...]:
        """Output nodes ordered by level."""
        return tuple(sorted((n for n in self.nodes if n.output), key=lambda n: n.level))

    @property
    def out_levels(self) -> tuple[int, ...]:
        return tuple(n.level for n in self.outputs)

    def level_of(self, ref: str) -> int:
        """Level of an input reference (`P4` or a node name)."""
        for node in self.nodes:
            if node.name == ref:
                return node.level
        return int(ref[1:])

    # ---- canonical form and hash -----------------------------------------------------------
    def pruned(self) -> Architecture:
        """The same architecture without nodes that feed no output."""
        live = _live_nodes(self.outputs, {n.name: n for n in self.nodes})
        return replace(self, nodes=tuple(n for n in self.nodes if n.name in live))

    def canonical(self) -> Architecture:
        """The same graph in canonical spelling: dead nodes dropped, nodes renamed `n0..` in a
        deterministic topological order, symmetric inputs sorted, irrelevant fields cleared."""
        by_name = {n.name: n for n in self.nodes}
        live = _live_nodes(self.outputs, by_name)
        sigs: dict[str, str] = {f"P{lvl}": f"P{lvl}" for lvl in range(2, 8)}
        depth: dict[str, int] = {}
        order = [n for n in self.nodes if n.name in live]  # already topological
        for node in order:
            inputs = _ordered_inputs(node, lambda r: sigs[r])
            depth[node.name] = 1 + max((depth.get(r, 0) for r in inputs), default=0)
            body = _normalized(node, self.level_of, inputs=tuple(sigs[r] for r in inputs))
            sigs[node.name] = _digest(replace(body, name=""))
        order.sort(key=lambda n: (depth[n.name], sigs[n.name]))
        rename = {f"P{lvl}": f"P{lvl}" for lvl in range(2, 8)}
        nodes = []
        for i, node in enumerate(order):
            rename[node.name] = f"n{i}"
            inputs = tuple(rename[r] for r in _ordered_inputs(node, lambda r: sigs[r]))
            nodes.append(replace(_normalized(node, self.level_of), name=f"n{i}", inputs=inputs))
        return replace(
            self,
            nodes=tuple(nodes),
            extra_downsample=self.extra_downsample if self.extra_levels else "conv",
            width=self.width if self.extra_levels else 64,
        )

    @property
    def hash(self) -> str:
        """Stable 12-hex-digit hash of the canonical form (the name and params do not count)."""
        data = self.canonical().to_dict()
        data.pop("name")
        return _digest(data)[:12]

    # ---- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The architecture in the DSL's own YAML form: a search space with no domains."""
        nodes = {}
        for node in self.nodes:
            d = asdict(node)
            d.pop("name")
            d["inputs"] = list(node.inputs)
            nodes[node.name] = {k: v for k, v in d.items() if v is not None}
        data: dict[str, Any] = {
            "name": self.name,
            "inputs": [f"P{lvl}" for lvl in self.inputs],
            "width": self.width,
            "repeat": self.repeat,
        }
        if self.extra_levels:
            data["extra_levels"] = list(self.extra_levels)
            data["extra_downsample"] = self.extra_downsample
        data["nodes"] = nodes
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> Path:
        """Write YAML (or JSON for a `.json` path); load it back with `load_architecture`."""
        path = Path(path)
        path.write_text(self.to_json() if path.suffix == ".json" else self.to_yaml())
        return path

    # ---- human summary ---------------------------------------------------------------------
    def summary(self) -> str:
        """One screen: a line per node, arrows for resampling direction."""
        head = (
            f"{self.name} [{self.hash}]  inputs {'/'.join(f'P{x}' for x in self.inputs)}"
            f"{' +extra ' + '/'.join(f'P{x}' for x in self.extra_levels) if self.extra_levels else ''}"
            f"  outputs {'/'.join(f'P{x}' for x in self.out_levels)}"
            f"{f'  x{self.repeat} repeats' if self.repeat > 1 else ''}"
        )
        lines = [head]
        for n in self.nodes:
            srcs = []
            for r in n.inputs:
                d = self.level_of(r) - n.level
                srcs.append(r + ("↑" * d if d > 0 else "↓" * -d))
            out = " -> out" if n.output else ""
            lines.append(
                f"  {n.name:>5} P{n.level} <- {', '.join(srcs):<22} {n.fuse:<12} "
                f"{n.block}x{n.depth:<2} w{n.width}{out}"
            )
        return "\n".join(lines)

    def short(self) -> str:
        """One line, for tables."""
        nodes = self.pruned().nodes
        blocks = sorted({n.block for n in nodes})
        fuses = sorted({n.fuse for n in nodes})
        widths = sorted({n.width for n in nodes})
        rep = f" x{self.repeat}" if self.repeat > 1 else ""
        return (
            f"{len(nodes)} nodes{rep}, {'/'.join(fuses)}, {'/'.join(blocks)}, "
            f"w{'/'.join(map(str, widths))}, P{min(self.out_levels)}-P{max(self.out_levels)}"
        )


def _live_nodes(outputs: tuple[Node, ...], by_name: dict[str, Node]) -> set[str]:
    live: set[str] = set()
    stack = [n.name for n in outputs]
    while stack:
        name = stack.pop()
        if name in live or name not in by_name:
            continue
        live.add(name)
        stack.extend(by_name[name].inputs)
    return live


def _ordered_inputs(node: Node, key: Any) -> tuple[str, ...]:
    """Inputs in canonical order: sorted, except the last input of an ordered fusion."""
    if fusion_is_ordered(node.fuse):
        return tuple(sorted(node.inputs[:-1], key=key)) + node.inputs[-1:]
    return tuple(sorted(node.inputs, key=key))


def _normalized(node: Node, level_of: Any, inputs: tuple[str, ...] | None = None) -> Node:
    """Clear fields that cannot affect the computation (resample modes with no such edge)."""
    levels = [level_of(r) for r in node.inputs]
    return replace(
        node,
        inputs=node.inputs if inputs is None else inputs,
        depth=1 if node.block == "none" else node.depth,
        upsample=node.upsample if any(lv > node.level for lv in levels) else None,
        downsample=node.downsample if any(lv < node.level for lv in levels) else None,
    )


def _digest(obj: Any) -> str:
    if not isinstance(obj, dict):
        obj = asdict(obj)
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=list).encode()).hexdigest()
