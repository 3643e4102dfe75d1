"""SearchSpace: a validated space file that samples concrete `Architecture`s.

Two kinds of space share one file format:

* **fixed-graph** (`nodes:`): the graph is given; node fields may be domains. A space without
  any domain is a single architecture (this is how the classic necks and exported genotypes are
  written).
* **free-form** (`free:`, NAS-FPN style): the graph itself is sampled by this deterministic rule:
  draw `nodes` hidden nodes `h0, h1, ...`; hidden node `hi` draws a `level` and a `fan_in` k,
  then k input indices among the pool (cell inputs in level order, then `h0..h{i-1}`), duplicates
  collapsing; then one output node `N{L}` per required output level, in the order of `outputs`,
  drawing its inputs the same way from the pool that includes earlier output nodes. Inputs only
  ever point backwards, so every sample is a DAG with every required output. An output node's
  pool size depends on how many hidden nodes were drawn, so its input indices are integers up to
  the largest possible pool and taken modulo the actual pool size (Optuna needs each parameter to
  keep one distribution). Parameters of a hidden node exist only when that node exists.

Parameter names: globals `width`, `depth`, `repeat`, `extra_downsample`; node fields
`<node>.<field>` (per node, from the node or from `defaults:`); free-form `nodes`,
`<node>.level`, `<node>.fan_in`, `<node>.in<j>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas_neck.dsl.architecture import Architecture, Node
from nas_neck.dsl.domain import Domain, Fixed, IntRange
from nas_neck.dsl.sampling import FixedSampler, RandomSampler, Sampler
from nas_neck.dsl.schema import (
    NODE_FIELDS,
    DefaultsSpec,
    SpaceSpec,
    is_fixed,
    parse_spec,
    read_spec,
)
from nas_neck.dsl.shipped import find_space
from nas_neck.errors import SpaceError

_BUILTIN = {"fuse": "sum", "block": "conv", "depth": 1, "upsample": "nearest", "downsample": "conv"}


@dataclass(frozen=True)
class Parameter:
    """A searchable parameter of a space, for display."""

    name: str
    domain: Domain


class SearchSpace:
    """A validated search space; `sample(sampler)` returns an `Architecture`."""

    def __init__(self, spec: SpaceSpec, source: str | None = None) -> None:
        self.spec = spec
        self.source = source
        self.name = spec.name
        self.inputs = tuple(int(p[1:]) for p in spec.inputs)
        self.extra_levels = tuple(spec.extra_levels)
        self._check_extras()
        if (spec.nodes is None) == (spec.free is None):
            self._fail(
                "expected exactly one of 'nodes' (a fixed graph) or 'free' (a free-form graph)"
            )
        self._order = self._check_graph() if spec.nodes is not None else []
        if spec.free is not None:
            self._check_free()
        self._check_repeat()

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, ref: str | Path) -> SearchSpace:
        """Load a space file, or a shipped space by name (`nas_neck.dsl.shipped`)."""
        return cls(read_spec(ref), source=str(find_space(ref)))

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None) -> SearchSpace:
        return cls(parse_spec(raw, source), source=source)

    # ---- what it contains --------------------------------------------------------------------
    @property
    def cell_levels(self) -> tuple[int, ...]:
        return self.inputs + self.extra_levels

    @property
    def node_order(self) -> tuple[str, ...]:
        """A fixed graph's node names in the order they are drawn (topological); () if free-form."""
        return tuple(self._order)

    def parameters(self) -> list[Parameter]:
        """Searchable parameters (free-form spaces list their per-node templates as `h*.` / `N*.`)."""
        s = self.spec
        params = [
            Parameter(name, dom)
            for name, dom in (
                ("width", s.width),
                ("depth", s.depth),
                ("repeat", s.repeat),
                ("extra_downsample", s.extra_downsample if self.extra_levels else None),
            )
            if not is_fixed(dom)
        ]
        if s.free is not None:
            f = s.free
            params += [
                Parameter(n, d)
                for n, d in (("nodes", f.nodes), ("h*.level", f.levels), ("*.fan_in", f.fan_in))
                if not is_fixed(d)
            ]
            params += [
                Parameter(f"*.{k}", d)
                for k in NODE_FIELDS
                if not is_fixed(d := getattr(s.defaults, k))
            ]
            return params
        for name in self._order:
            node = s.nodes[name]
            if not is_fixed(node.level):
                params.append(Parameter(f"{name}.level", node.level))
            for field in NODE_FIELDS:
                dom = getattr(node, field) or getattr(s.defaults, field)
                if not is_fixed(dom):
                    params.append(Parameter(f"{name}.{field}", dom))
        return params

    @property
    def is_fixed(self) -> bool:
        """True when the space holds exactly one architecture."""
        return not self.parameters()

    # ---- sampling ----------------------------------------------------------------------------
    def sample(self, sampler: Sampler | None = None) -> Architecture:
        """Draw one architecture; with no sampler the space must be fixed."""
        sampler = sampler or FixedSampler({})
        s = self.spec
        width = s.width.sample(sampler, "width")
        depth = s.depth.sample(sampler, "depth") if s.depth is not None else None
        repeat = s.repeat.sample(sampler, "repeat")
        extra_down = (
            s.extra_downsample.sample(sampler, "extra_downsample") if self.extra_levels else "conv"
        )
        glob = {"width": width, "depth": depth}
        if s.free is not None:
            nodes = self._sample_free(sampler, glob)
        else:
            nodes = tuple(self._sample_node(sampler, name, glob) for name in self._order)
        return Architecture(
            inputs=self.inputs,
            nodes=nodes,
            name=self.name,
            width=width,
            repeat=repeat,
            extra_levels=self.extra_levels,
            extra_downsample=extra_down,
            params=dict(sampler.params),
        )

    def random(self, seed: int) -> Architecture:
        return self.sample(RandomSampler(seed))

    def _fields(self, sampler: Sampler, name: str, spec: DefaultsSpec | None, glob: dict) -> dict:
        out = {}
        for field in NODE_FIELDS:
            dom = (getattr(spec, field) if spec else None) or getattr(self.spec.defaults, field)
            if dom is not None:
                out[field] = dom.sample(sampler, f"{name}.{field}")
            elif glob.get(field) is not None:
                out[field] = glob[field]
            else:
                out[field] = _BUILTIN[field]
        return out

    def _sample_node(self, sampler: Sampler, name: str, glob: dict) -> Node:
        spec = self.spec.nodes[name]
        level = spec.level.sample(sampler, f"{name}.level")
        return Node(
            name=name,
            level=level,
            inputs=tuple(spec.inputs),
            output=spec.output,
            **self._fields(sampler, name, spec, glob),
        )

    def _sample_free(self, sampler: Sampler, glob: dict) -> tuple[Node, ...]:
        f = self.spec.free
        pool = [f"P{lvl}" for lvl in self.cell_levels]
        n_max = _max_of(f.nodes)
        n = f.nodes.sample(sampler, "nodes")
        nodes: list[Node] = []

        def draw_inputs(name: str, pool_max: int) -> tuple[str, ...]:
            k = f.fan_in.sample(sampler, f"{name}.fan_in")
            picks = [sampler.int(f"{name}.in{j}", 0, pool_max - 1) for j in range(k)]
            return tuple(dict.fromkeys(pool[p % len(pool)] for p in picks))

        for i in range(n):
            name = f"h{i}"
            level = f.levels.sample(sampler, f"{name}.level")
            inputs = draw_inputs(name, len(pool))
            nodes.append(
                Node(
                    name=name, level=level, inputs=inputs, **self._fields(sampler, name, None, glob)
                )
            )
            pool.append(name)
        for j, lvl in enumerate(self.spec.outputs):
            name = f"N{lvl}"
            inputs = draw_inputs(name, len(self.cell_levels) + n_max + j)
            nodes.append(
                Node(
                    name=name,
                    level=lvl,
                    inputs=inputs,
                    output=True,
                    **self._fields(sampler, name, None, glob),
                )
            )
            pool.append(name)
        return tuple(nodes)

    # ---- validation --------------------------------------------------------------------------
    def _fail(self, message: str, path: str | None = None) -> None:
        raise SpaceError(message, source=self.source, path=path)

    def _check_extras(self) -> None:
        top = max(self.inputs)
        want = list(range(top + 1, top + 1 + len(self.extra_levels)))
        if list(self.extra_levels) != want:
            self._fail(
                f"expected consecutive levels above the top input P{top}, i.e. {want}, "
                f"got {list(self.extra_levels)}",
                "extra_levels",
            )

    def _check_graph(self) -> list[str]:
        nodes = self.spec.nodes
        cell = [f"P{lvl}" for lvl in self.cell_levels]
        for name, node in nodes.items():
            if name.startswith("P") and name[1:].isdigit():
                self._fail(f"node names must not look like levels ({name!r})", f"nodes.{name}")
            for i, ref in enumerate(node.inputs):
                if ref not in nodes and ref not in cell:
                    self._fail(
                        f"unknown input {ref!r}; expected a cell input ({', '.join(cell)}) "
                        f"or a node ({', '.join(nodes)})",
                        f"nodes.{name}.inputs.{i}",
                    )
        order = self._topological(nodes)
        outputs = [(name, n) for name, n in nodes.items() if n.output]
        if not outputs:
            self._fail("expected at least one node with 'output: true'", "nodes")
        seen: dict[int, str] = {}
        for name, node in outputs:
            if not isinstance(node.level, Fixed):
                self._fail("an output node needs a fixed level", f"nodes.{name}.level")
            lvl = node.level.value
            if lvl in seen:
                self._fail(
                    f"two output nodes at level {lvl}: {seen[lvl]!r} and {name!r}",
                    f"nodes.{name}.output",
                )
            seen[lvl] = name
        if self.spec.outputs is not None:
            for lvl in self.spec.outputs:
                if lvl not in seen:
                    self._fail(
                        f"level {lvl} is required but no node with 'output: true' has level {lvl}",
                        "outputs",
                    )
            for lvl, name in seen.items():
                if lvl not in self.spec.outputs:
                    self._fail(
                        f"node {name!r} outputs level {lvl}, which 'outputs' does not list",
                        f"nodes.{name}.output",
                    )
        return order

    def _topological(self, nodes: dict) -> list[str]:
        """Kahn's order, stable in file order; a cycle is reported with its path."""
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = path[path.index(name) :] + [name]
                self._fail(f"cycle: {' -> '.join(cycle)}", f"nodes.{name}.inputs")
            state[name] = 1
            for ref in nodes[name].inputs:
                if ref in nodes:
                    visit(ref, path + [name])
            state[name] = 2
            order.append(name)

        for name in nodes:
            visit(name, [])
        return order

    def _check_free(self) -> None:
        if not self.spec.outputs:
            self._fail("a free-form space needs 'outputs' (the levels it must produce)", "outputs")

    def _check_repeat(self) -> None:
        if _max_of(self.spec.repeat) <= 1:
            return
        outs = set(self.spec.outputs or [])
        if self.spec.nodes is not None:
            outs = {n.level.value for n in self.spec.nodes.values() if n.output}
        if missing := sorted(set(self.cell_levels) - outs):
            self._fail(
                f"repeated cells need an output at every cell input level; missing "
                f"{', '.join(f'P{m}' for m in missing)}",
                "repeat",
            )


def _max_of(domain: Domain) -> int:
    if isinstance(domain, Fixed):
        return domain.value
    if isinstance(domain, IntRange):
        return domain.high
    return max(domain.options)


def load_space(ref: str | Path) -> SearchSpace:
    """Load and validate a search space (or architecture) YAML file, or a shipped space by name."""
    return SearchSpace.load(ref)


def load_architecture(ref: str | Path) -> Architecture:
    """Load a file (or shipped space) that holds exactly one architecture (a space without
    domains, YAML or JSON)."""
    space = load_space(ref)
    if not space.is_fixed:
        names = ", ".join(p.name for p in space.parameters()[:6])
        raise SpaceError(
            f"expected a fixed architecture, but it has search parameters ({names}, ...)",
            source=space.source,
        )
    return space.sample()
