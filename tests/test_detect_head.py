"""Detection head: any level set (P2..P7), actual map sizes, prior init, scriptable forward."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from nas_neck.detect import DetectionHead, anchor_points


def _features(channels: list[int], strides: list[int], size: int, batch: int = 2):
    return [
        torch.randn(batch, c, math.ceil(size / s), math.ceil(size / s))
        for c, s in zip(channels, strides, strict=True)
    ]


@pytest.mark.parametrize(
    ("strides", "size"),
    [((4, 8, 16, 32), 64), ((8, 16, 32, 64, 128), 100)],  # P2..P5; P3..P7 at a size not /128
    ids=["P2-P5", "P3-P7"],
)
def test_head_outputs_for_any_level_set(strides: tuple[int, ...], size: int) -> None:
    channels = [8 * (i + 1) for i in range(len(strides))]  # neck widths differ per level
    head = DetectionHead(channels, strides, num_classes=3, width=16)
    features = _features(channels, list(strides), size)
    out = head.predict(features, (size, size))

    sizes = [(math.ceil(size / s),) * 2 for s in strides]
    n = sum(h * w for h, w in sizes)
    assert out.level_sizes == sizes
    assert out.cls_logits.shape == (2, n, 3)
    assert out.box_ltrb.shape == (2, n, 4)
    assert (out.box_ltrb > 0).all()
    assert out.points.shape == (n, 2) and out.strides.shape == (n,)
    assert out.strides[0] == strides[0] and out.strides[-1] == strides[-1]
    assert out.boxes().shape == (2, n, 4)


def test_anchor_points_are_cell_centres_row_major_finest_first() -> None:
    points, strides = anchor_points([(2, 3), (1, 2)], [8, 16])
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8], [24, 8]]
    assert points.tolist() == expected
    assert strides.tolist() == [8] * 6 + [16] * 2


def test_prior_probability_init() -> None:
    head = DetectionHead([8, 8], (8, 16), num_classes=2, width=16)
    scores = head.predict(_features([8, 8], [8, 16], 64)).cls_logits.sigmoid()
    assert scores.mean().item() == pytest.approx(0.01, rel=0.2)


def test_rejects_mismatched_levels() -> None:
    with pytest.raises(ValueError, match="one stride per input level"):
        DetectionHead([8, 8], (8,), num_classes=1)
    with pytest.raises(ValueError, match="finest first"):
        DetectionHead([8, 8], (16, 8), num_classes=1)
    head = DetectionHead([8, 8], (8, 16), num_classes=1)
    with pytest.raises(ValueError, match="2 levels"):
        head.predict(_features([8], [8], 32))


@pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning"
)
def test_forward_scripts_exports_and_runs_in_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    head = DetectionHead([8, 12], (8, 16), num_classes=2, width=16).eval()
    features = _features([8, 12], [8, 16], 64, batch=1)
    with torch.no_grad():
        expected = head(features)
        scripted = torch.jit.script(head)(features)
        exported = torch.export.export(head, (features,)).module()(features)
    for got in (scripted, exported):
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)

    buffer = io.BytesIO()
    torch.onnx.export(head, (features,), buffer, dynamo=False, input_names=["p3", "p4"])
    session = ort.InferenceSession(buffer.getvalue())
    outputs = session.run(None, {"p3": features[0].numpy(), "p4": features[1].numpy()})
    for a, b in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-4)
