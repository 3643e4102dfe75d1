"""`nas-neck predict`: every input kind and image mode, empty photos, ground truth, the dish
crop, and bad input as one clear line that loses nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image
from predict_fixtures import INPUT_SIZE, NAMES, make_checkpoint, one_thread, plate, save  # noqa: F401 (autouse)
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.data.coco import read_image
from nas_neck.data.synth import _PhotoPlate, render_plate
from nas_neck.predict.dish import find_dish
from nas_neck.predict.images import Photo, read_photo

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("models")
    return {
        "eager": make_checkpoint(tmp / "eager.pt"),
        "silent": make_checkpoint(tmp / "silent.pt", eager=False),
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of one photo per image mode, and a COCO file of two of them with boxes."""
    folder = tmp_path_factory.mktemp("photos")
    img = plate()
    save(img, folder / "rgb.jpg")
    save(img, folder / "gray.png", "L")
    save(img, folder / "rgba.png", "RGBA")
    save(img, folder / "sixteen.png", "I;16")
    coco = {
        "images": [
            {"id": 7, "file_name": "rgb.jpg", "width": 160, "height": 120},
            {"id": 9, "file_name": "gray.png", "width": 160, "height": 120},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [60, 50, 10, 10]},
            {"id": 2, "image_id": 9, "category_id": 4, "bbox": [80, 40, 8, 8]},
        ],
        "categories": [{"id": 3, "name": "round"}, {"id": 4, "name": "glossy"}],
    }
    (folder / "gt.json").write_text(json.dumps(coco))
    return folder


def _invoke(args: list) -> object:
    return runner.invoke(app, ["predict", *map(str, args)], terminal_width=200)


def _counts(out: Path) -> list[dict[str, str]]:
    with open(out / "counts.csv") as f:
        return list(csv.DictReader(f))


def test_image_modes_read_like_training(photos: Path) -> None:
    for name in ("rgb.jpg", "gray.png", "rgba.png", "sixteen.png"):
        photo = read_photo(photos / name, exif=False)
        want = read_image(photos / name)
        got = photo.region(0, 0, photo.width, photo.height)
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert read_photo(photos / "sixteen.png").pixels.dtype == np.uint16  # 16 bits kept


def test_each_input_kind_writes_pictures_counts_and_detections(models, photos, tmp_path) -> None:
    runs = {
        "image": photos / "rgb.jpg",
        "folder": photos,
        "coco": photos / "gt.json",
    }
    for kind, source in runs.items():
        out = tmp_path / kind
        result = _invoke([source, "--checkpoint", models["eager"], "--out", out])
        assert result.exit_code == 0, result.output
        rows = _counts(out)
        n = {"image": 1, "folder": 4, "coco": 2}[kind]
        assert len(rows) == n and all(r["status"] == "ok" for r in rows)
        assert len(list(out.glob("*.png"))) == n
        assert all(int(r["total"]) == sum(int(r[c]) for c in NAMES) for r in rows)
        assert sum(int(r["total"]) for r in rows) > 0
        detections = json.loads((out / "detections.json").read_text())
        assert {"image_id", "category_id", "bbox", "score"} <= detections[0].keys()
        if kind == "coco":  # the COCO file's own image ids
            assert {d["image_id"] for d in detections} <= {7, 9}
        assert Image.open(next(out.glob("*.png"))).size == (160, 120)
    rows = {Path(r["image"]).name: int(r["total"]) for r in _counts(tmp_path / "folder")}
    assert set(rows) == {"rgb.jpg", "gray.png", "rgba.png", "sixteen.png"}
    assert all(n > 0 for n in rows.values())


