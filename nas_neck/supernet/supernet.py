"""`Supernet`: every architecture of a fixed-graph space in one weight-sharing module.

The graph (nodes, their levels and inputs, the outputs) is the space's; each node holds,
per cell up to the largest `repeat`, one slot per part of `GraphNeck`'s node:

* one resampling edge per input, per downsampling mode (upsampling has no weights) and per
  kind (`proj`: to the node's width, for sum-like fusions; `keep`: the input's channels,
  for concat), built by `ops.Resample`;
* one fusion per `fuse` choice (`ops.FUSE_OPS`), at the widest node width;
* one block per `block` choice (`ops.BLOCKS`), at the widest input and output widths and
  the deepest depth;
* and, when the space has extra levels, their stride-2 steps per `extra_downsample` mode.

Each of these is the registry's own module built at the widest arguments any path needs
(a path at width w uses the first w channels; see `nas_neck.supernet.slicing`), one copy
per structure where the structure changes with the widths (RepConv's identity branch,
`none` as identity or projection, an edge with or without its projection). The widths,
depths, modes and ops a space can draw are found by enumerating every node's choices
(and the widths of its inputs), not hard-coded: a block registered in `BLOCKS` and named
in the space is held like the shipped ones.

An `Architecture` of the space is a path: `supernet(features, arch)` runs `arch`'s own
`GraphNeck` (built once per architecture on the meta device, no storage) with every
weight and BatchNorm buffer taken from the supernet's slices, so gradients and running
statistics land in the shared weights. `extract(arch)` copies those slices into a plain
`GraphNeck`: its output equals the path's.

`SupernetDetector` adds the fixed detection head, built for the widest output widths; a
path's head slices the input channels of the head's per-level 1x1 projections (the
towers after it are shared at the head's fixed width).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from nas_neck.config import TrainConfig
from nas_neck.detect.head import DetectionHead, HeadOutput, anchor_points
from nas_neck.detect.trainer import Detector
from nas_neck.dsl import Architecture, SearchSpace, load_space
from nas_neck.dsl.domain import Choice, Domain, Fixed, FloatRange, IntRange
from nas_neck.errors import NasNeckError
from nas_neck.neck import GraphNeck
from nas_neck.ops import Resample, make_block, make_fusion
from nas_neck.supernet.slicing import (
    Args,
    Factory,
    TensorSlice,
    Widest,
    cuts_for,
    input_dims,
    on_meta,
    signature,
)

log = logging.getLogger(__name__)

__all__ = ["Supernet", "SupernetDetector", "SupernetError", "check_space"]

_BUILTIN = {"fuse": "sum", "block": "conv", "depth": 1, "upsample": "nearest", "downsample": "conv"}
_TEMPLATES = 256  # path templates kept per supernet (meta modules: a few kB each)


class SupernetError(NasNeckError):
    """A space a supernet cannot hold, or an architecture that is not a path of it."""


def _options(domain: Domain) -> tuple[Any, ...]:
    if isinstance(domain, Fixed):
        return (domain.value,)
    if isinstance(domain, Choice):
        return tuple(domain.options)
    if isinstance(domain, IntRange):
        return tuple(range(domain.low, domain.high + 1, domain.step))
    raise TypeError(f"no finite options in {domain!r}")


@dataclass(frozen=True)
class _Var:
    """A width variable: one sampled parameter (`width`, `<node>.width`), or a constant."""

    name: str
    options: tuple[int, ...]


@dataclass
class _NodeSpec:
    name: str
    level: int
    inputs: tuple[str, ...]
    output: bool
    width: _Var
    choices: dict[str, tuple[Any, ...]]  # fuse, block, depth, upsample, downsample


@dataclass
class _Part:
    """One part of a path at one slot: which op, its factory arguments and input segments."""

    slot: str
    choice: str
    factory: Factory
    args: Args
    width_positions: tuple[int, ...]
    segments: list[int] | None = None
    input_position: int | None = None  # the argument that is the input width


def _edge_factory(
    in_ch: int, out_ch: int | None, in_level: int, out_level: int, down: str
) -> nn.Module:
    return Resample(in_ch, out_ch, in_level, out_level, "nearest", down)


@dataclass
class _Slot:
    """The variants of one slot: a widest module per (choice, signature)."""

    variants: dict[tuple[str, tuple], str] = field(default_factory=dict)  # -> module key
    widest: dict[str, Widest] = field(default_factory=dict)
    input_position: dict[str, int | None] = field(default_factory=dict)
    marked: dict[str, frozenset] = field(default_factory=dict)


def _refuse(space: SearchSpace, why: str) -> None:
    where = f" ({space.source})" if space.source else ""
    raise SupernetError(f"space {space.name!r}{where}: no supernet: {why}")


def check_space(space: SearchSpace) -> None:
    """Raise a one-line `SupernetError` naming `space` unless a supernet can hold it: a fixed
    graph (nodes, their levels and inputs given), finite widths and repeats."""
    spec = space.spec
    if spec.free is not None:
        _refuse(
            space,
            "its graph is itself sampled (free-form 'free:' nodes and inputs), so its "
            "architectures share no fixed nodes to hold weights for; a supernet needs a "
            "space with fixed 'nodes:' and inputs",
        )
    for name, node in spec.nodes.items():
        if not isinstance(node.level, Fixed):
            _refuse(
                space,
                f"node {name!r} samples its level, so its resampling edges change with the "
                "architecture; a supernet needs every node's level fixed",
            )
    for what, dom in (("width", spec.width), ("repeat", spec.repeat)):
        if isinstance(dom, FloatRange):
            _refuse(space, f"'{what}' is a float range")


class Supernet(nn.Module):
    """Every path of a fixed-graph `space` over backbone maps of `in_channels`.

    `forward(features, arch)` runs `arch` (an `Architecture` of the space) with the shared
    weights; `extract(arch)` returns it as a plain `GraphNeck` holding its (sliced) weights.
    A space whose graph is itself sampled (free-form, or a node with a sampled level) is
    refused with a `SupernetError`.
    """

    def __init__(self, space: SearchSpace | str | Path, in_channels: Sequence[int]) -> None:
        super().__init__()
        self.space = space if isinstance(space, SearchSpace) else load_space(space)
        self.in_channels = [int(c) for c in in_channels]
        self._refuse_unless_fixed_graph()
        if len(self.in_channels) != len(self.space.inputs):
            self._refuse(
                f"it reads levels {[f'P{x}' for x in self.space.inputs]} but "
                f"{len(self.in_channels)} input channel counts were given"
            )
        spec = self.space.spec
        self.global_width = _Var("width", tuple(_options(spec.width)))
        self.repeat_max = max(_options(spec.repeat))
        self.extra_modes = tuple(_options(spec.extra_downsample)) if self.space.extra_levels else ()
        self.nodes = self._node_specs()
        self.node_order = [n.name for n in self.nodes]
        self._by_name = {n.name: n for n in self.nodes}
        self._signatures: dict[tuple, tuple] = {}
        self._slots: dict[str, _Slot] = {}
        for part in self._enumerate():
            self._register(part)
        self.slots = nn.ModuleDict()
        for name, slot in self._slots.items():
            variants = nn.ModuleDict()
            for key, widest in slot.widest.items():
                module, args = widest.build()
                widest.args = list(args)
                variants[key] = module
                pos = slot.input_position[key]
                slot.marked[key] = (
                    input_dims(widest.factory, args, pos, widest.sig)
                    if pos is not None
                    else frozenset()
                )
            self.slots[name] = variants
        self.out_nodes = sorted((n for n in self.nodes if n.output), key=lambda n: n.level)
        self.out_levels = [n.level for n in self.out_nodes]
        self.max_out_channels = [max(n.width.options) for n in self.out_nodes]
        self._templates: OrderedDict[str, tuple[GraphNeck, list[tuple[str, TensorSlice]]]] = (
            OrderedDict()
        )

    # ---- what it can hold ---------------------------------------------------------------------
    def _refuse(self, why: str) -> None:
        _refuse(self.space, why)

    def _refuse_unless_fixed_graph(self) -> None:
        check_space(self.space)

    def _node_specs(self) -> list[_NodeSpec]:
        spec = self.space.spec
        arch = self.space.random(0)  # the graph is fixed: any sample gives the node order
        out = []
        for node in arch.nodes:
            nspec = spec.nodes[node.name]
            choices: dict[str, tuple[Any, ...]] = {}
            width = None
            for f in ("fuse", "block", "depth", "width", "upsample", "downsample"):
                dom = getattr(nspec, f) or getattr(spec.defaults, f)
                if f == "width":
                    width = (
                        _Var(f"{node.name}.width", _options(dom))
                        if dom is not None
                        else self.global_width
                    )
                    continue
                if dom is not None:
                    choices[f] = _options(dom)
                elif f == "depth" and spec.depth is not None:
                    choices[f] = _options(spec.depth)
                else:
                    choices[f] = (_BUILTIN[f],)
            out.append(_NodeSpec(node.name, node.level, node.inputs, node.output, width, choices))
        return out

    def describe(self) -> dict[str, Any]:
        """What the supernet holds: per slot its variants (with their widest arguments)."""
        return {
            name: {key: list(w.args) for key, w in slot.widest.items()}
            for name, slot in self._slots.items()
        }

    # ---- enumeration of every path's parts ----------------------------------------------------
    def _cell_input_vars(self, cell: int) -> dict[str, _Var | int]:
        """Each cell input (`P<L>`) of cell `cell`: a fixed channel count or a width var."""
        levels = self.space.cell_levels
        if cell == 0:
            fixed: dict[str, _Var | int] = {
                f"P{lvl}": c for lvl, c in zip(self.space.inputs, self.in_channels, strict=True)
            }
            for lvl in self.space.extra_levels:
                fixed[f"P{lvl}"] = self.global_width
            return fixed
        by_level = {n.level: n.width for n in self.nodes if n.output}
        return {f"P{lvl}": by_level[lvl] for lvl in levels}

    def _enumerate(self) -> Iterator[_Part]:
        for k, lvl in enumerate(self.space.extra_levels):
            for width in self.global_width.options:
                in_ch = self.in_channels[-1] if k == 0 else width
                in_level = self.space.inputs[-1] if k == 0 else lvl - 1
                for mode in self.extra_modes:
                    yield self._extra_part(k, in_ch, width, in_level, lvl, mode)
        for cell in range(self.repeat_max):
            cell_vars = self._cell_input_vars(cell)
            for node in self.nodes:
                refs = [
                    self._by_name[r].width if r in self._by_name else cell_vars[r]
                    for r in node.inputs
                ]
                variables = list(
                    dict.fromkeys(v for v in [*refs, node.width] if isinstance(v, _Var))
                )
                for values in itertools.product(*(v.options for v in variables)):
                    assign = dict(zip(variables, values, strict=True))
                    in_chs = [assign[v] if isinstance(v, _Var) else v for v in refs]
                    w = assign[node.width]
                    for fuse, block, down in itertools.product(
                        node.choices["fuse"], node.choices["block"], node.choices["downsample"]
                    ):
                        depth = max(node.choices["depth"])
                        yield from self._node_parts(cell, node, in_chs, w, fuse, block, depth, down)

    def _levels(self, node: _NodeSpec) -> list[int]:
        return [self._by_name[r].level if r in self._by_name else int(r[1:]) for r in node.inputs]

    def _node_parts(
        self,
        cell: int,
        node: _NodeSpec,
        in_chs: list[int],
        width: int,
        fuse: str,
        block: str,
        depth: int,
        downsample: str,
    ) -> list[_Part]:
        concat = fuse == "concat"
        parts = []
        for j, (lvl, ch) in enumerate(zip(self._levels(node), in_chs, strict=True)):
            down = downsample if lvl < node.level else None
            direction = down or ("up" if lvl > node.level else "same")
            parts.append(
                _Part(
                    f"c{cell}_{node.name}_e{j}",
                    f"{'keep' if concat else 'proj'}_{direction}",
                    _edge_factory,
                    (ch, None if concat else width, lvl, node.level, down or "conv"),
                    (0, 1),
                )
            )
        n = len(in_chs)
        parts.append(
            _Part(
                f"c{cell}_{node.name}_fuse",
                fuse,
                functools.partial(make_fusion, fuse),
                (n, width),
                (1,),
                segments=[width] * n,
                input_position=1,
            )
        )
        fused = sum(in_chs) if concat else width
        parts.append(
            _Part(
                f"c{cell}_{node.name}_block",
                block,
                functools.partial(make_block, block),
                (fused, width, depth),
                (0, 1),
                segments=list(in_chs) if concat else None,
                input_position=0 if concat and n > 1 else None,
            )
        )
        return parts

    def _extra_part(
        self, k: int, in_ch: int, width: int, in_level: int, level: int, mode: str
    ) -> _Part:
        return _Part(f"x{k}", mode, _edge_factory, (in_ch, width, in_level, level, mode), (0, 1))

    def _signature(self, part: _Part) -> tuple:
        key = (
            part.choice,
            part.factory.func if isinstance(part.factory, functools.partial) else part.factory,
            part.args,
        )
        if key not in self._signatures:
            self._signatures[key] = signature(on_meta(part.factory, part.args))
        return self._signatures[key]

    def _register(self, part: _Part) -> None:
        slot = self._slots.setdefault(part.slot, _Slot())
        sig = self._signature(part)
        key = slot.variants.get((part.choice, sig))
        if key is None:
            same = sum(1 for c, _ in slot.variants if c == part.choice)
            key = part.choice if not same else f"{part.choice}_v{same}"
            slot.variants[(part.choice, sig)] = key
            slot.widest[key] = Widest(
                part.factory,
                sig,
                list(part.args),
                part.width_positions,
                list(part.segments) if part.segments is not None else None,
            )
            slot.input_position[key] = part.input_position
        else:
            slot.widest[key].cover(part.args, part.segments)
            if part.input_position is not None:
                slot.input_position[key] = part.input_position

    # ---- paths --------------------------------------------------------------------------------
    def check(self, arch: Architecture) -> None:
        """Raise a `SupernetError` unless `arch` has the space's graph (a path of it)."""
        name = arch.name
        if tuple(arch.inputs) != tuple(self.space.inputs) or tuple(arch.extra_levels) != tuple(
            self.space.extra_levels
        ):
            raise SupernetError(
                f"architecture {name!r}: its levels {arch.cell_levels} are not those of space "
                f"{self.space.name!r} {self.space.cell_levels}"
            )
        if not 1 <= arch.repeat <= self.repeat_max:
            raise SupernetError(
                f"architecture {name!r}: repeat {arch.repeat}, the supernet of "
                f"{self.space.name!r} holds 1 to {self.repeat_max}"
            )
        for node in arch.nodes:
            ref = self._by_name.get(node.name)
            if (
                ref is None
                or ref.level != node.level
                or tuple(ref.inputs) != tuple(node.inputs)
                or ref.output != node.output
            ):
                raise SupernetError(
                    f"architecture {name!r}: node {node.name!r} is not a node of space "
                    f"{self.space.name!r} (its level, inputs and outputs are fixed there)"
                )

    def _parts_of(self, arch: Architecture, cell: int, node_name: str) -> dict[str, _Part]:
        node = next(n for n in arch.nodes if n.name == node_name)
        spec = self._by_name[node_name]
        widths = {n.name: n.width for n in arch.nodes}
        if cell == 0:
            cell_ch: dict[str, int] = {
                f"P{lvl}": c for lvl, c in zip(arch.inputs, self.in_channels, strict=True)
            }
            cell_ch |= {f"P{lvl}": arch.width for lvl in arch.extra_levels}
        else:
            cell_ch = {f"P{n.level}": n.width for n in arch.nodes if n.output}
        in_chs = [widths[r] if r in widths else cell_ch[r] for r in node.inputs]
        parts = self._node_parts(
            cell,
            spec,
            in_chs,
            node.width,
            node.fuse,
            node.block,
            max(spec.choices["depth"]),
            node.downsample or "conv",
        )
        by_kind = {}
        for j in range(len(in_chs)):
            by_kind[f"edges.{j}"] = parts[j]
        by_kind["fuse"], by_kind["block"] = parts[-2], parts[-1]
        return by_kind

    def _variant(self, part: _Part, arch: Architecture) -> tuple[nn.Module, _Slot, str]:
        slot = self._slots.get(part.slot)
        key = slot.variants.get((part.choice, self._signature(part))) if slot else None
        if key is None:
            raise SupernetError(
                f"architecture {arch.name!r}: {part.slot} {part.choice!r} with arguments "
                f"{part.args} is not held by the supernet of space {self.space.name!r}"
            )
        return self.slots[part.slot][key], slot, key

    def _plan(self, arch: Architecture) -> tuple[GraphNeck, list[tuple[str, TensorSlice]]]:
        """`arch`'s GraphNeck on the meta device and, per tensor, its slice of the supernet."""
        key = arch.to_json()
        if key in self._templates:
            self._templates.move_to_end(key)
            return self._templates[key]
        self.check(arch)
        template = on_meta(lambda: GraphNeck(arch, self.in_channels), ())
        parts: dict[str, _Part] = {}
        for k, lvl in enumerate(arch.extra_levels):
            in_ch = self.in_channels[-1] if k == 0 else arch.width
            in_level = arch.inputs[-1] if k == 0 else lvl - 1
            parts[f"extras.{k}"] = self._extra_part(
                k, in_ch, arch.width, in_level, lvl, arch.extra_downsample
            )
        for c, cell in enumerate(template.cells):
            for i, name in enumerate(cell.names):
                for kind, part in self._parts_of(arch, c, name).items():
                    parts[f"cells.{c}.nodes.{i}.{kind}"] = part
        plan = []
        for name, shape in _tensors(template):
            prefix, rest = _split(name, parts)
            part = parts[prefix]
            module, slot, vkey = self._variant(part, arch)
            plan.append(
                (
                    name,
                    _slice(
                        module,
                        rest,
                        shape,
                        slot.marked[vkey],
                        part.segments,
                        slot.widest[vkey].segments,
                        f"architecture {arch.name!r}: {part.slot} {part.choice!r}",
                    ),
                )
            )
        self._templates[key] = (template, plan)
        if len(self._templates) > _TEMPLATES:
            self._templates.popitem(last=False)
        return template, plan

    def forward(self, features: list[Tensor], arch: Architecture) -> list[Tensor]:
        """The neck outputs (one map per output level, finest first) of path `arch`."""
        template, plan = self._plan(arch)
        return _run(template, plan, self.training, (list(features),))

    @torch.no_grad()
    def state_of(self, arch: Architecture) -> dict[str, Tensor]:
        """`arch`'s GraphNeck state dict, sliced from the supernet (copies)."""
        template, plan = self._plan(arch)
        persistent = set(template.state_dict(keep_vars=True))
        return {name: s.take().detach().clone() for name, s in plan if name in persistent}

    @torch.no_grad()
    def extract(self, arch: Architecture) -> GraphNeck:
        """`arch` as a plain `GraphNeck` with the supernet's (sliced) weights, in eval mode."""
        _, plan = self._plan(arch)
        neck = on_meta(lambda: GraphNeck(arch, self.in_channels), ())
        return _materialize(neck, {name: s.take().detach().clone() for name, s in plan}).eval()


