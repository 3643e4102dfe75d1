"""Deployment fusing: fold every BatchNorm into its conv and re-parameterize RepConv blocks.

BatchNorm in eval mode is an affine map per channel, so `bn(conv(x))` equals one conv with a
scaled weight and a bias. The fused neck computes the same function (up to float rounding) with
fewer ops and no BatchNorm layers, which is what ONNX / TorchScript deployments want.

Fusing is the ops' own business: every module with a `reparameterize()` method (`ConvBnAct`,
`RepConv`, ...) re-parameterizes itself in place; `nas_neck.ops.registry.DEPLOYED` says what
the exporter writes for it afterwards.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from nas_neck.errors import NasNeckError

__all__ = ["fuse_neck"]


@torch.no_grad()
def fuse_neck(neck: nn.Module) -> nn.Module:
    """An eval-mode copy of `neck` with BatchNorm folded into convs and RepConv re-parameterized.

    `neck` itself is left untouched. Modules keep their places and names (a `ConvBnAct` keeps
    its `conv`, now biased, and an `Identity` for its BatchNorm), so the module tree, and with
    it the exported source, keeps its shape.
    """
    fused = copy.deepcopy(neck).eval()
    _reparameterize(fused)
    left = [
        name for name, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if left:
        raise NasNeckError(
            f"cannot fuse BatchNorm layers outside re-parameterizable modules: {', '.join(left)}"
        )
    return fused


def _reparameterize(module: nn.Module) -> None:
    """Re-parameterize `module`, then its children as they are afterwards: outer modules first,
    since a RepConv reads its branches' BatchNorms."""
    reparameterize = getattr(module, "reparameterize", None)
    if callable(reparameterize):
        reparameterize()
    for child in module.children():
        _reparameterize(child)
