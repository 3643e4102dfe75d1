"""Detection loss: varifocal classification on quality targets, GIoU and L1 box terms on positives.

Classification (VFNet's varifocal loss): positives are trained towards their quality target
(the assigner's normalised alignment, about the IoU the box achieves there) and weighted by it,
so the score ranks boxes by localisation quality, which is what COCO mAP rewards; negatives are
down-weighted by ``alpha * p**gamma`` so ~10k easy background points per image do not swamp a
few colonies. Box regression: GIoU loss, averaged over positives with equal weight, so a tiny
colony whose only positive still has a low IoU keeps learning at full strength. GIoU alone has a
blind spot that matters for colonies: when the predicted box contains the target (a point of a
3 px colony on top of a large one, whose neighbours all predict the large box), GIoU reduces to
IoU and its gradient is about ``area_gt / area_pred**2``, i.e. nothing. An L1 term on the edge
distances in stride units (as YOLOX adds; DFL plays the same role in YOLOv8) keeps a
size-independent pull; without it the tiny colony in the overfitting test is never recovered.

All terms are normalised by the number of positives (at least 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from nas_neck.detect.assign import TaskAlignedAssigner
from nas_neck.detect.head import HeadOutput

__all__ = ["DetectionLoss", "varifocal_loss"]


def varifocal_loss(
    logits: Tensor, target: Tensor, alpha: float = 0.75, gamma: float = 2.0
) -> Tensor:
    """Summed varifocal loss; ``target`` holds the quality (0 for negatives) per class."""
    prob = logits.sigmoid().detach()
    weight = torch.where(target > 0, target, alpha * prob.pow(gamma))
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum()


class DetectionLoss(nn.Module):
    """Assign targets, then ``loss = cls_w * loss_cls + box_w * loss_box + l1_w * loss_l1``.

    Returns a dict of scalar tensors: ``loss`` (with gradient), and detached for logging
    ``loss_cls``, ``loss_box`` (GIoU), ``loss_l1`` and ``num_pos`` (positive points in the
    batch, as a float).
    """

    def __init__(
        self,
        assigner: TaskAlignedAssigner | None = None,
        cls_weight: float = 1.0,
        box_weight: float = 2.0,
        l1_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.assigner = assigner or TaskAlignedAssigner()
        self.cls_weight = cls_weight
        self.box_weight = box_weight
        self.l1_weight = l1_weight

    def forward(
        self, outputs: HeadOutput, targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        cls_logits = outputs.cls_logits.float()
        pred_boxes = outputs.boxes().float()
        assigned = self.assigner(
            cls_logits.detach().sigmoid(),
            pred_boxes.detach(),
            outputs.points,
            outputs.strides,
            outputs.level_sizes,
            targets,
        )
        b, n = assigned.batch_index, assigned.point_index
        num_pos = b.numel()
        norm = max(num_pos, 1)

        cls_target = torch.zeros_like(cls_logits)
        cls_target[b, n, assigned.labels] = assigned.scores
        loss_cls = varifocal_loss(cls_logits, cls_target) / norm
        if num_pos:
            loss_box = generalized_box_iou_loss(pred_boxes[b, n], assigned.boxes, reduction="sum")
            loss_box = loss_box / norm
            points, stride = outputs.points[n], outputs.strides[n, None]
            target = torch.cat((points - assigned.boxes[:, :2], assigned.boxes[:, 2:] - points), 1)
            error = (outputs.box_ltrb[b, n].float() - target) / stride
            loss_l1 = error.abs().sum() / (4 * norm)
        else:
            loss_box = pred_boxes.sum() * 0.0  # keeps the graph connected for DDP / autograd
            loss_l1 = loss_box
        loss = self.cls_weight * loss_cls + self.box_weight * loss_box + self.l1_weight * loss_l1
        return {
            "loss": loss,
            "loss_cls": loss_cls.detach(),
            "loss_box": loss_box.detach(),
            "loss_l1": loss_l1.detach(),
            "num_pos": torch.tensor(float(num_pos), device=loss.device),
        }