class SupernetDetector(nn.Module):
    """A `Supernet` and the fixed detection head (`DetectionHead`) built for its widest
    outputs; a path slices the input channels of the head's per-level projections."""

    def __init__(self, supernet: Supernet, num_classes: int, config: TrainConfig) -> None:
        super().__init__()
        self.supernet = supernet
        self.num_classes = num_classes
        self.head_width = config.head_width
        self.head_convs = config.head_convs
        self.strides = [2**lvl for lvl in supernet.out_levels]
        self.head = self._head(supernet.max_out_channels)
        self._heads: dict[tuple[int, ...], tuple[nn.Module, list]] = {}

    def _head(self, channels: Sequence[int]) -> DetectionHead:
        return DetectionHead(
            list(channels),
            self.strides,
            self.num_classes,
            width=self.head_width,
            num_convs=self.head_convs,
        )

    def _head_plan(self, channels: tuple[int, ...]) -> tuple[nn.Module, list]:
        if channels not in self._heads:
            template = on_meta(self._head, (channels,))
            plan = [
                (name, _slice(self.head, name, shape, frozenset(), None, None, "head"))
                for name, shape in _tensors(template)
            ]
            self._heads[channels] = (template, plan)
        return self._heads[channels]

    @property
    def space(self) -> SearchSpace:
        return self.supernet.space

    def forward(
        self, features: list[Tensor], arch: Architecture, image_size: tuple[int, int] | None = None
    ) -> HeadOutput:
        feats = self.supernet(features, arch)
        template, plan = self._head_plan(tuple(n.width for n in arch.outputs))
        cls_logits, box_ltrb = _run(template, plan, self.training, (feats,))
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        points, strides = anchor_points(sizes, template.strides, box_ltrb.device)
        return HeadOutput(cls_logits, box_ltrb, points, strides, sizes, image_size)

    @torch.no_grad()
    def extract(self, arch: Architecture, config: TrainConfig | None = None) -> Detector:
        """`arch` as a plain `Detector` (neck + head) with the inherited weights, in eval mode."""
        config = (config or TrainConfig()).model_copy(
            update={"head_width": self.head_width, "head_convs": self.head_convs}
        )
        model = on_meta(
            lambda: Detector(arch, self.supernet.in_channels, self.num_classes, config), ()
        )
        _, neck_plan = self.supernet._plan(arch)
        _, head_plan = self._head_plan(tuple(model.neck.out_channels))
        tensors = {f"neck.{k}": s.take().detach().clone() for k, s in neck_plan}
        tensors |= {f"head.{k}": s.take().detach().clone() for k, s in head_plan}
        return _materialize(model, tensors).eval()


