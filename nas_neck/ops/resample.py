"""Moving a feature map between pyramid levels (and widths) on one edge of the neck graph.

Level `L` has stride `2**L`. Going down in resolution uses stride-2 ops whose output side is
`ceil(side / 2)` (3x3 conv / pool with padding 1, or space-to-depth after padding to even), which
matches timm backbones (TF 'same' padding and `k3 s2 p1` stems both give ceil). Going up
interpolates to the *actual* size of a reference map at the target level, so inputs whose sides
do not divide by 32 work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas_neck.ops.conv import ConvBnAct

UPSAMPLE_MODES = ("nearest", "bilinear")
DOWNSAMPLE_MODES = ("conv", "maxpool", "avgpool", "space_to_depth")


class SpaceToDepth(nn.Module):
    """Halve the resolution by moving each 2x2 patch into channels (4x channels), no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, w % 2, 0, h % 2))
        return F.pixel_unshuffle(x, 2)


def _down_step(mode: str, in_ch: int, out_ch: int) -> tuple[nn.Module, int]:
    """One stride-2 step; returns the module and its output channels."""
    if mode == "conv":
        return ConvBnAct(in_ch, out_ch, 3, stride=2), out_ch
    if mode == "maxpool":
        return nn.MaxPool2d(3, 2, 1), in_ch
    if mode == "avgpool":
        return nn.AvgPool2d(3, 2, 1, count_include_pad=False), in_ch
    if mode == "space_to_depth":
        return SpaceToDepth(), 4 * in_ch
    raise ValueError(f"unknown downsample mode {mode!r}")


class Resample(nn.Module):
    """Bring a map from `in_level` to `out_level` and from `in_ch` to `out_ch` channels.

    Channel changes use a linear 1x1 projection (conv + BN, no activation, as effdet does), applied
    at the lower of the two resolutions to save compute. `out_ch=None` keeps the channels (concat
    fusion projects after concatenating).
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
        self.mode = upsample
        self.scale = 2 ** max(0, in_level - out_level)
        steps: list[nn.Module] = []
        ch = in_ch
        target = in_ch if out_ch is None else out_ch
        for _ in range(max(0, out_level - in_level)):
            step, ch = _down_step(downsample, ch, target)
            steps.append(step)
        if ch != target:
            # Downsampling pools then projects; upsampling projects first (lower resolution).
            proj = ConvBnAct(ch, target, 1, act=False)
            steps.append(proj)
        self.ops = nn.Sequential(*steps)
        self.up = in_level > out_level
        self.out_ch = target

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ops(x)
        if not self.up:
            return x
        align = False if self.mode == "bilinear" else None
        if ref is not None:
            return F.interpolate(x, size=ref.shape[-2:], mode=self.mode, align_corners=align)
        return F.interpolate(x, scale_factor=float(self.scale), mode=self.mode, align_corners=align)
