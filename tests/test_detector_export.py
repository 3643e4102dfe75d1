"""`nas-neck export --detector`: one ONNX file and one torch module with backbone + neck + head,
equal to nas-neck's detector in ONNX Runtime, runnable without nas_neck, and `predict` from the
export folder giving the checkpoint's detections."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from predict_fixtures import NAMES, make_checkpoint, one_thread, plate, save  # noqa: F401 (autouse)
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.config import NESTED_OVERLAP
from nas_neck.data.coco import read_image
from nas_neck.detect.nested import nested_keep
from nas_neck.predict import from_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("detector")
    ckpt = make_checkpoint(tmp / "checkpoint.pt")
    out = tmp / "export"
    result = runner.invoke(
        app, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--detector"]
    )
    assert result.exit_code == 0, result.output
    image = save(plate((150, 110), seed=3), tmp / "plate.png")
    return {"checkpoint": ckpt, "export": out, "image": image, "tmp": tmp}


def test_export_writes_a_checked_detector(exported) -> None:
    out = exported["export"]
    for name in ("detector.py", "detector.safetensors", "detector.onnx", "neck.py"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "export.json").read_text())
    detector = manifest["detector"]
    assert detector["num_classes"] == 2 and manifest["categories"] == NAMES
    checks = detector["checks"]
    assert len(checks["torch_diffs"]) == 2 and len(checks["onnx_diffs"]) == 2
    assert max(checks["onnx_diffs"].values()) < 1e-3 and checks["decode_diff"] < 1e-4
    assert "detector.onnx" in (out / "README.md").read_text()


def test_onnx_detector_matches_the_torch_detector(exported) -> None:
    """At a size the export never checked, non-square, batch 3."""
    import onnxruntime as ort

    model = from_checkpoint(exported["checkpoint"], torch.device("cpu"))
    x = torch.rand(3, 3, 72, 104, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model.raw(x)
    session = ort.InferenceSession(str(exported["export"] / "detector.onnx"))
    cls, box = session.run(None, {"images": x.numpy()})
    assert cls.shape == tuple(want.cls_logits.shape) and box.shape == tuple(want.box_ltrb.shape)
    np.testing.assert_allclose(cls, want.cls_logits.numpy(), atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(box, want.box_ltrb.numpy(), atol=1e-3, rtol=1e-3)


_STANDALONE = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
try:
    import nas_neck  # noqa: F401
    print("nas_neck is importable")
except ImportError:
    pass
import numpy as np, torch
from PIL import Image
torch.set_num_threads(1)
from detector import Detector, detect_image
detector = Detector.from_pretrained()
image = np.asarray(Image.open(sys.argv[3]).convert("RGB"), np.float32) / 255
boxes, scores, labels = detect_image(detector, image)
nested = len(detect_image(detector, image, nested_overlap=0)[1]) - len(scores)
torch.save({"boxes": boxes, "scores": scores, "labels": labels, "nested": nested}, sys.argv[4])
"""


@pytest.mark.slow
def test_exported_python_runs_without_nas_neck(exported) -> None:
    tmp, out = exported["tmp"], exported["export"]
    (tmp / "standalone.py").write_text(_STANDALONE)
    site = str(Path(torch.__file__).resolve().parents[1])
    result = tmp / "standalone.pt"
    run = subprocess.run(
        [sys.executable, "-I", "-S", "standalone.py", str(out), site, str(exported["image"])]
        + [str(result)],
        cwd=tmp,
        env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "nas_neck is importable" not in run.stdout
    got = torch.load(result)
    # nas-neck's own path on the same photo: letterbox, backbone + neck + head, decode
    from nas_neck.predict.images import read_photo
    from nas_neck.predict.tiling import whole_detect

    model = from_checkpoint(exported["checkpoint"], torch.device("cpu"))
    photo = read_photo(exported["image"])
    want = whole_detect(photo, (0, 0, photo.width, photo.height), model.detect, model.input_size)
    want = want.above(0.35)
    arrays = map(torch.from_numpy, (want.boxes, want.scores, want.labels))
    want = want.take(nested_keep(*arrays, NESTED_OVERLAP, agnostic=False).numpy())
    assert got["nested"] > 0  # detect_image did drop nested duplicates, as predict does
    assert len(got["scores"]) == len(want) > 0
    np.testing.assert_allclose(got["scores"].numpy(), want.scores, atol=1e-4)
    np.testing.assert_allclose(got["boxes"].numpy(), want.boxes, atol=1e-2)
    np.testing.assert_array_equal(got["labels"].numpy(), want.labels)
    assert read_image(exported["image"]).shape == (110, 150, 3)


def test_predict_from_the_export_folder_matches_the_checkpoint(exported) -> None:
    tmp = exported["tmp"]
    plain = tmp / "neck-only"
    made = runner.invoke(
        app, ["export", "--checkpoint", str(exported["checkpoint"]), "--out", str(plain)]
    )
    assert made.exit_code == 0, made.output
    sources = {
        "checkpoint": ["--checkpoint", exported["checkpoint"]],
        "onnx": ["--export", exported["export"]],
        "torch": ["--export", exported["export"], "--runtime", "torch"],
        "neck-only": ["--export", plain],
    }
    found = {}
    for name, args in sources.items():
        out = tmp / f"pred-{name}"
        result = runner.invoke(
            app,
            ["predict", str(exported["image"]), "--out", str(out), "--tile", "96"]
            + [str(a) for a in args],
            terminal_width=200,
        )
        assert result.exit_code == 0, (name, result.output)
        found[name] = json.loads((out / "detections.json").read_text())
    reference = found.pop("checkpoint")
    assert reference
    for name, detections in found.items():
        assert len(detections) == len(reference), name
        assert _unmatched(detections, reference) == [], name
    refused = runner.invoke(
        app, ["predict", str(exported["image"]), "--export", str(plain), "--runtime", "onnx"]
    )
    assert refused.exit_code == 1 and "without --detector" in refused.output


def _unmatched(got: list[dict], want: list[dict]) -> list[dict]:
    """Detections of `want` with no equal one in `got` (same class, box within 0.05 px, score
    within 1e-3): equal sets, whatever the order of near-equal scores."""
    left = list(got)
    missing = []
    for w in want:
        for i, g in enumerate(left):
            if (
                g["category_id"] == w["category_id"]
                and abs(g["score"] - w["score"]) < 1e-3
                and np.allclose(g["bbox"], w["bbox"], atol=0.05)
            ):
                del left[i]
                break
        else:
            missing.append(w)
    return missing
