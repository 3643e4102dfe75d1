"""COCO evaluation: equal to faster-coco-eval, robust to empty results and sparse GT files."""

from __future__ import annotations

import copy
import json
import logging
import math

import numpy as np
import pytest
import torch

from nas_neck.detect import coco_evaluate, count_mae, load_coco, to_coco_results
from nas_neck.detect.evaluate import METRIC_NAMES

# small (< 32**2 px area), medium and large boxes, two categories with non-contiguous ids
_BOXES = {
    1: [(10, 10, 5, 6, 1), (40, 40, 20, 25, 1), (100, 50, 120, 110, 3), (20, 150, 8, 8, 3)],
    2: [(5, 5, 30, 30, 1), (60, 10, 12, 9, 1), (80, 80, 40, 50, 3)],
    5: [(30, 30, 100, 120, 1), (150, 20, 6, 4, 3), (160, 160, 20, 20, 3), (10, 100, 3, 3, 1)],
}


def _gt(complete: bool = True) -> dict:
    images = [{"id": i, "width": 256, "height": 256, "file_name": f"{i}.png"} for i in _BOXES]
    annotations = []
    for image_id, boxes in _BOXES.items():
        for x, y, w, h, cat in boxes:
            ann = {"image_id": image_id, "category_id": cat, "bbox": [x, y, w, h]}
            if complete:
                ann |= {"id": len(annotations) + 1, "area": w * h, "iscrowd": 0}
            annotations.append(ann)
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}],
    }
    if complete:
        gt["info"] = {"description": "test"}
    return gt


def _detections(seed: int = 0, extra: int = 6) -> list[dict]:
    """Jittered copies of the GT (some with the wrong class) plus random false positives."""
    rng = np.random.default_rng(seed)
    dets = []
    for image_id, boxes in _BOXES.items():
        for x, y, w, h, cat in boxes:
            for _ in range(2):
                jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
                wrong = rng.random() < 0.15
                dets.append(
                    {
                        "image_id": image_id,
                        "category_id": (4 - cat) if wrong else cat,
                        "bbox": [float(v) for v in np.maximum([x, y, w, h] + jitter, 0.5)],
                        "score": float(rng.random()),
                    }
                )
        for _ in range(extra):
            x, y = rng.random(2) * 200
            w, h = rng.random(2) * 60 + 2
            cat = int(rng.choice([1, 3]))
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "score": float(rng.random()),
                }
            )
    return dets


def _faster(gt: dict, dets: list[dict], image_ids=None, max_dets: int = 100) -> dict[str, float]:
    fce = pytest.importorskip("faster_coco_eval")
    coco = fce.COCO(copy.deepcopy(gt))
    evaluator = fce.COCOeval_faster(coco, coco.loadRes(copy.deepcopy(dets)), iouType="bbox")
    if image_ids is not None:
        evaluator.params.imgIds = list(image_ids)
    evaluator.params.maxDets = [1, 10, max_dets]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict
    keys = ("AP_all", "AP_50", "AP_75", "AP_small", "AP_medium", "AP_large")
    # COCOeval's -1 (no GT in that size range) is NaN in ours
    return {
        name: math.nan if stats[key] == -1 else stats[key]
        for name, key in zip(METRIC_NAMES, keys, strict=True)
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_faster_coco_eval(seed: int) -> None:
    gt, dets = _gt(), _detections(seed)
    ours = coco_evaluate(gt, dets)
    assert set(ours) == set(METRIC_NAMES)
    assert 0.05 < ours["map"] < 0.95  # a non-trivial case
    reference = _faster(gt, dets)
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(reference[name], abs=1e-6), name


def test_subset_and_more_than_100_detections_equal_faster_coco_eval() -> None:
    gt, dets = _gt(), _detections(3, extra=150)  # > 100 detections per image
    for kwargs in ({"image_ids": [1, 5]}, {"max_dets": 300}, {"image_ids": [2], "max_dets": 300}):
        ours = coco_evaluate(gt, dets, **kwargs)
        reference = _faster(gt, dets, **kwargs)
        for name in METRIC_NAMES:
            assert ours[name] == pytest.approx(reference[name], abs=1e-6, nan_ok=True), (
                kwargs,
                name,
            )
    assert math.isnan(coco_evaluate(gt, dets, image_ids=[1, 5])["ap_medium"])  # none there
    # exact boxes ranked below 150 confident false positives of their class (COCOeval counts
    # max_dets per image and category): found only when 300 count
    buried = [
        {"image_id": i, "category_id": c, "bbox": [x, y, w, h], "score": 0.1}
        for i, boxes in _BOXES.items()
        for x, y, w, h, c in boxes
    ]
    buried += [
        {"image_id": i, "category_id": c, "bbox": [250, 250, 2, 2], "score": 0.9}
        for i in _BOXES
        for c in (1, 3)
        for _ in range(150)
    ]
    assert coco_evaluate(gt, buried)["map"] == 0.0
    assert coco_evaluate(gt, buried, max_dets=300)["map"] > 0.0


def test_empty_detections_give_zeros_and_nan_where_no_gt() -> None:
    assert coco_evaluate(_gt(), []) == dict.fromkeys(METRIC_NAMES, 0.0)
    only_small = _gt()
    only_small["annotations"] = [a for a in only_small["annotations"] if a["area"] < 32**2]
    metrics = coco_evaluate(only_small, [])
    assert metrics["map"] == 0.0 and metrics["ap_small"] == 0.0
    assert math.isnan(metrics["ap_medium"]) and math.isnan(metrics["ap_large"])


def test_sparse_gt_without_info_iscrowd_area_or_ids(tmp_path) -> None:
    sparse = _gt(complete=False)
    dets = _detections(0)
    expected = coco_evaluate(_gt(), dets)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(sparse))
    for gt in (sparse, path, str(path)):
        assert coco_evaluate(gt, dets) == pytest.approx(expected, abs=1e-12)
    assert (
        "info" not in sparse and "area" not in sparse["annotations"][0]
    )  # caller's dict untouched
    coco = load_coco(sparse)
    assert len({a["id"] for a in coco.dataset["annotations"]}) == len(sparse["annotations"])


