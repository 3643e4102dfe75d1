"""Fusion ops: how a neck node combines its (already resampled) inputs.

All ops but `concat` expect inputs of equal shape. `FUSE_OPS` maps each of the DSL's
`fuse` values to its factory. A fusion without weights may define `inline(xs, let)`,
its `forward` as one expression over the inputs' variable names, which an exported
`neck.py` writes in place of a module (`let(name, expr)` binds a helper variable).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nas_neck.ops.registry import build, lookup

FusionFactory = Callable[[int, int], nn.Module]
"""`(n_inputs, channels) -> module`."""
Let = Callable[[str, str], str]
"""`let(name, expr) -> variable`: binds `expr` to a fresh variable in exported code."""


class SumFusion(nn.Module):
    """Plain element-wise sum (FPN, NAS-FPN 'sum' cell)."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    @staticmethod
    def inline(xs: list[str], let: Let) -> str:
        """`forward` as code over the inputs' variable names."""
        return " + ".join(xs)


class ConcatFusion(nn.Module):
    """Channel concatenation (PAN / YOLO); the node's block projects to its width."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=1)

    @staticmethod
    def inline(xs: list[str], let: Let) -> str:
        """`forward` as code over the inputs' variable names."""
        return f"torch.cat([{', '.join(xs)}], dim=1)" if len(xs) > 1 else xs[0]


class WeightedFusion(nn.Module):
    """BiFPN fast normalized fusion: `w = relu(w); sum(w_i x_i) / (sum(w) + eps)`."""

    def __init__(self, n: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        w = torch.relu(self.weight)
        w = w / (w.sum() + self.eps)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out


class SoftmaxFusion(nn.Module):
    """Softmax-normalised scalar weights, one per input (EfficientDet's 'softmax')."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.weight, dim=0)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out


class GpAttentionFusion(nn.Module):
    """NAS-FPN global-pooling cell generalised to n inputs.

    The last input attends to the others:
    `out = x_n + sigmoid(GAP(x_n)) * sum(x_1..x_{n-1})`, which for two inputs is the
    published `x2 + sigmoid(GAP(x2)) * x1`.
    """

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        last = xs[-1]
        if len(xs) == 1:
            return last
        rest = xs[0]
        for x in xs[1:-1]:
            rest = rest + x
        gate = torch.sigmoid(last.mean(dim=(2, 3), keepdim=True))
        return last + gate * rest

    @staticmethod
    def inline(xs: list[str], let: Let) -> str:
        """`forward` as code over the inputs' variable names (the gate bound first)."""
        if len(xs) == 1:
            return xs[0]
        rest = " + ".join(xs[:-1])
        rest = f"({rest})" if len(xs) > 2 else rest
        gate = let("gate", f"torch.sigmoid({xs[-1]}.mean((2, 3), keepdim=True))")
        return f"{xs[-1]} + {gate} * {rest}"


class SpatialFusion(nn.Module):
    """Per-pixel softmax weights from a 1x1 conv over the stacked inputs (ASF, ASFF)."""

    def __init__(self, n: int, channels: int) -> None:
        super().__init__()
        self.logits = nn.Conv2d(n * channels, n, 1)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.logits(torch.cat(xs, dim=1)), dim=1)
        out = xs[0] * w[:, 0:1]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[:, i : i + 1]
        return out


@dataclass(frozen=True)
class Fusion:
    """A `FUSE_OPS` entry: its factory and whether its inputs' order matters (`ordered`:
    the last input plays its own part, so a genotype keeps it last, not sorted)."""

    make: FusionFactory
    ordered: bool = False

    def __call__(self, n: int, channels: int) -> nn.Module:
        return self.make(n, channels)


FUSE_OPS: dict[str, Fusion | FusionFactory] = {
    "sum": Fusion(lambda n, channels: build(SumFusion)),
    "concat": Fusion(lambda n, channels: build(ConcatFusion)),
    "weighted": Fusion(lambda n, channels: build(WeightedFusion, n)),
    "softmax": Fusion(lambda n, channels: build(SoftmaxFusion, n)),
    "gp_attention": Fusion(lambda n, channels: build(GpAttentionFusion), ordered=True),
    "spatial": Fusion(lambda n, channels: build(SpatialFusion, n, channels)),
}
"""A plain factory registers an order-free fusion."""


def make_fusion(op: str, n: int, channels: int) -> nn.Module:
    """Build fusion `op` (a `FUSE_OPS` entry) for `n` inputs of `channels` channels."""
    return lookup(FUSE_OPS, "fusion op", op)(n, channels)


def fusion_is_ordered(op: str) -> bool:
    """Whether fusion `op`'s inputs keep their order (unknown or plain factory: no)."""
    return getattr(FUSE_OPS.get(op), "ordered", False)
