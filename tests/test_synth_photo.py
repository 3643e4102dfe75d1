"""Photo-style synthetic plates: opt-in, deterministic, millimetre-true colonies; and the
default plates unchanged byte for byte (caches and running studies depend on them)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.data import synth
from nas_neck.data.synth import generate_synthetic, render_plate
from nas_neck.errors import DataError

# Digests of the default style taken before the photo style was added (same seeds, same sizes).
DEFAULT_PIXELS = "71f02723fd9d67ff2e007f290e9d896aff32722da09cf57c29361f6421bdd656"
DEFAULT_FILES = {
    "manifest.json": "459fc9f8a0abfb05af99a134757f0f5d5821bbd8b2933c15489e89c7310e1b30",
    "train.json": "43b9e4a445cbc5db7a044af93e2f00cab97d3959dc77131dd94e0d1872248d72",
    "val.json": "f4ec592526141e22642b8f3dafd0261e186553b741d68740feb4840aea5ec3cf",
}


def test_default_style_is_unchanged_byte_for_byte(tmp_path: Path) -> None:
    h = hashlib.sha256()
    for i in range(3):
        image, colonies = render_plate(np.random.default_rng([0, 0, i, 2]), 128)
        h.update(image.tobytes())
        h.update(json.dumps(colonies).encode())
    assert h.hexdigest() == DEFAULT_PIXELS
    paths = generate_synthetic(tmp_path / "d", n_train=3, n_val=1, size=96, seed=0, workers=1)
    for name, digest in DEFAULT_FILES.items():
        assert hashlib.sha256((paths.root / name).read_bytes()).hexdigest() == digest, name


def test_photo_style_is_deterministic_and_seeded() -> None:
    a, ca = render_plate(np.random.default_rng([4, 1]), 320, "photo")
    b, cb = render_plate(np.random.default_rng([4, 1]), 320, "photo")
    c, _ = render_plate(np.random.default_rng([4, 2]), 320, "photo")
    assert a.shape == (240, 320, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and ca == cb
    assert not np.array_equal(a, c)


def test_photo_colonies_are_one_to_five_millimetres_and_on_the_agar() -> None:
    sides, contrasts = [], []
    for i in range(4):
        rng = np.random.default_rng([11, i])
        plate = synth._PhotoPlate(np.random.default_rng([11, i]), 900)
        image, colonies = render_plate(rng, 900, "photo")
        assert colonies, "every photo plate has colonies"
        grey = image.astype(np.float32).mean(2) / 255
        for (x, y, w, h), species in colonies:
            assert species in range(len(synth.SPECIES))
            cx, cy = x + w / 2, y + h / 2
            assert math.hypot(cx - plate.cx, cy - plate.cy) < plate.r_agar
            sides.append(max(w, h) / plate.px_mm)
            if min(w, h) >= 8:
                inner = grey[int(cy) - 1 : int(cy) + 2, int(cx) - 1 : int(cx) + 2].mean()
                ring = np.concatenate([grey[max(y - 3, 0), x : x + w], grey[y + h + 2, x : x + w]])
                contrasts.append(abs(inner - np.median(ring)))
    sides = np.array(sides)
    assert sides.min() > 0.8 and sides.max() < 6.0  # 1-5 mm, lobes and the soft edge aside
    assert np.median(contrasts) > 0.05  # boxes sit on colonies, not on bare agar


def test_generate_photo_dataset_and_cli(tmp_path: Path) -> None:
    paths = generate_synthetic(tmp_path / "p", 2, 1, 160, seed=3, style="photo", workers=1)
    manifest = json.loads((paths.root / "manifest.json").read_text())
    assert manifest["style"] == "photo"
    images = json.loads(paths.train_ann.read_text())["images"]
    assert [(im["width"], im["height"]) for im in images] == [(160, 120)] * 2
    with pytest.raises(DataError, match="style"):
        generate_synthetic(tmp_path / "q", 2, 1, 160, style="oil-painting")
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        ["data", "synth", "--out", str(out), "--train", "2", "--val", "1", "--size", "96"]
        + ["--style", "photo"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["style"] == "photo"
    bad = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--style", "x"])
    assert bad.exit_code == 1 and "--style" in bad.output and "photo" in bad.output