def test_evaluation_is_quiet_and_leaves_detections_alone(capsys, caplog) -> None:
    dets = _detections(0)
    before = copy.deepcopy(dets)
    with caplog.at_level(logging.DEBUG, logger="nas_neck.detect.evaluate"):
        coco_evaluate(_gt(), dets)
    assert capsys.readouterr().out == ""
    assert "Accumulating evaluation results" in caplog.text
    assert dets == before


def test_unknown_images_are_an_error() -> None:
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_evaluate(_gt(), [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_evaluate(_gt(), [], image_ids=[1, 99])


def test_letterbox_back_mapping() -> None:
    pred = {
        "boxes": torch.tensor([[30.0, 40.0, 50.0, 80.0], [0.0, 0.0, 600.0, 25.0]]),
        "scores": torch.tensor([0.9, 0.4]),
        "labels": torch.tensor([1, 0]),
    }
    results = to_coco_results([pred], [7], [(0.5, 10.0, 20.0)], category_ids=[1, 3])
    assert results[0] == {
        "image_id": 7,
        "category_id": 3,
        "bbox": [40.0, 40.0, 40.0, 80.0],
        "score": pytest.approx(0.9),
    }
    assert results[1]["bbox"] == [-20.0, -40.0, 1200.0, 50.0]
    clipped = to_coco_results([pred], [7], [(0.5, 10.0, 20.0)], [1, 3], image_sizes=[(100, 1000)])
    assert clipped[1]["bbox"] == [0.0, 0.0, 1000.0, 10.0]


def test_letterboxed_ground_truth_round_trips_to_perfect_map() -> None:
    gt = _gt()
    letterbox = {1: (2.0, 0.0, 64.0), 2: (0.75, 16.0, 0.0), 5: (1.0, 0.0, 0.0)}
    categories = [1, 3]
    predictions = []
    for image_id, boxes in _BOXES.items():
        scale, pad_x, pad_y = letterbox[image_id]
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h, _ in boxes], dtype=torch.float64)
        xyxy = xyxy * scale + torch.tensor([pad_x, pad_y, pad_x, pad_y])
        labels = torch.tensor([categories.index(c) for *_, c in boxes])
        predictions.append(
            {"boxes": xyxy, "scores": torch.linspace(0.9, 0.5, len(boxes)), "labels": labels}
        )
    results = to_coco_results(predictions, list(_BOXES), [letterbox[i] for i in _BOXES], categories)
    metrics = coco_evaluate(gt, results)
    assert metrics == pytest.approx(dict.fromkeys(METRIC_NAMES, 1.0))


def test_count_mae() -> None:
    gt = _gt()
    gt["annotations"].append(
        {
            "id": 99,
            "image_id": 1,
            "category_id": 1,
            "bbox": [0, 0, 50, 50],
            "area": 2500,
            "iscrowd": 1,
        }
    )  # crowd regions are not counted
    det = {"category_id": 1, "bbox": [0, 0, 1, 1]}
    dets = [det | {"image_id": 1, "score": s} for s in (0.9, 0.8, 0.7, 0.6, 0.2)]  # 4 vs 4 GT
    dets += [det | {"image_id": 2, "score": 0.5}]  # 1 vs 3
    # image 5: 0 vs 4
    assert count_mae(gt, dets, score_thresh=0.5) == pytest.approx((0 + 2 + 4) / 3)
    assert count_mae(gt, dets, score_thresh=0.5, image_ids=[1, 2]) == pytest.approx(1.0)
    assert count_mae(gt, dets, score_thresh=0.1) == pytest.approx((1 + 2 + 4) / 3)
