"""COCO box evaluation (pycocotools), colony-count error, and letterbox -> COCO result mapping.

pycocotools is the reference every paper quotes, but it is fragile: it crashes on an empty result
list, needs ``info``, ``iscrowd``, ``area`` and ``id`` in the ground truth, prints to stdout, and
its ``summarize`` hard-codes ``maxDets=100`` for mAP. This module works around all four: the
ground truth is completed on load, empty results are evaluated as "no detections", COCOeval's
prints go to the ``logging`` debug level, and the metrics are read straight from the accumulated
precision array, so a larger ``max_dets`` (dense plates) is honoured consistently.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

__all__ = ["METRIC_NAMES", "coco_evaluate", "count_mae", "load_coco", "to_coco_results"]

log = logging.getLogger(__name__)

# name -> (IoU threshold or None for the .50:.95 mean, area range label)
_METRICS: dict[str, tuple[float | None, str]] = {
    "map": (None, "all"),
    "ap50": (0.5, "all"),
    "ap75": (0.75, "all"),
    "ap_small": (None, "small"),
    "ap_medium": (None, "medium"),
    "ap_large": (None, "large"),
}
METRIC_NAMES: tuple[str, ...] = tuple(_METRICS)


@contextlib.contextmanager
def _quiet(what: str) -> Iterator[None]:
    """Capture pycocotools' stdout prints and send them to the debug log."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    text = buffer.getvalue().strip()
    if text:
        log.debug("%s:\n%s", what, text)


