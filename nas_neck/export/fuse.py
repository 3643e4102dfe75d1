"""Deployment fusing: fold every BatchNorm into its conv and re-parameterize RepConv blocks.

BatchNorm in eval mode is an affine map per channel, so `bn(conv(x))` equals one conv with a
scaled weight and a bias. The fused neck computes the same function (up to float rounding) with
fewer ops and no BatchNorm layers, which is what ONNX / TorchScript deployments want.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from nas_neck.errors import NasNeckError
from nas_neck.ops.blocks import RepConv
from nas_neck.ops.conv import ConvBnAct

__all__ = ["fuse_neck"]


@torch.no_grad()
def fuse_neck(neck: nn.Module) -> nn.Module:
    """An eval-mode copy of `neck` with BatchNorm folded into convs and RepConv re-parameterized.

    `neck` itself is left untouched. Every `ConvBnAct` keeps its place (and its `conv` name) with
    a biased conv and an `Identity` in place of its BatchNorm, so the module tree, and with it the
    exported source, keeps its shape.
    """
    fused = copy.deepcopy(neck).eval()
    for module in list(fused.modules()):  # RepConv first: it reads its branches' BatchNorms
        if isinstance(module, RepConv) and module.fused is None:
            module.reparameterize()
    for module in fused.modules():
        if isinstance(module, ConvBnAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = _fold(module.conv, module.bn)
            module.bn = nn.Identity()
    left = [
        name for name, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if left:
        raise NasNeckError(
            f"cannot fuse BatchNorm layers outside ConvBnAct / RepConv: {', '.join(left)}"
        )
    return fused


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias computing `bn(conv(x))` for eval-mode `bn`."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    ).to(conv.weight)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused
