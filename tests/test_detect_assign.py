"""Task-aligned assignment: every box gets a positive, tiny and clumped ones included."""

from __future__ import annotations

import pytest
import torch

from nas_neck.detect import TaskAlignedAssigner, anchor_points

LEVELS = [(8, 8), (4, 4), (2, 2)]  # a 64 px input at strides 8, 16, 32
STRIDES = [8, 16, 32]


def _assign(targets, assigner=None, half_size=6.0):
    """Assign with uniform scores and every point predicting a square box around itself."""
    points, strides = anchor_points(LEVELS, STRIDES)
    batch, n = len(targets), points.shape[0]
    scores = torch.full((batch, n, 2), 0.01)
    pred = torch.cat((points - half_size, points + half_size), 1).expand(batch, n, 4)
    return (assigner or TaskAlignedAssigner())(
        scores, pred, points, strides, LEVELS, targets
    ), points


def _target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


# With 40 px predictions the small box's only candidate is in the large box's top-k and has a
# higher IoU with it, so it is taken back for the small box by the at-least-one-positive rule.
@pytest.mark.parametrize("half_size", [6.0, 20.0])
def test_every_box_gets_a_positive_including_tiny_ones(half_size: float) -> None:
    targets = [
        _target(
            [
                [5.0, 5.0, 8.0, 8.0],  # 3x3 px, no point centre inside (points at 4, 12, ...)
                [13.0, 13.0, 14.0, 14.0],  # 1x1 px, also none
                [2.0, 2.0, 60.0, 60.0],  # large, contains both tiny boxes' nearest points
                [30.0, 30.0, 34.0, 34.0],  # small, inside the large one
            ],
            [0, 1, 1, 0],
        ),
        _target([[40.0, 8.0, 56.0, 20.0]], [1]),
    ]
    result, points = _assign(targets, half_size=half_size)
    assert result.num_gt == 5
    assert set(result.gt_index.tolist()) == {0, 1, 2, 3, 4}
    # each point is positive for at most one box
    keys = result.batch_index * points.shape[0] + result.point_index
    assert keys.unique().numel() == keys.numel()
    # the tiny boxes got the point nearest their centre over all levels: for the 3x3 box that is
    # the stride-16 point on its corner (from there the box is exactly representable)
    tiny = {
        g: points[p].tolist()
        for g, p in zip(result.gt_index.tolist(), result.point_index, strict=True)
    }
    assert tiny[0] == [8.0, 8.0]
    assert tiny[1] == [12.0, 12.0]
    # targets are the assigned boxes and labels, scores within [0, 1]
    assert torch.equal(result.labels, torch.tensor([0, 1, 1, 0, 1])[result.gt_index])
    assert ((result.scores >= 0) & (result.scores <= 1)).all()


def test_topk_keeps_the_best_aligned_points() -> None:
    points, strides = anchor_points(LEVELS, STRIDES)
    box = torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # every point is inside
    pred = torch.cat((points - 6.0, points + 6.0), 1)[None].clone()
    good = torch.tensor([5, 40, 70])  # one point per level predicts the box exactly
    pred[0, good] = box
    scores = torch.full((1, points.shape[0], 1), 0.5)
    result = TaskAlignedAssigner(topk=3)(
        scores, pred, points, strides, LEVELS, [_target(box.tolist(), [0])]
    )
    assert sorted(result.point_index.tolist()) == good.tolist()
    torch.testing.assert_close(result.scores, torch.ones(3))  # IoU 1: quality target 1


def test_quality_target_is_highest_where_the_prediction_fits() -> None:
    points, strides = anchor_points(LEVELS, STRIDES)
    box = torch.tensor([[8.0, 8.0, 24.0, 24.0]])
    pred = torch.cat((points - 4.0, points + 4.0), 1)[None].clone()
    good = int(((points - 12.0).abs().sum(1) == 0).nonzero())  # the point at (12, 12)
    pred[0, good] = box
    scores = torch.full((1, points.shape[0], 1), 0.5)
    result = TaskAlignedAssigner()(
        scores, pred, points, strides, LEVELS, [_target(box.tolist(), [0])]
    )
    assert result.point_index.numel() > 1
    best = result.scores.argmax()
    assert result.point_index[best] == good
    assert result.scores[best].item() == pytest.approx(1.0)
    assert (result.scores[torch.arange(len(result.scores)) != best] < 0.5).all()


def test_no_targets_gives_empty_assignment() -> None:
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    result, _ = _assign([empty, empty])
    assert result.num_gt == 0 and result.point_index.numel() == 0


def test_chunked_candidates_equal_unchunked() -> None:
    torch.manual_seed(1)
    xy = torch.rand(40, 2) * 56
    boxes = torch.cat((xy, xy + torch.rand(40, 2) * 30 + 1), 1).tolist()
    targets = [_target(boxes[:25], [0] * 25), _target(boxes[25:], [1] * 15)]
    whole, _ = _assign(targets)
    chunked, _ = _assign(targets, TaskAlignedAssigner(max_chunk=200))
    for name in ("batch_index", "point_index", "gt_index", "scores"):
        a, b = getattr(whole, name), getattr(chunked, name)
        order_a = torch.argsort(whole.gt_index * 1000 + whole.point_index)
        order_b = torch.argsort(chunked.gt_index * 1000 + chunked.point_index)
        torch.testing.assert_close(a[order_a], b[order_b])
