"""The fixed anchor-free detection head every candidate neck is scored with.

One head for all necks keeps the comparison fair: a per-level 1x1 projection adapts whatever
widths a neck emits to the head's fixed ``width``; after it, the classification and box towers
are shared across levels (FCOS / YOLOv8 style), so a neck with more levels gets no more head
parameters per level, only more points. GroupNorm is used instead of BatchNorm because the
head trains with small batches on CPU and sees each level separately; its statistics do not
depend on the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DetectionHead", "HeadOutput", "anchor_points", "ltrb_to_xyxy"]


@dataclass
class HeadOutput:
    """Head predictions concatenated over levels (finest level first), with their points.

    ``cls_logits`` [B, N, K] and ``box_ltrb`` [B, N, 4] (distances in input pixels from each
    point to the box's left, top, right and bottom edges, positive); ``points`` [N, 2] are the
    (x, y) cell centres in pixels and ``strides`` [N] their level's stride. ``level_sizes`` lists
    (H, W) per level in the same order, ``image_size`` the (H, W) input size when known.
    """

    cls_logits: Tensor
    box_ltrb: Tensor
    points: Tensor
    strides: Tensor
    level_sizes: list[tuple[int, int]]
    image_size: tuple[int, int] | None = None

    def boxes(self) -> Tensor:
        """Predicted boxes [B, N, 4] as xyxy in input pixels."""
        return ltrb_to_xyxy(self.points, self.box_ltrb)


def anchor_points(
    level_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Cell centres [N, 2] (x, y in pixels) and their strides [N], level by level, row-major.

    Kept out of the head's forward so that part stays a pure tensor function (TorchScript, ONNX)
    and so the sizes come from the actual feature maps (``ceil(S / stride)`` for inputs not
    divisible by the stride), never from the image size.
    """
    points, point_strides = [], []
    for (h, w), stride in zip(level_sizes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1))
        point_strides.append(torch.full((h * w,), float(stride), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(point_strides)


def ltrb_to_xyxy(points: Tensor, ltrb: Tensor) -> Tensor:
    """Boxes from points [N, 2] and edge distances [..., N, 4]."""
    return torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), dim=-1)


def _conv_gn_act(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    groups = math.gcd(16, out_channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.SiLU(inplace=True),
    )


class DetectionHead(nn.Module):
    """Decoupled anchor-free head: per-level 1x1 projection, then shared cls and box towers.

    Args:
        in_channels: the neck's ``out_channels``, one per level.
        strides: stride of each level (``2 ** level``), same order as ``in_channels``.
        num_classes: K; classification uses K sigmoid outputs (no background class).
        width: the head's fixed width; every neck is projected to it.
        num_convs: 3x3 conv + GN + SiLU layers in each tower.
        prior_prob: initial foreground probability; the cls bias starts at ``logit(prior_prob)``
            so the first steps are not swamped by ~10k easy negatives per image.

    ``forward(features)`` returns ``(cls_logits [B, N, K], box_ltrb [B, N, 4])`` and is
    scriptable; :meth:`predict` adds the points and sizes as a :class:`HeadOutput`.
    Box distances are ``softplus(scale_l * x) * stride``: positive, smooth at zero (no dead
    ReLU), and per-level learnable ``scale_l`` lets each level settle its own range.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        width: int = 64,
        num_convs: int = 2,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(strides) or not in_channels:
            raise ValueError(
                f"need one stride per input level, got {len(in_channels)} channels and "
                f"{len(strides)} strides"
            )
        if list(strides) != sorted(strides):
            raise ValueError(f"levels must be ordered finest first, got strides {list(strides)}")
        self.num_classes = num_classes
        self.strides = [int(s) for s in strides]
        self.proj = nn.ModuleList(_conv_gn_act(c, width, 1) for c in in_channels)
        self.cls_tower = nn.Sequential(*(_conv_gn_act(width, width, 3) for _ in range(num_convs)))
        self.box_tower = nn.Sequential(*(_conv_gn_act(width, width, 3) for _ in range(num_convs)))
        self.cls_pred = nn.Conv2d(width, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(width, 4, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(strides)))
        self.register_buffer(
            "stride_values", torch.tensor(self.strides, dtype=torch.float32), persistent=False
        )
        self._init_weights(prior_prob)

    def _init_weights(self, prior_prob: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_pred.bias, -math.log((1.0 - prior_prob) / prior_prob))

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        cls_out: list[Tensor] = []
        box_out: list[Tensor] = []
        for i, proj in enumerate(self.proj):
            x = proj(features[i])
            cls = self.cls_pred(self.cls_tower(x))
            box = self.box_pred(self.box_tower(x))
            box = F.softplus(box * self.scales[i]) * self.stride_values[i]
            cls_out.append(cls.flatten(2))
            box_out.append(box.flatten(2))
        return torch.cat(cls_out, 2).transpose(1, 2), torch.cat(box_out, 2).transpose(1, 2)

    def predict(
        self, features: list[Tensor], image_size: tuple[int, int] | None = None
    ) -> HeadOutput:
        """Forward plus the anchor points (float32, also under autocast) of the feature maps."""
        if len(features) != len(self.strides):
            raise ValueError(f"head built for {len(self.strides)} levels, got {len(features)}")
        cls_logits, box_ltrb = self(features)
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        points, strides = anchor_points(sizes, self.strides, box_ltrb.device)
        return HeadOutput(cls_logits, box_ltrb, points, strides, sizes, image_size)
