"""Blocks that refine a fused map: the DSL's `block` values, `depth` units deep.

Every block maps `in_ch -> out_ch`; the first unit changes the width, the rest keep it.
`BLOCKS` maps each name to its factory; a new block is a class and one entry there,
usually `repeated(NewBlock)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_neck.ops.conv import ConvAct, ConvBnAct, _fold_bn
from nas_neck.ops.registry import DEPLOYED, Call, build, lookup

BlockFactory = Callable[[int, int, int], nn.Module]
"""`(in_ch, out_ch, depth) -> module`."""


class DwConv(nn.Module):
    """Depthwise-separable conv: 3x3 depthwise then 1x1 pointwise, each with SiLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.dw = ConvBnAct(in_ch, in_ch, 3, groups=in_ch)
        self.pw = ConvBnAct(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class Bottleneck(nn.Module):
    """YOLO bottleneck: 3x3 -> 3x3, with a residual shortcut when widths match."""

    def __init__(self, in_ch: int, out_ch: int, shortcut: bool = True) -> None:
        super().__init__()
        hidden = max(8, out_ch)
        self.cv1 = ConvBnAct(in_ch, hidden, 3)
        self.cv2 = ConvBnAct(hidden, out_ch, 3)
        self.add = shortcut and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convs (YOLOv5): half the channels skip the bottlenecks."""

    def __init__(self, in_ch: int, out_ch: int, depth: int = 1) -> None:
        super().__init__()
        hidden = max(8, out_ch // 2)
        self.cv1 = ConvBnAct(in_ch, hidden, 1)
        self.cv2 = ConvBnAct(in_ch, hidden, 1)
        blocks = [Bottleneck(hidden, hidden, shortcut=False) for _ in range(depth)]
        self.m = nn.Sequential(*blocks)
        self.cv3 = ConvBnAct(2 * hidden, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class C2f(nn.Module):
    """YOLOv8 C2f: split, chain bottlenecks, concatenate every intermediate, project."""

    def __init__(self, in_ch: int, out_ch: int, depth: int = 1) -> None:
        super().__init__()
        self.hidden = max(8, out_ch // 2)
        self.cv1 = ConvBnAct(in_ch, 2 * self.hidden, 1)
        self.m = nn.ModuleList(
            Bottleneck(self.hidden, self.hidden, shortcut=False) for _ in range(depth)
        )
        self.cv2 = ConvBnAct((2 + depth) * self.hidden, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        ys = [y[:, : self.hidden], y[:, self.hidden :]]
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, dim=1))


class RepConv(nn.Module):
    """RepVGG block: 3x3 conv+BN, 1x1 conv+BN, (same width) identity BN; summed, SiLU.

    `reparameterize()` folds all branches into one 3x3 conv with bias for deployment.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.conv3 = ConvBnAct(in_ch, out_ch, 3, act=False)
        self.conv1 = ConvBnAct(in_ch, out_ch, 1, act=False)
        self.identity = nn.BatchNorm2d(in_ch) if in_ch == out_ch else None
        self.fused: nn.Conv2d | None = None
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.conv3(x) + self.conv1(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one equivalent 3x3 conv (eval-mode BN statistics)."""
        if self.fused is not None:
            return
        w3, b3 = _fold_bn(self.conv3.conv.weight, self.conv3.bn)
        w1, b1 = _fold_bn(self.conv1.conv.weight, self.conv1.bn)
        weight = w3 + F.pad(w1, (1, 1, 1, 1))
        bias = b3 + b1
        if self.identity is not None:
            eye = torch.zeros_like(w3)
            eye[torch.arange(self.in_ch), torch.arange(self.in_ch), 1, 1] = 1.0
            wi, bi = _fold_bn(eye, self.identity)
            weight, bias = weight + wi, bias + bi
        self.fused = nn.Conv2d(self.in_ch, self.out_ch, 3, padding=1).to(weight)
        self.fused.weight.copy_(weight)
        self.fused.bias.copy_(bias)
        del self.conv3, self.conv1, self.identity
        self.identity = None


# A fused RepConv(in_ch, out_ch) is the 3x3 ConvAct(in_ch, out_ch, 3).
DEPLOYED[RepConv] = Call(ConvAct, (3,), renames={"fused": "conv"})


class Aspp(nn.Module):
    """Atrous spatial pyramid: a 1x1 and 3x3 convs at dilations 1, 2, 3; concat, 1x1."""

    rates = (1, 2, 3)

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        hidden = max(8, out_ch // 2)
        self.branches = nn.ModuleList(
            [ConvBnAct(in_ch, hidden, 1)]
            + [ConvBnAct(in_ch, hidden, 3, dilation=r) for r in self.rates]
        )
        self.project = ConvBnAct(hidden * (1 + len(self.rates)), out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


def repeated(unit: type[nn.Module], *args: Any) -> BlockFactory:
    """`depth` x `unit(in_ch, out_ch, *args)` in a row; the first changes the width."""

    def make(in_ch: int, out_ch: int, depth: int) -> nn.Module:
        units = (
            build(unit, out_ch if i else in_ch, out_ch, *args) for i in range(depth)
        )
        return nn.Sequential(*units)

    return make


def deep(cls: type[nn.Module]) -> BlockFactory:
    """One `cls(in_ch, out_ch, depth)`: a block that repeats its own inner units."""
    return lambda in_ch, out_ch, depth: build(cls, in_ch, out_ch, depth)


def _projection(in_ch: int, out_ch: int, depth: int) -> nn.Module:
    """Block `none`: nothing, or a linear 1x1 projection when the width changes."""
    if in_ch == out_ch:
        return nn.Identity()
    return build(ConvBnAct, in_ch, out_ch, 1, act=False)


BLOCKS: dict[str, BlockFactory] = {
    "none": _projection,
    "conv": repeated(ConvBnAct, 3),
    "dwconv": repeated(DwConv),
    "bottleneck": repeated(Bottleneck),
    "csp": deep(C3),
    "c2f": deep(C2f),
    "repconv": repeated(RepConv),
    "aspp": repeated(Aspp),
}


def make_block(name: str, in_ch: int, out_ch: int, depth: int = 1) -> nn.Module:
    """Build block `name` (a `BLOCKS` entry), `depth` units deep."""
    return lookup(BLOCKS, "block", name)(in_ch, out_ch, depth)
