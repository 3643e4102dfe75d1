"""Detection: the fixed head every neck is scored with, its loss, decoding and COCO evaluation."""

from nas_neck.detect.evaluate import (
    METRIC_NAMES,
    coco_evaluate,
    count_mae,
    load_coco,
    to_coco_results,
)

__all__ = [
    "METRIC_NAMES",
    "coco_evaluate",
    "count_mae",
    "load_coco",
    "to_coco_results",
]
