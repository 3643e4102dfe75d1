"""Nested duplicates: the disc overlap, the greedy drop, and `predict` applying it (the exported
detector's copy: tests/test_detector_export.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from predict_fixtures import make_checkpoint, one_thread, plate, save  # noqa: F401 (autouse)
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.detect.nested import disc_overlap, nested_keep


def _boxes(*xyxy: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(xyxy, dtype=torch.float64)


def test_disc_overlap_of_known_configurations() -> None:
    big = _boxes((0, 0, 100, 100))[0]
    got = disc_overlap(
        big,
        _boxes(
            (0, 0, 100, 100),  # the same disc
            (40, 40, 60, 60),  # a small disc at its centre
            (200, 0, 300, 100),  # far away
            (100, 0, 200, 100),  # an equal disc touching it
            (50, 0, 150, 100),  # an equal disc one radius away
        ),
    )
    lens = (2 * math.pi / 3 - math.sqrt(3) / 2) / math.pi  # equal discs, centres one radius apart
    np.testing.assert_allclose(got, [1, 1, 0, 0, lens], atol=1e-9)


def test_a_colony_touching_a_large_one_diagonally_is_not_nested() -> None:
    # radius 50 at (50, 50); a radius-5 disc touching it at 45 degrees lies inside its box
    c = 50 + 55 / math.sqrt(2)
    small = _boxes((c - 5, c - 5, c + 5, c + 5))
    assert small[0, 2] <= 100 and small[0, 3] <= 100  # box inside box: an IoS of 1
    assert disc_overlap(_boxes((0, 0, 100, 100))[0], small)[0] < 0.01


def test_nested_keep_keeps_the_higher_score_and_neighbours() -> None:
    boxes = torch.tensor(
        [
            [0, 0, 40, 40],  # a colony
            [10, 10, 30, 30],  # a part of it, lower score: dropped
            [40, 0, 80, 40],  # its touching neighbour: kept ...
            [50, 10, 70, 30],  # ... unless this part of it, scoring higher, stands for it
        ],
        dtype=torch.float32,
    )
    scores = torch.tensor([0.9, 0.5, 0.4, 0.8])
    labels = torch.tensor([0, 0, 0, 1])
    kept = nested_keep(boxes, scores, labels, 0.3, agnostic=True)
    np.testing.assert_array_equal(kept, [True, False, False, True])
    per_class = nested_keep(boxes, scores, labels, 0.3, agnostic=False)
    np.testing.assert_array_equal(per_class, [True, False, True, True])
    assert nested_keep(boxes, scores, labels, 0.0, agnostic=True).all()


def test_predict_drops_nested_boxes_and_zero_keeps_them(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "eager.pt")
    photo = save(plate(), tmp_path / "plate.jpg")
    runner = CliRunner()
    found = {}
    for value in ("0", "0.3"):
        out = tmp_path / value
        args = [photo, "--checkpoint", ckpt, "--out", out, "--nested-overlap", value]
        result = runner.invoke(app, ["predict", *map(str, args)], terminal_width=200)
        assert result.exit_code == 0, result.output
        found[value] = json.loads((out / "detections.json").read_text())

    def nested_pairs(dets: list[dict]) -> int:
        boxes = _boxes(*([x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)))
        labels = torch.tensor([d["category_id"] for d in dets])
        return sum(
            int((disc_overlap(boxes[i], boxes[i + 1 :])[labels[i + 1 :] == labels[i]] >= 0.3).sum())
            for i in range(len(dets) - 1)
        )

    assert nested_pairs(found["0"]) > 0  # the eager detector does nest boxes
    assert nested_pairs(found["0.3"]) == 0
    assert 0 < len(found["0.3"]) < len(found["0"])


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_a_bad_nested_overlap_is_one_line(tmp_path: Path, value: str) -> None:
    photo = save(plate(), tmp_path / "plate.jpg")
    result = CliRunner().invoke(app, ["predict", str(photo), "--nested-overlap", value])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"error: --nested-overlap: expected a number in [0, 1], got {value}"
    )
