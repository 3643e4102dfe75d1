"""Whether a fixed-graph space holds an architecture exactly, and the parameters that draw it.

Used to say which shipped family holds which classic (`nas-neck spaces`) and to start a search
from the classics a space holds (their parameters are queued like any trial's). The graph is
matched node by node in the space's topological order: a space node maps to an unused node of
the architecture at a level its domain allows whose inputs are the already mapped ones (in order
where the fusion is ordered), with backtracking where several fit. The field values then become
parameters, and the answer is checked the only way that cannot be wrong: the space, drawn with
them, gives the architecture's hash.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from nas_neck.dsl.architecture import Architecture, Node
from nas_neck.dsl.domain import Choice, Domain, Fixed, FloatRange, IntRange
from nas_neck.dsl.opnames import fusion_is_ordered
from nas_neck.dsl.sampling import FixedSampler
from nas_neck.dsl.schema import NODE_FIELDS, NodeSpec, is_fixed
from nas_neck.dsl.space import SearchSpace
from nas_neck.errors import SpaceError

__all__ = ["holds", "params_for"]


def params_for(space: SearchSpace, arch: Architecture) -> dict[str, Any] | None:
    """The parameters with which `space` draws `arch` (the same hash), or None when it cannot
    (a free-form space, other inputs or extra levels, another graph, values outside its domains)."""
    s = space.spec
    if s.nodes is None or space.inputs != arch.inputs or space.extra_levels != arch.extra_levels:
        return None
    target = arch.pruned()
    order = [(name, s.nodes[name]) for name in space.node_order]
    if len(order) != len(target.nodes):
        return None
    want = arch.hash
    for mapping in _mappings(order, {n.name: n for n in target.nodes}, {}):
        nodes = {name: mapping[name] for name, _ in order}
        for glob in _globals(space, arch, nodes.values()):
            params = dict(glob)
            for name, spec in order:
                params.update(_node_params(space, name, spec, nodes[name]))
            try:
                if space.sample(FixedSampler(params)).hash == want:
                    return params
            except SpaceError:  # a value outside its domain: not this way
                continue
    return None


def holds(space: SearchSpace, arch: Architecture) -> bool:
    """Whether `space` can draw exactly `arch`."""
    return params_for(space, arch) is not None


def _mappings(
    order: list[tuple[str, NodeSpec]], free: dict[str, Node], done: dict[str, Node]
) -> Iterator[dict[str, Node]]:
    """Every assignment of the architecture's nodes to the space's, in the space's order."""
    if len(done) == len(order):
        yield dict(done)
        return
    name, spec = order[len(done)]
    refs = [done[r].name if r in done else r for r in spec.inputs]
    for node in list(free.values()):
        if not _allows(spec.level, node.level) or not _same_inputs(refs, node):
            continue
        del free[node.name]
        done[name] = node
        yield from _mappings(order, free, done)
        del done[name]
        free[node.name] = node


def _same_inputs(refs: list[str], node: Node) -> bool:
    if fusion_is_ordered(node.fuse):
        return refs[-1:] == list(node.inputs[-1:]) and sorted(refs) == sorted(node.inputs)
    return sorted(refs) == sorted(node.inputs)


def _globals(space: SearchSpace, arch: Architecture, nodes: Any) -> Iterator[dict[str, Any]]:
    """Candidate values of the space's global parameters: the architecture's own, then (for the
    globals that are node defaults) each value its nodes use."""
    s = space.spec
    nodes = list(nodes)
    options: list[tuple[str, list[Any]]] = []
    for name, dom, seen in (
        ("width", s.width, [arch.width, *(n.width for n in nodes)]),
        ("depth", s.depth, [n.depth for n in nodes]),
        ("repeat", s.repeat, [arch.repeat]),
        (
            "extra_downsample",
            s.extra_downsample if space.extra_levels else None,
            [arch.extra_downsample],
        ),
    ):
        if dom is None or is_fixed(dom):
            continue
        values = [v for v in dict.fromkeys(seen) if _allows(dom, v)] or [_any(dom)]
        options.append((name, values))
    for combo in itertools.product(*(values for _, values in options)):
        yield {name: v for (name, _), v in zip(options, combo, strict=True)}


def _node_params(space: SearchSpace, name: str, spec: NodeSpec, node: Node) -> dict[str, Any]:
    """The node's parameters: its own value where the domain allows it, else any allowed value
    (for a field the node's computation ignores, such as depth under `block: none`)."""
    out: dict[str, Any] = {}
    if not is_fixed(spec.level):
        out[f"{name}.level"] = node.level
    for field in NODE_FIELDS:
        dom = getattr(spec, field) or getattr(space.spec.defaults, field)
        if dom is None or is_fixed(dom):
            continue
        value = getattr(node, field)
        out[f"{name}.{field}"] = value if _allows(dom, value) else _any(dom)
    return out


def _allows(dom: Domain, value: Any) -> bool:
    if isinstance(dom, Fixed):
        return dom.value == value
    if isinstance(dom, Choice):
        return value in dom.options
    if isinstance(dom, IntRange):
        return (
            isinstance(value, int)
            and dom.low <= value <= dom.high
            and not (value - dom.low) % dom.step
        )
    return isinstance(value, int | float) and dom.low <= value <= dom.high


def _any(dom: Domain) -> Any:
    """One value the domain allows."""
    if isinstance(dom, Fixed):
        return dom.value
    if isinstance(dom, Choice):
        return dom.options[0]
    assert isinstance(dom, IntRange | FloatRange)
    return dom.low