def _materialize(module: nn.Module, tensors: dict[str, Tensor]) -> nn.Module:
    """`module` (built on the meta device) holding `tensors`, every parameter and buffer
    (non-persistent ones too): no initialisation, no copy."""
    persistent = module.state_dict(keep_vars=True)
    module.load_state_dict({k: v for k, v in tensors.items() if k in persistent}, assign=True)
    for name, _ in list(module.named_buffers(remove_duplicate=False)):
        if name not in persistent:
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner._buffers[attr] = tensors[name]
    left = [
        n
        for n, t in itertools.chain(module.named_parameters(), module.named_buffers())
        if t.is_meta
    ]
    if left:
        raise SupernetError(f"extracted module has no weights for {left[:3]}")
    return module


def _tensors(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (name, tuple(t.shape))
        for name, t in itertools.chain(
            module.named_parameters(), module.named_buffers(remove_duplicate=False)
        )
    ]


def _split(name: str, parts: dict[str, Any]) -> tuple[str, str]:
    """(`cells.0.nodes.1.edges.0`, `ops.0.conv.weight`) for a tensor name of a GraphNeck."""
    bits = name.split(".")
    for n in range(len(bits) - 1, 0, -1):
        prefix = ".".join(bits[:n])
        if prefix in parts:
            return prefix, ".".join(bits[n:])
    raise SupernetError(f"no supernet slot holds {name!r}")


