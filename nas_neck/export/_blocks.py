"""Torch-only twins of `nas_neck.ops`, copied class by class into exported `neck.py` files.

Each class has the same parameter names as its `nas_neck.ops` counterpart, so a trained
`GraphNeck`'s weights load into the exported module unchanged. `ConvAct` is `ConvBnAct` with the
BatchNorm folded into the conv (`--fuse`); a fused export renames `ConvBnAct` to it everywhere.
Lines stay under 88 columns: ruff's default, so the exported files are already formatted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBnAct(nn.Module):
    """Conv2d -> BatchNorm2d -> SiLU (activation optional), 'same' padding."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch,
            out_ch,
            kernel,
            stride=stride,
            padding=dilation * (kernel - 1) // 2,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvAct(nn.Module):
    """Conv2d with BatchNorm folded into its weight and bias -> SiLU (optional)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch,
            out_ch,
            kernel,
            stride=stride,
            padding=dilation * (kernel - 1) // 2,
            dilation=dilation,
            groups=groups,
        )
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class DwConv(nn.Module):
    """Depthwise-separable conv: 3x3 depthwise then 1x1 pointwise, each with SiLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.dw = ConvBnAct(in_ch, in_ch, 3, groups=in_ch)
        self.pw = ConvBnAct(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))


class Bottleneck(nn.Module):
    """YOLO bottleneck: 3x3 -> 3x3, with a residual shortcut when widths match."""

    def __init__(self, in_ch: int, out_ch: int, shortcut: bool = True) -> None:
        super().__init__()
        hidden = max(8, out_ch)
        self.cv1 = ConvBnAct(in_ch, hidden, 3)
        self.cv2 = ConvBnAct(hidden, out_ch, 3)
        self.add = shortcut and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
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

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class C2f(nn.Module):
    """YOLOv8 C2f: split, chain bottlenecks, concatenate every intermediate, project."""

    def __init__(self, in_ch: int, out_ch: int, depth: int = 1) -> None:
        super().__init__()
        self.hidden = hidden = max(8, out_ch // 2)
        self.cv1 = ConvBnAct(in_ch, 2 * hidden, 1)
        blocks = [Bottleneck(hidden, hidden, shortcut=False) for _ in range(depth)]
        self.m = nn.ModuleList(blocks)
        self.cv2 = ConvBnAct((2 + depth) * hidden, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv1(x)
        ys = [y[:, : self.hidden], y[:, self.hidden :]]
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, dim=1))


class RepConv(nn.Module):
    """RepVGG block: 3x3 conv+BN, 1x1 conv+BN and (same width) identity BN, summed.

    Export with `--fuse` to get the deployed form: one 3x3 conv with bias.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv3 = ConvBnAct(in_ch, out_ch, 3, act=False)
        self.conv1 = ConvBnAct(in_ch, out_ch, 1, act=False)
        self.identity = nn.BatchNorm2d(in_ch) if in_ch == out_ch else None
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3(x) + self.conv1(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)


class Aspp(nn.Module):
    """Atrous spatial pyramid: 1x1 and 3x3 convs at dilations 1, 2, 3, concat, project."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        hidden = max(8, out_ch // 2)
        self.branches = nn.ModuleList(
            [ConvBnAct(in_ch, hidden, 1)]
            + [ConvBnAct(in_ch, hidden, 3, dilation=r) for r in (1, 2, 3)]
        )
        self.project = ConvBnAct(hidden * 4, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class SpaceToDepth(nn.Module):
    """Halve the resolution by moving each 2x2 patch into channels (sides padded to even)."""

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, w % 2, 0, h % 2))
        return F.pixel_unshuffle(x, 2)


class WeightedFusion(nn.Module):
    """BiFPN fast normalized fusion: `w = relu(w); sum(w_i x_i) / (sum(w) + eps)`."""

    def __init__(self, n: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, xs: list[Tensor]) -> Tensor:
        w = torch.relu(self.weight)
        w = w / (w.sum() + self.eps)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out


class SoftmaxFusion(nn.Module):
    """Softmax-normalised scalar weights, one per input."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n))

    def forward(self, xs: list[Tensor]) -> Tensor:
        w = torch.softmax(self.weight, dim=0)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out


class SpatialFusion(nn.Module):
    """Per-pixel softmax weights from a 1x1 conv over the stacked inputs (ASF / ASFF)."""

    def __init__(self, n: int, channels: int) -> None:
        super().__init__()
        self.logits = nn.Conv2d(n * channels, n, 1)

    def forward(self, xs: list[Tensor]) -> Tensor:
        w = torch.softmax(self.logits(torch.cat(xs, dim=1)), dim=1)
        out = xs[0] * w[:, 0:1]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[:, i : i + 1]
        return out
