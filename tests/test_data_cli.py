"""`nas-neck data` commands: synth, check (exit codes, table), convert-agar, clean user errors."""

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from nas_neck.cli.data import app

runner = CliRunner()
WIDE = {"COLUMNS": "240"}  # keep rich tables from wrapping file names


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env=WIDE)


def test_synth_then_check_ok(tmp_path: Path) -> None:
    result = _invoke(
        "synth", "--out", tmp_path / "s", "--train", 3, "--val", 1, "--size", 96, "--seed", 2
    )
    assert result.exit_code == 0, result.output
    assert "3 + 1 plates at 96 px" in result.output
    assert len(list((tmp_path / "s" / "images").glob("*.jpg"))) == 4

    result = _invoke("check", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert "train.json: 3 images" in result.output and "val.json: 1 images" in result.output
    assert "categories: ok, 0 warning(s)" in result.output


def test_check_reports_errors_and_warnings_with_exit_code_1(tmp_path: Path) -> None:
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 20, "height": 10},
            {"id": 2, "file_name": "lost.png", "width": 20, "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [15, 5, 10, 3]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 3]},
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 3]},
        ],
        "categories": [{"id": 1, "name": "colony"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    result = _invoke("check", tmp_path / "ann.json")
    assert result.exit_code == 1
    for needle in (
        "missing_image",
        "lost.png",
        "unknown_category",
        "category_id 5",
        "box_outside",
        "zero_size_box",
    ):
        assert needle in result.output, needle
    assert "Traceback" not in result.output


def test_check_with_separate_image_folder(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "pics" / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
        "annotations": [],
        "categories": [{"id": 1, "name": "c"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    assert _invoke("check", tmp_path / "ann.json").exit_code == 1
    assert _invoke("check", tmp_path / "ann.json", "--images", tmp_path / "pics").exit_code == 0


def test_user_errors_are_one_clean_line(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    result = _invoke("check", tmp_path / "bad.json")
    assert result.exit_code == 1 and "invalid JSON at line 1" in result.output

    result = _invoke("convert-agar", tmp_path / "missing", tmp_path / "out")
    assert result.exit_code == 1
    assert "error:" in result.output and "AGAR folder not found" in result.output
    assert "Traceback" not in result.output

    result = _invoke("check", tmp_path / "nothing-here")
    assert result.exit_code == 1 and "no such file or folder" in result.output


def test_convert_agar(tmp_path: Path) -> None:
    src = tmp_path / "agar"
    src.mkdir()
    for i in range(1, 6):
        Image.new("RGB", (30, 20)).save(src / f"{i}.jpg")
        label = {"x": 1, "y": 1, "width": 5, "height": 5, "class": "S.aureus"}
        (src / f"{i}.json").write_text(
            json.dumps({"classes": ["S.aureus"], "labels": [label], "colonies_number": 1})
        )
    (src / "9.jpg").write_bytes((src / "1.jpg").read_bytes())
    (src / "9.json").write_text(json.dumps({"classes": [], "labels": [], "colonies_number": 12}))
    result = _invoke("convert-agar", src, tmp_path / "out", "--val-fraction", 0.4, "--seed", 3)
    assert result.exit_code == 0, result.output
    assert "3 train + 2 val photos, 1 classes (S.aureus)" in result.output
    assert "skipped 1 photo(s): uncountable" in result.output
    assert _invoke("check", tmp_path / "out").exit_code == 0