def test_tiled_predict_and_score_threshold(models, photos, tmp_path) -> None:
    out = tmp_path / "tiled"
    args = [photos / "rgb.jpg", "--checkpoint", models["eager"], "--out", out]
    result = _invoke([*args, "--tile", "64", "--overlap", "0.25", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    strict = _invoke([*args[:-1], tmp_path / "strict", "--score-thresh", "0.99"])
    assert strict.exit_code == 0, strict.output
    assert int(_counts(tmp_path / "strict")[0]["total"]) < int(_counts(out)[0]["total"])


def test_large_whole_photos_get_a_tile_hint(models, photos, tmp_path) -> None:
    big = save(plate((1200, 900)), tmp_path / "big.jpg")  # 18x the 64 px input
    args = ["--checkpoint", models["silent"], "--out", tmp_path / "out"]
    whole = _invoke([big, *args])
    assert whole.exit_code == 0, whole.output
    assert "note: 1 of 1 photo(s) are over 4x the 64 px input" in whole.output
    assert "try --tile 256" in whole.output
    for quiet in ([big, *args, "--tile", "256"], [photos / "rgb.jpg", *args]):
        result = _invoke(quiet)
        assert result.exit_code == 0, result.output
        assert "note:" not in result.output


def test_empty_photos_give_zero_counts(models, tmp_path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    Image.new("RGB", (200, 150), (90, 90, 90)).save(folder / "grey.png")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    gt = {
        "images": [{"id": 1, "file_name": "grey.png", "width": 200, "height": 150}],
        "annotations": [],
        "categories": [{"id": 1, "name": "colony"}],
    }
    (folder / "gt.json").write_text(json.dumps(gt))
    for extra in ([], ["--tile", "64"], ["--dish-crop"]):
        out = tmp_path / f"out{len(extra)}"
        result = _invoke(
            [folder, "--checkpoint", models["silent"], "--out", out, "--gt", folder / "gt.json"]
            + ["--class-agnostic", *extra]
        )
        assert result.exit_code == 0, result.output
        assert [r["total"] for r in _counts(out)] == ["0", "0"]
        assert json.loads((out / "detections.json").read_text()) == []
        assert "count MAE" in result.output


def test_ground_truth_metrics_class_agnostic(models, photos, tmp_path) -> None:
    out = tmp_path / "gt"
    result = _invoke(
        [photos / "gt.json", "--checkpoint", models["eager"], "--out", out]
        + ["--gt", photos / "gt.json", "--class-agnostic"]
    )
    assert result.exit_code == 0, result.output
    for label in ("mAP", "AP50", "AP_small", "count MAE", "(2 photos)"):
        assert label in result.output, label
    assert {d["category_id"] for d in json.loads((out / "detections.json").read_text())} == {1}
    assert list(_counts(out)[0].keys())[-1] == "colony"
    # the model's classes are not the ground truth's: say so, and what to pass
    mismatch = _invoke(
        [photos / "gt.json", "--checkpoint", models["eager"], "--out", out, "--gt"]
        + [photos / "gt.json"]
    )
    assert mismatch.exit_code == 1 and "--class-agnostic" in mismatch.output


def test_study_trial_and_knee(models, photos, tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'nas.db'}"
    study = optuna.create_study(
        study_name="s", storage=storage, directions=["maximize", "minimize"]
    )
    study.set_metric_names(["map", "latency_ms"])
    for map_, latency in ((0.4, 9.0), (0.3, 2.0)):
        attrs = {"checkpoint": str(models["eager"]), "map": map_, "latency_ms": latency}
        study.add_trial(optuna.trial.create_trial(values=[map_, latency], user_attrs=attrs))
    for pick in (["--trial", "1"], ["--knee"]):
        out = tmp_path / pick[0].strip("-")
        result = _invoke(
            [photos / "rgb.jpg", "--study", "s", "--storage", storage, *pick, "--out", out]
        )
        assert result.exit_code == 0, result.output
        assert "of study s" in result.output and len(_counts(out)) == 1
    missing = _invoke([photos / "rgb.jpg", "--study", "s", "--storage", storage, "--trial", "5"])
    assert missing.exit_code == 1 and "has no trial 5" in missing.output


def test_dish_is_found_on_photo_plates() -> None:
    for i in range(3):
        truth = _PhotoPlate(np.random.default_rng([2, i]), 640)
        image, _ = render_plate(np.random.default_rng([2, i]), 640, "photo")
        found = find_dish(Photo(Path("p.png"), image))
        assert found is not None
        x, y, r = found
        assert abs(x - truth.cx) < 0.03 * truth.r_dish and abs(y - truth.cy) < 0.03 * truth.r_dish
        assert abs(r - truth.r_dish) < 0.06 * truth.r_dish
    flat = Photo(Path("flat.png"), np.full((300, 400, 3), 128, np.uint8))
    assert find_dish(flat) is None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tile", "64", "--overlap", "1.5"], "--overlap: expected a number in [0, 0.9], got 1.5"),
        (["--overlap", "0.3"], "--overlap only matters with --tile"),
        (["--tile", "8"], "--tile: expected an integer in [32, 8192], got 8"),
        (["--tile", "100000"], "--tile: expected an integer in [32, 8192], got 100000"),
        (["--score-thresh", "2"], "--score-thresh: expected a number in [0, 1], got 2"),
        (["--input-size", "10"], "--input-size: expected an integer in [64, 4096], got 10"),
        (["--input-size", "100000"], "--input-size: expected an integer in [64, 4096], got 100000"),
        (["--runtime", "onnx"], "--runtime only matters with --export"),
        (["--trial", "1"], "pass --study too"),
    ],
)
def test_bad_options_are_one_line(models, photos, args, needle) -> None:
    result = _invoke([photos / "rgb.jpg", "--checkpoint", models["silent"], *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output


def test_bad_sources_name_what_is_wrong(models, photos, tmp_path) -> None:
    cases = {
        "no model": ([photos / "rgb.jpg"], "pass one model"),
        "missing checkpoint": (
            [photos / "rgb.jpg", "--checkpoint", tmp_path / "nope.pt"],
            "--checkpoint: expected an existing file",
        ),
        "two models": (
            [photos / "rgb.jpg", "--checkpoint", models["silent"], "--export", photos],
            "not --checkpoint and --export",
        ),
        "missing photo": (
            [tmp_path / "none.jpg", "--checkpoint", models["silent"]],
            "no such image, folder or COCO file",
        ),
        "not an export": ([photos / "rgb.jpg", "--export", photos], "not an export folder"),
    }
    for what, (args, needle) in cases.items():
        result = _invoke(args)
        assert result.exit_code == 1 and needle in result.output, (what, result.output)
        assert "Traceback" not in result.output


def test_a_broken_photo_is_named_and_the_others_are_written(models, photos, tmp_path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    save(plate(), folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    result = _invoke([folder, "--checkpoint", models["silent"], "--out", out])
    assert result.exit_code == 1
    last = [line for line in result.output.splitlines() if line.strip()][-1]
    assert last.startswith("error:") and "broken.jpg" in last and "the others were written" in last
    assert "Traceback" not in result.output
    assert (out / "good.png").is_file()
    statuses = {Path(r["image"]).name: r["status"] for r in _counts(out)}
    assert statuses == {"broken.jpg": "unreadable", "good.png": "ok"}
    single = _invoke([folder / "broken.jpg", "--checkpoint", models["silent"], "--out", out])
    assert single.exit_code == 1 and "broken.jpg" in single.output


def test_input_size_overrides_the_training_size(models, photos, tmp_path) -> None:
    """--input-size overrides the training size; the log says which one ran."""
    out = tmp_path / "big"
    result = _invoke(
        [photos / "rgb.jpg", "--checkpoint", models["eager"], "--out", out, "--input-size", "96"]
    )
    assert result.exit_code == 0, result.output
    assert "at 96 px" in result.output
    default = _invoke([photos / "rgb.jpg", "--checkpoint", models["eager"], "--out", out])
    assert f"at {INPUT_SIZE} px" in default.output


def test_pictures_of_large_photos_put_the_boxes_on_the_colonies(monkeypatch, tmp_path) -> None:
    """A photo larger than the picture: boxes are drawn at the picture's own scale."""
    from test_tiling import _blob_detector

    import nas_neck.predict.run as run
    from nas_neck.predict import Item, PredictOptions, predict_photos
    from nas_neck.predict.outputs import class_colour

    monkeypatch.setattr(run, "PICTURE_SIDE", 120)  # 300 px shrinks by 3: 100 px
    pixels = np.full((200, 300, 3), 40, np.uint8)
    pixels[140:170, 240:270] = 230
    save(pixels, tmp_path / "big.png")

    class Model:
        input_size, category_names, category_ids = 64, ["colony"], [1]

        def detect(self, batch, *args, **kwargs):
            return _blob_detector()(batch)

    report = predict_photos(
        [Item(tmp_path / "big.png", 1, "big.png")], Model(), PredictOptions(), tmp_path / "out"
    )
    assert report.rows[0]["total"] == 1
    picture = np.asarray(Image.open(tmp_path / "out" / "big.png").convert("RGB"))
    assert picture.shape[:2] == (66, 100)
    ys, xs = np.nonzero((picture == class_colour(0)).all(2)[30:])  # below the legend
    assert abs(xs.min() - 80) <= 2 and abs(xs.max() - 90) <= 2
    assert abs(ys.min() + 30 - 47) <= 2 and abs(ys.max() + 30 - 57) <= 2
