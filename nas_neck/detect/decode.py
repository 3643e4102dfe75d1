"""Turn head outputs into per-image detections: threshold, top-k, class-aware NMS, clip."""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import batched_nms

from nas_neck.detect.head import HeadOutput

__all__ = ["decode"]


def decode(
    outputs: HeadOutput,
    score_thresh: float = 0.05,
    nms_iou: float = 0.6,
    max_det: int = 300,
    pre_nms_topk: int = 1000,
    image_size: tuple[int, int] | None = None,
) -> list[dict[str, Tensor]]:
    """Detections per image as ``dict(boxes [D, 4] xyxy, scores [D], labels [D])``.

    Every (point, class) pair scoring above ``score_thresh`` is a candidate (a point may carry
    several classes); the best ``pre_nms_topk`` go through class-aware NMS
    (``torchvision.ops.batched_nms``: boxes of different classes never suppress each other) and
    the best ``max_det`` survive, sorted by score. Boxes are clipped to ``image_size`` (H, W),
    or to ``outputs.image_size`` when that is set. The defaults leave room for plates with a
    few hundred colonies; COCO's own evaluation counts at most 100 per image unless told more.
    """
    scores_all = outputs.cls_logits.detach().float().sigmoid()
    boxes_all = outputs.boxes().detach().float()
    size = image_size or outputs.image_size
    num_classes = scores_all.shape[-1]
    results = []
    for scores, boxes in zip(scores_all, boxes_all, strict=True):
        flat = scores.flatten()
        candidates = (flat > score_thresh).nonzero().squeeze(1)
        if candidates.numel() > pre_nms_topk:
            candidates = candidates[flat[candidates].topk(pre_nms_topk).indices]
        cand_scores = flat[candidates]
        labels = candidates % num_classes
        cand_boxes = boxes[candidates // num_classes]
        if size is not None:
            cand_boxes[:, 0::2] = cand_boxes[:, 0::2].clamp(0, size[1])
            cand_boxes[:, 1::2] = cand_boxes[:, 1::2].clamp(0, size[0])
        keep = batched_nms(cand_boxes, cand_scores, labels, nms_iou)[:max_det]
        results.append(
            {"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": labels[keep]}
        )
    return results
