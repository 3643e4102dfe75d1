"""Decoding: thresholds, class-aware NMS, clipping, top-k limits."""

from __future__ import annotations

import torch

from nas_neck.detect import HeadOutput, anchor_points, decode


def _outputs(ltrb: torch.Tensor, probs: torch.Tensor, image_size=None) -> HeadOutput:
    """Outputs of a 1-level stride-8 head over a 4x4 grid (a 32 px image)."""
    points, strides = anchor_points([(4, 4)], [8])
    logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
    return HeadOutput(logits, ltrb, points, strides, [(4, 4)], image_size)


def _uniform(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """16 px boxes (neighbours overlap by IoU 1/3) and zero scores for 2 classes."""
    return torch.full((batch, 16, 4), 8.0), torch.zeros(batch, 16, 2)


def test_overlapping_boxes_of_different_classes_both_survive() -> None:
    ltrb, probs = _uniform()
    probs[0, 5, 0] = 0.9  # point (12, 12), class 0
    probs[0, 6, 1] = 0.8  # point (20, 12): its box overlaps the first one by IoU 1/3 > 0.3
    (det,) = decode(_outputs(ltrb, probs), nms_iou=0.3)
    assert det["labels"].tolist() == [0, 1]
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.8]))
    expected = torch.tensor([[4.0, 4.0, 20.0, 20.0], [12.0, 4.0, 28.0, 20.0]])
    torch.testing.assert_close(det["boxes"], expected)


def test_overlapping_boxes_of_one_class_are_suppressed() -> None:
    ltrb, probs = _uniform()
    probs[0, 5, 0] = 0.9
    probs[0, 6, 0] = 0.8
    (det,) = decode(_outputs(ltrb, probs), nms_iou=0.3)
    assert det["scores"].tolist() == [torch.tensor(0.9).item()]
    (det,) = decode(_outputs(ltrb, probs), nms_iou=0.5)  # IoU 1/3 is under this threshold
    assert len(det["scores"]) == 2


def test_threshold_topk_max_det_and_batch() -> None:
    ltrb, probs = _uniform(batch=2)
    probs[0, :, 0] = torch.linspace(0.01, 0.99, 16)
    ltrb[:] = 1.0  # small boxes: nothing overlaps
    dets = decode(_outputs(ltrb, probs), score_thresh=0.5)
    assert len(dets) == 2 and len(dets[1]["scores"]) == 0
    assert len(dets[0]["scores"]) == int((probs[0, :, 0] > 0.5).sum())
    assert (dets[0]["scores"][:-1] >= dets[0]["scores"][1:]).all()
    assert len(decode(_outputs(ltrb, probs), score_thresh=0.0, max_det=5)[0]["scores"]) == 5
    top = decode(_outputs(ltrb, probs), score_thresh=0.0, pre_nms_topk=3)[0]["scores"]
    torch.testing.assert_close(top, probs[0, -3:, 0].flip(0))


def test_boxes_are_clipped_to_the_image() -> None:
    ltrb, probs = _uniform()
    probs[0, 0, 1] = 0.9  # point (4, 4), its box reaching out of the image on three sides
    ltrb[0, 0] = torch.tensor([10.0, 10.0, 40.0, 3.0])
    (det,) = decode(_outputs(ltrb, probs, image_size=(30, 32)))
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 0.0, 32.0, 7.0]]))
    (det,) = decode(_outputs(ltrb, probs), image_size=(6, 100))  # explicit size (H, W)
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 0.0, 44.0, 6.0]]))
    (det,) = decode(_outputs(ltrb, probs))  # no size known: not clipped
    torch.testing.assert_close(det["boxes"], torch.tensor([[-6.0, -6.0, 44.0, 7.0]]))
