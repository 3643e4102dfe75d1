"""AGAR -> COCO: every colony survives the round trip, the split is seeded, bad files are named."""

import json
from pathlib import Path

import pytest
from PIL import Image

from nas_neck.data.agar import convert_agar
from nas_neck.data.coco import CocoDetection, check_coco
from nas_neck.errors import DataError

CLASSES = ("E.coli", "S.aureus", "P.aeruginosa")


def _agar_folder(root: Path, n: int = 10) -> dict[str, list[dict]]:
    """n photos <i>.jpg + <i>.json, an uncountable plate, an empty plate and a JSON without photo."""
    root.mkdir()
    labels = {}
    for i in range(1, n + 1):
        w, h = 60 + i, 50 + 2 * i
        Image.new("RGB", (w, h), (i, 2 * i, 3 * i)).save(root / f"{i}.jpg")
        boxes = [
            {
                "x": j * 3,
                "y": j * 2,
                "width": 5 + j,
                "height": 4 + j,
                "class": CLASSES[(i + j) % 3],
                "id": str(j),
            }
            for j in range(i % 4 + 1)
        ]
        classes = sorted({b["class"] for b in boxes})
        (root / f"{i}.json").write_text(
            json.dumps(
                {"sample_id": i, "classes": classes, "labels": boxes, "colonies_number": len(boxes)}
            )
        )
        labels[str(i)] = boxes
    Image.new("RGB", (40, 40)).save(root / "90.jpg")
    (root / "90.json").write_text(
        json.dumps({"classes": ["E.coli"], "labels": [], "colonies_number": 300})
    )
    Image.new("RGB", (40, 40)).save(root / "91.jpg")
    (root / "91.json").write_text(json.dumps({"classes": [], "labels": [], "colonies_number": 0}))
    labels["91"] = []
    (root / "92.json").write_text(
        json.dumps(
            {
                "classes": ["E.coli"],
                "labels": [{"x": 1, "y": 1, "width": 2, "height": 2, "class": "E.coli"}],
                "colonies_number": 1,
            }
        )
    )
    return labels


def test_round_trip(tmp_path: Path) -> None:
    expected = _agar_folder(tmp_path / "agar")
    result = convert_agar(tmp_path / "agar", tmp_path / "coco", val_fraction=0.3, seed=0)
    assert result.categories == sorted(CLASSES)
    assert dict(result.skipped) == {"uncountable": 1, "missing_image": 1}
    assert (result.n_train, result.n_val) == (8, 3)

    seen = {}
    for ann_file in (result.train_ann, result.val_ann):
        assert check_coco(ann_file).ok
        data = json.loads(ann_file.read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        for im in data["images"]:
            stem = Path(im["file_name"]).stem
            assert im["id"] == int(stem)
            assert (im["width"], im["height"]) == Image.open(
                tmp_path / "agar" / im["file_name"]
            ).size
            assert (tmp_path / "coco" / "images" / im["file_name"]).is_symlink()
            assert (tmp_path / "coco" / "images" / im["file_name"]).read_bytes() == (
                tmp_path / "agar" / im["file_name"]
            ).read_bytes()
            seen[stem] = sorted(
                (a["bbox"], names[a["category_id"]])
                for a in data["annotations"]
                if a["image_id"] == im["id"]
            )
        dataset = CocoDetection(ann_file, size=64)
        assert len(dataset) == len(data["images"]) and dataset.category_names == sorted(CLASSES)
    assert seen == {
        stem: sorted(([b["x"], b["y"], b["width"], b["height"]], b["class"]) for b in boxes)
        for stem, boxes in expected.items()
    }


def test_split_is_seeded(tmp_path: Path) -> None:
    _agar_folder(tmp_path / "agar")

    def val_ids(out: str, seed: int) -> list[int]:
        result = convert_agar(
            tmp_path / "agar", tmp_path / out, val_fraction=0.3, seed=seed, copy=True
        )
        return [im["id"] for im in json.loads(result.val_ann.read_text())["images"]]

    assert val_ids("a", 0) == val_ids("b", 0)
    assert val_ids("a", 0) != val_ids("c", 1)
    copied = tmp_path / "a" / "images" / "1.jpg"
    assert copied.is_file() and not copied.is_symlink()


def test_broken_json_is_named(tmp_path: Path) -> None:
    _agar_folder(tmp_path / "agar")
    (tmp_path / "agar" / "5.json").write_text('{"labels": [}')
    with pytest.raises(DataError, match=r"5\.json: invalid JSON at line 1 column 13"):
        convert_agar(tmp_path / "agar", tmp_path / "coco")


def test_malformed_label_is_named(tmp_path: Path) -> None:
    _agar_folder(tmp_path / "agar")
    (tmp_path / "agar" / "3.json").write_text(
        json.dumps({"labels": [{"x": 1, "y": 2, "class": "E.coli"}]})
    )
    with pytest.raises(DataError, match=r"3\.json: label #0 .* needs numeric x, y, width, height"):
        convert_agar(tmp_path / "agar", tmp_path / "coco")


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        convert_agar(tmp_path / "nope", tmp_path / "coco")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no AGAR samples"):
        convert_agar(tmp_path / "empty", tmp_path / "coco")
