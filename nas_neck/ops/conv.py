"""Conv + BatchNorm (+ SiLU): the unit every neck op is made of, and its fused form."""

from __future__ import annotations

import torch
from torch import nn

from nas_neck.ops.registry import DEPLOYED, Call


class ConvBnAct(nn.Module):
    """`Conv2d -> BatchNorm2d -> SiLU` (activation optional), 'same' padding.

    `reparameterize()` folds the BatchNorm into the conv for deployment.
    """

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
        pad = dilation * (kernel - 1) // 2
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel, stride, pad, dilation, groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BatchNorm (eval-mode statistics) into the conv: weight and bias."""
        if isinstance(self.bn, nn.BatchNorm2d):
            weight, bias = _fold_bn(self.conv.weight, self.bn)
            self.conv.weight.copy_(weight)
            self.conv.bias = nn.Parameter(bias)
            self.bn = nn.Identity()


class ConvAct(nn.Module):
    """`Conv2d` (with bias) `-> SiLU`: a `ConvBnAct` with its BatchNorm folded."""

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
        pad = dilation * (kernel - 1) // 2
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, pad, dilation, groups)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


DEPLOYED[ConvBnAct] = Call(ConvAct)  # same arguments, same weight names


def _fold_bn(
    weight: torch.Tensor, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold eval-mode BatchNorm into the preceding bias-free conv: weight and bias."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale
