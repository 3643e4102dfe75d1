"""Fusion ops: how a neck node combines its (already resampled) inputs.

All ops but `concat` expect inputs of equal shape. Names are the DSL's `fuse` values.
"""

from __future__ import annotations

import torch
from torch import nn

FUSE_OPS = ("sum", "concat", "weighted", "softmax", "gp_attention", "spatial")


class SumFusion(nn.Module):
    """Plain element-wise sum (FPN, NAS-FPN 'sum' cell)."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class ConcatFusion(nn.Module):
    """Channel concatenation (PAN / YOLO); the node's block projects back to its width."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class WeightedFusion(nn.Module):
    """BiFPN fast normalized fusion: `w = relu(w); out = sum(w_i x_i) / (sum(w) + eps)`."""

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
    """Softmax-normalised scalar weights per input (EfficientDet's 'softmax' attention variant)."""

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

    The last input attends to the others: `out = x_n + sigmoid(GAP(x_n)) * sum(x_1..x_{n-1})`,
    which for two inputs is the published `x2 + sigmoid(GAP(x2)) * x1`.
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


class SpatialFusion(nn.Module):
    """Per-pixel softmax weights from a 1x1 conv over the stacked inputs (AugFPN ASF / ASFF)."""

    def __init__(self, n: int, channels: int) -> None:
        super().__init__()
        self.logits = nn.Conv2d(n * channels, n, 1)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.logits(torch.cat(xs, dim=1)), dim=1)
        out = xs[0] * w[:, 0:1]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[:, i : i + 1]
        return out


def make_fusion(op: str, n: int, channels: int) -> nn.Module:
    """Build fusion `op` for `n` inputs of `channels` channels each."""
    if op == "sum":
        return SumFusion()
    if op == "concat":
        return ConcatFusion()
    if op == "weighted":
        return WeightedFusion(n)
    if op == "softmax":
        return SoftmaxFusion(n)
    if op == "gp_attention":
        return GpAttentionFusion()
    if op == "spatial":
        return SpatialFusion(n, channels)
    raise ValueError(f"unknown fusion op {op!r}; expected one of {', '.join(FUSE_OPS)}")
