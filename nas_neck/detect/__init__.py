"""Detection: the fixed head every neck is scored with, its loss, decoding and COCO evaluation."""

from nas_neck.detect.assign import Assignment, TaskAlignedAssigner
from nas_neck.detect.decode import decode
from nas_neck.detect.evaluate import (
    METRIC_NAMES,
    coco_evaluate,
    count_mae,
    load_coco,
    to_coco_results,
)
from nas_neck.detect.head import DetectionHead, HeadOutput, anchor_points, ltrb_to_xyxy
from nas_neck.detect.loss import DetectionLoss, varifocal_loss

__all__ = [
    "METRIC_NAMES",
    "Assignment",
    "DetectionHead",
    "DetectionLoss",
    "HeadOutput",
    "TaskAlignedAssigner",
    "anchor_points",
    "coco_evaluate",
    "count_mae",
    "decode",
    "load_coco",
    "ltrb_to_xyxy",
    "to_coco_results",
    "varifocal_loss",
]
