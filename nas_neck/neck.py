"""GraphNeck: build an `nn.Module` from an `Architecture` and the backbone's channels.

The forward pass walks a static plan (fixed at construction), so it is traceable for TorchScript
and ONNX export: no control flow depends on the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nas_neck.dsl.architecture import Architecture, Node
from nas_neck.errors import NasNeckError
from nas_neck.ops import Resample, make_block, make_fusion


class _NodeModule(nn.Module):
    """Resample every input to the node's level (and width), fuse, refine."""

    def __init__(self, node: Node, in_refs: list[tuple[int, int]]) -> None:
        super().__init__()
        concat = node.fuse == "concat"
        self.edges = nn.ModuleList(
            Resample(
                ch,
                None if concat else node.width,
                lvl,
                node.level,
                node.upsample or "nearest",
                node.downsample or "conv",
            )
            for lvl, ch in in_refs
        )
        fused_ch = sum(e.out_ch for e in self.edges) if concat else node.width
        self.fuse = make_fusion(node.fuse, len(in_refs), node.width)
        self.block = make_block(node.block, fused_ch, node.width, node.depth)

    def forward(self, xs: list[torch.Tensor], ref: torch.Tensor | None) -> torch.Tensor:
        return self.block(self.fuse([edge(x, ref) for edge, x in zip(self.edges, xs, strict=True)]))


class _Cell(nn.Module):
    """One pass over the node graph; `GraphNeck` stacks `repeat` of them."""

    def __init__(self, arch: Architecture, in_channels: Sequence[int]) -> None:
        super().__init__()
        levels = list(arch.cell_levels)
        slot = {f"P{lvl}": i for i, lvl in enumerate(levels)}
        slot_level = list(levels)
        slot_ch = list(in_channels)
        self.names: list[str] = []
        self.in_slots: list[list[int]] = []
        self.ref_slots: list[int] = []
        self.nodes = nn.ModuleList()
        for node in arch.nodes:
            ins = [slot[r] for r in node.inputs]
            same = [i for i, lvl in enumerate(slot_level) if lvl == node.level]
            self.ref_slots.append(same[0] if same else -1)
            self.nodes.append(_NodeModule(node, [(slot_level[i], slot_ch[i]) for i in ins]))
            self.in_slots.append(ins)
            self.names.append(node.name)
            slot[node.name] = len(slot_level)
            slot_level.append(node.level)
            slot_ch.append(node.width)
        outs = arch.outputs
        self.out_slots = [slot[n.name] for n in outs]
        self.out_levels = [n.level for n in outs]
        self.out_channels = [n.width for n in outs]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        values = list(feats)
        for module, ins, ref in zip(self.nodes, self.in_slots, self.ref_slots, strict=True):
            values.append(module([values[i] for i in ins], values[ref] if ref >= 0 else None))
        return [values[i] for i in self.out_slots]


class GraphNeck(nn.Module):
    """A neck built from an `Architecture`.

    `forward(features)` takes the backbone maps ordered like `arch.inputs` (level `L` at stride
    `2**L`, any spatial size) and returns one map per output level, ordered by level; see
    `out_levels` and `out_channels`.
    """

    def __init__(
        self,
        arch: Architecture,
        in_channels: Sequence[int],
        in_strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(arch.inputs):
            raise NasNeckError(
                f"architecture {arch.name!r} reads levels {[f'P{x}' for x in arch.inputs]} but "
                f"the backbone gives {len(in_channels)} feature maps"
            )
        if in_strides is not None and list(in_strides) != [2**lvl for lvl in arch.inputs]:
            raise NasNeckError(
                f"architecture {arch.name!r} expects strides {[2**x for x in arch.inputs]}, "
                f"the backbone gives {list(in_strides)}"
            )
        self.arch = arch.pruned()
        self.in_channels = list(in_channels)
        ch = in_channels[-1]
        self.extras = nn.ModuleList()
        top = arch.inputs[-1]
        for lvl in arch.extra_levels:
            self.extras.append(
                Resample(
                    ch,
                    arch.width,
                    lvl - 1 if self.extras else top,
                    lvl,
                    downsample=arch.extra_downsample,
                )
            )
            ch = arch.width
        cell_ch = list(in_channels) + [arch.width] * len(arch.extra_levels)
        self.cells = nn.ModuleList()
        for _ in range(arch.repeat):
            cell = _Cell(self.arch, cell_ch)
            self.cells.append(cell)
            by_level = dict(zip(cell.out_levels, cell.out_channels, strict=True))
            cell_ch = [by_level.get(lvl, 0) for lvl in arch.cell_levels]
        self._carry = (
            [cell.out_levels.index(lvl) for lvl in arch.cell_levels] if arch.repeat > 1 else []
        )
        self.out_levels: list[int] = list(self.cells[-1].out_levels)
        self.out_channels: list[int] = list(self.cells[-1].out_channels)
        self.out_strides: list[int] = [2**lvl for lvl in self.out_levels]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(features)
        x = feats[-1]
        for extra in self.extras:
            x = extra(x)
            feats.append(x)
        outs = feats
        for i, cell in enumerate(self.cells):
            outs = cell(feats)
            if i + 1 < len(self.cells):
                feats = [outs[j] for j in self._carry]
        return outs