def _slice(
    module: nn.Module,
    rest: str,
    shape: tuple[int, ...],
    marked: frozenset,
    segments: list[int] | None,
    widest_segments: list[int] | None,
    what: str,
) -> TensorSlice:
    owner_name, _, attr = rest.rpartition(".")
    try:
        owner = module.get_submodule(owner_name) if owner_name else module
        widest = getattr(owner, attr)
    except AttributeError:
        widest = None
    if not isinstance(widest, Tensor):
        raise SupernetError(
            f"{what}: the path has a tensor {rest!r} that its widest form lacks; this op's "
            "structure changes with its widths in a way the supernet cannot slice"
        )
    cuts = cuts_for(rest, shape, tuple(widest.shape), marked, segments, widest_segments)
    if cuts is None:
        raise SupernetError(
            f"{what}: tensor {rest!r} of shape {list(shape)} does not fit in the widest "
            f"{list(widest.shape)}"
        )
    return TensorSlice(owner, attr, cuts, is_buffer=attr in owner._buffers)


def _run(template: nn.Module, plan: list[tuple[str, TensorSlice]], training: bool, args: tuple):
    template.train(training)
    tensors = {name: s.take() for name, s in plan}
    out = functional_call(template, tensors, args, strict=True)
    if training:  # running statistics updated on gathered copies go back to the widest buffers
        for name, s in plan:
            if s.is_buffer and s.gathered:
                s.put(tensors[name])
    return out