def _completed(dataset: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A copy of a COCO dict with the keys pycocotools needs filled in; and whether any were."""
    out = dict(dataset)
    changed = False
    for key, default in (("info", {}), ("licenses", []), ("images", []), ("annotations", [])):
        if key not in out:
            out[key] = default
            changed = True
    if "categories" not in out:
        ids = sorted({a["category_id"] for a in out["annotations"]})
        out["categories"] = [{"id": i, "name": str(i)} for i in ids]
        changed = True
    next_id = 1 + max((a["id"] for a in out["annotations"] if "id" in a), default=0)
    annotations = []
    for ann in out["annotations"]:
        if not {"iscrowd", "area", "id"} <= ann.keys():
            ann = dict(ann)
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
            if "id" not in ann:
                ann["id"] = next_id
                next_id += 1
            changed = True
        annotations.append(ann)
    out["annotations"] = annotations
    return out, changed


def _coco_from_dict(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with _quiet("COCO index"):
        coco.createIndex()
    return coco


def load_coco(gt: COCO | str | os.PathLike | Mapping[str, Any]) -> COCO:
    """A pycocotools COCO from an object, a json path or a dict, missing keys filled in.

    Annotations without ``iscrowd`` get 0, without ``area`` the box area (``w * h``: boxes are
    all we have, and COCO's small/medium/large split then follows box size), without ``id`` a
    fresh one; a missing ``info`` becomes ``{}``. A COCO object that needs nothing is returned
    as is; otherwise a completed copy is made and the caller's object is left untouched.
    """
    if isinstance(gt, COCO):
        dataset, changed = _completed(gt.dataset)
        return _coco_from_dict(dataset) if changed else gt
    if isinstance(gt, Mapping):
        return _coco_from_dict(_completed(gt)[0])
    with open(gt) as f:
        return _coco_from_dict(_completed(json.load(f))[0])


def _load_results(coco: COCO, detections: Sequence[Mapping[str, Any]]) -> COCO:
    """Results as a COCO object; works for an empty list (pycocotools' loadRes does not)."""
    if not detections:
        return _coco_from_dict(
            {
                "info": coco.dataset.get("info", {}),
                "images": list(coco.dataset["images"]),
                "categories": copy.deepcopy(coco.dataset["categories"]),
                "annotations": [],
            }
        )
    with _quiet("loadRes"):
        return coco.loadRes([dict(d) for d in detections])  # loadRes edits the dicts it gets


def coco_evaluate(
    gt: COCO | str | os.PathLike | Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int] | None = None,
    max_dets: int = 100,
) -> dict[str, float]:
    """COCO box metrics of ``detections`` against ``gt``, with pycocotools' COCOeval.

    Args:
        gt: ground truth (COCO object, json path or dict; see :func:`load_coco`).
        detections: COCO result dicts ``{image_id, category_id, bbox: [x, y, w, h], score}``.
        image_ids: evaluate only these images (default: all images in ``gt``).
        max_dets: detections counted per image and category, best first (COCO: 100). Plates
            with more colonies of one class than this cannot reach full recall; pass the
            decoder's ``max_det`` for dense plates.

    Returns:
        ``map`` (AP@[.50:.95]), ``ap50``, ``ap75``, ``ap_small``, ``ap_medium``, ``ap_large``
        as floats in [0, 1]. A metric with no ground truth at all (e.g. no large boxes, where
        COCOeval reports -1) is NaN. With no detections every other metric is 0.0.
    """
    coco = load_coco(gt)
    known = set(coco.getImgIds())
    ids = sorted(known) if image_ids is None else sorted(set(image_ids))
    if not ids:
        raise ValueError("no images to evaluate")
    if unknown := set(ids) - known:
        raise ValueError(f"image ids not in the ground truth: {sorted(unknown)[:10]}")
    if unknown := {d["image_id"] for d in detections} - known:
        raise ValueError(f"detections for images not in the ground truth: {sorted(unknown)[:10]}")
    wanted = set(ids)
    results = _load_results(coco, [d for d in detections if d["image_id"] in wanted])

    evaluator = COCOeval(coco, results, iouType="bbox")
    evaluator.params.imgIds = ids
    evaluator.params.maxDets = sorted({1, 10, max_dets})
    with _quiet("COCOeval"):
        evaluator.evaluate()
        evaluator.accumulate()
    metrics = _summarise(evaluator, max_dets)
    log.debug("COCO metrics over %d images: %s", len(ids), metrics)
    return metrics


def _summarise(evaluator: COCOeval, max_dets: int) -> dict[str, float]:
    """The metrics of COCOeval.summarize, from ``eval['precision']`` [T, R, K, A, M]."""
    params = evaluator.params
    precision = evaluator.eval["precision"][..., params.maxDets.index(max_dets)]
    metrics = {}
    for name, (iou, area) in _METRICS.items():
        p = precision[..., params.areaRngLbl.index(area)]
        if iou is not None:
            p = p[np.isclose(params.iouThrs, iou)]
        valid = p[p > -1]
        metrics[name] = float(valid.mean()) if valid.size else math.nan
    return metrics


def count_mae(
    gt: COCO | str | os.PathLike | Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    score_thresh: float,
    image_ids: Sequence[int] | None = None,
) -> float:
    """Colony-count mean absolute error over images.

    Predicted count: detections with ``score >= score_thresh`` (any class); annotated count:
    non-crowd annotations (crowd regions mark uncountable clumps). Averaged over ``image_ids``
    or every image in ``gt``, including images with neither colonies nor detections.
    """
    coco = load_coco(gt)
    ids = sorted(coco.getImgIds()) if image_ids is None else list(image_ids)
    if not ids:
        raise ValueError("no images to count")
    predicted = Counter(d["image_id"] for d in detections if d["score"] >= score_thresh)
    errors = [abs(predicted[i] - len(coco.getAnnIds(imgIds=[i], iscrowd=False))) for i in ids]
    return float(np.mean(errors))


def to_coco_results(
    predictions: Sequence[Mapping[str, Tensor]],
    image_ids: Sequence[int],
    letterbox: Sequence[tuple[float, float, float]],
    category_ids: Sequence[int],
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """Decoded predictions in letterboxed input pixels -> COCO result dicts in original pixels.

    Args:
        predictions: per image ``{boxes [D, 4] xyxy, scores [D], labels [D]}`` (as from
            :func:`~nas_neck.detect.decode.decode`), labels contiguous in 0..K-1.
        image_ids: COCO image id per prediction.
        letterbox: per image ``(scale, pad_x, pad_y)`` used to make the input:
            ``input = original * scale + pad``, so ``original = (input - pad) / scale``.
        category_ids: COCO category id of each contiguous label.
        image_sizes: optional original (H, W) per image; boxes are clipped to it (they can
            reach into the letterbox padding otherwise).
    """
    if not len(predictions) == len(image_ids) == len(letterbox):
        raise ValueError("need one image id and one letterbox per prediction")
    results = []
    for i, pred in enumerate(predictions):
        scale, pad_x, pad_y = letterbox[i]
        boxes = pred["boxes"].detach().float().cpu().clone()
        boxes[:, 0::2] = (boxes[:, 0::2] - pad_x) / scale
        boxes[:, 1::2] = (boxes[:, 1::2] - pad_y) / scale
        if image_sizes is not None:
            height, width = image_sizes[i]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        boxes[:, 2:] -= boxes[:, :2]
        image_id = int(image_ids[i])
        for box, score, label in zip(
            boxes.tolist(), pred["scores"].tolist(), pred["labels"].tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_ids[label]),
                    "bbox": box,
                    "score": float(score),
                }
            )
    return results
