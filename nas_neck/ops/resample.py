"""Moving a feature map between pyramid levels (and widths) on one edge of a neck.

Level `L` has stride `2**L`. Going down in resolution uses stride-2 ops whose output
side is `ceil(side / 2)` (3x3 conv / pool with padding 1, or space-to-depth after
padding to even), which matches timm backbones (TF 'same' padding and `k3 s2 p1` stems
both give ceil). Going up interpolates to the *actual* size of a reference map at the
target level, so inputs whose sides do not divide by 32 work.

`DOWNSAMPLE_MODES` maps each of the DSL's `downsample` values to the factory of one
stride-2 step, `UPSAMPLE_MODES` each `upsample` value to `F.interpolate`'s arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_neck.ops.conv import ConvBnAct
from nas_neck.ops.registry import build, lookup

DownStep = Callable[[int, int], tuple[nn.Module, int]]
"""`(in_ch, out_ch) -> (stride-2 module, its output channels)`."""


class SpaceToDepth(nn.Module):
    """Halve the resolution by moving each 2x2 patch into channels (4x); no weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, w % 2, 0, h % 2))
        return F.pixel_unshuffle(x, 2)


DOWNSAMPLE_MODES: dict[str, DownStep] = {
    "conv": lambda i, o: (build(ConvBnAct, i, o, 3, stride=2), o),
    "maxpool": lambda i, o: (build(nn.MaxPool2d, 3, 2, 1), i),
    "avgpool": lambda i, o: (build(nn.AvgPool2d, 3, 2, 1, count_include_pad=False), i),
    "space_to_depth": lambda i, o: (build(SpaceToDepth), 4 * i),
}
UPSAMPLE_MODES: dict[str, dict[str, Any]] = {
    "nearest": {"mode": "nearest"},
    "bilinear": {"mode": "bilinear", "align_corners": False},
}


class Resample(nn.Module):
    """Bring a map from `in_level` to `out_level` and from `in_ch` to `out_ch` channels.

    Channel changes use a linear 1x1 projection (conv + BN, no activation, as effdet
    does), applied at the lower of the two resolutions to save compute. `out_ch=None`
    keeps the channels (concat fusion projects after concatenating).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None,
        in_level: int,
        out_level: int,
        upsample: str = "nearest",
        downsample: str = "conv",
    ) -> None:
        super().__init__()
        self.up = in_level > out_level
        self.scale = 2 ** max(0, in_level - out_level)
        self.interpolation = (
            lookup(UPSAMPLE_MODES, "upsample mode", upsample) if self.up else {}
        )
        steps: list[nn.Module] = []
        ch = in_ch
        target = in_ch if out_ch is None else out_ch
        for _ in range(max(0, out_level - in_level)):
            step, ch = lookup(DOWNSAMPLE_MODES, "downsample mode", downsample)(
                ch, target
            )
            steps.append(step)
        if ch != target:
            # Downsampling pools then projects; upsampling projects first (lower res).
            steps.append(build(ConvBnAct, ch, target, 1, act=False))
        self.ops = nn.Sequential(*steps)
        self.out_ch = target

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ops(x)
        if not self.up:
            return x
        if ref is not None:
            return F.interpolate(x, size=ref.shape[-2:], **self.interpolation)
        return F.interpolate(x, scale_factor=float(self.scale), **self.interpolation)
