"""Loss: finite on edge cases, and the head + loss overfit a tiny batch well enough to decode it."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from nas_neck.detect import DetectionHead, DetectionLoss, decode
from nas_neck.device import threads

STRIDES = (4, 8, 16)
SIZE = 64


class _TinyNeck(nn.Module):
    """Stand-in neck: one conv per level, different widths per level like real necks."""

    def __init__(self, in_channels: list[int], widths: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(c, w, 3, padding=1) for c, w in zip(in_channels, widths, strict=True)
        )
        self.out_levels = [2, 3, 4]
        self.out_channels = widths

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [torch.relu(conv(f)) for conv, f in zip(self.convs, features, strict=True)]


def _targets() -> list[dict[str, Tensor]]:
    return [
        {  # a 3x3 px colony next to a large one
            "boxes": torch.tensor([[26.5, 26.5, 29.5, 29.5], [4.0, 8.0, 60.0, 56.0]]),
            "labels": torch.tensor([0, 1]),
        },
        {
            "boxes": torch.tensor([[10.0, 30.0, 30.0, 50.0], [45.1, 13.2, 48.1, 16.2]]),
            "labels": torch.tensor([1, 0]),
        },
    ]


def test_overfits_tiny_batch_and_decodes_boxes() -> None:
    features = [torch.randn(2, 8, SIZE // s, SIZE // s) for s in STRIDES]
    neck = _TinyNeck([8, 8, 8], [16, 24, 32])
    head = DetectionHead(neck.out_channels, STRIDES, num_classes=2, width=32)
    model = nn.ModuleDict({"neck": neck, "head": head})
    criterion = DetectionLoss()
    targets = _targets()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    with threads(1):  # tiny tensors: a second thread only adds contention on a shared machine
        for _ in range(150):
            loss = criterion(head.predict(neck(features), (SIZE, SIZE)), targets)
            optimizer.zero_grad()
            loss["loss"].backward()
            optimizer.step()
            losses.append(loss["loss"].item())
    assert losses[-1] < 0.25 * losses[0], losses[::10]

    with torch.no_grad():
        detections = decode(head.predict(neck(features), (SIZE, SIZE)))
    for det, tgt in zip(detections, targets, strict=True):
        top = slice(0, 2 * len(tgt["boxes"]))  # the best few detections must hold every colony
        for box, label in zip(tgt["boxes"], tgt["labels"], strict=True):
            same = det["labels"][top] == label
            assert same.any()
            iou = box_iou(box[None], det["boxes"][top][same]).max()
            assert iou > 0.5, (box, det["boxes"][top], det["scores"][top])


def test_loss_without_objects_is_finite_and_backpropagates() -> None:
    head = DetectionHead([8, 8], (8, 16), num_classes=3, width=16)
    features = [torch.randn(2, 8, 6, 6), torch.randn(2, 8, 3, 3)]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    out = DetectionLoss()(head.predict(features), [empty, empty])
    assert set(out) == {"loss", "loss_cls", "loss_box", "loss_l1", "num_pos"}
    assert out["num_pos"].item() == 0
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    out["loss"].backward()
    assert head.cls_pred.weight.grad is not None


def test_loss_counts_positives_for_every_image() -> None:
    head = DetectionHead([8], (8,), num_classes=1, width=16)
    features = [torch.randn(2, 8, 8, 8)]
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    out = DetectionLoss()(head.predict(features), targets)
    assert 1 <= out["num_pos"].item() <= 10  # top-k = 10 of the 25 points inside
    assert out["loss_box"].item() > 0
