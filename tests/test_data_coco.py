"""COCO loading: each kind of bad data, image modes, letterbox round trips, evaluation-ready GT."""

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas_neck.data.coco import PAD_VALUE, CocoDetection, check_coco
from nas_neck.errors import DataError


def _write(
    root: Path, images: dict[str, Image.Image], anns: list[dict], cats=(1, 2), **extra
) -> Path:
    """A COCO file in root with the given images (file name -> PIL image) and annotations."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (name, im) in enumerate(images.items(), start=1):
        im.save(root / name)
        entries.append({"id": i, "file_name": name, "width": im.size[0], "height": im.size[1]})
    data = {
        "images": entries,
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}"} for c in cats],
    }
    data.update(extra)
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def _ann(id: int, image_id: int, bbox: list[float], category_id: int = 1) -> dict:
    return {"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox}


def _plain(w: int = 40, h: int = 30) -> Image.Image:
    return Image.new("RGB", (w, h), (20, 30, 40))


# --- bad data: one test each, the message names the file / annotation ---------------------------


def test_broken_json_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json"
    path.write_text('{"images": [\n  {"id": 1,, "file_name": "a.png"}\n]}')
    with pytest.raises(DataError, match=r"annotations\.json: invalid JSON at line 2 column 12"):
        CocoDetection(path)
    report = check_coco(path)
    assert not report.ok and report.errors[0].code == "bad_annotation_file"


def test_missing_image_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, {"a.png": _plain()}, [_ann(1, 1, [1, 1, 5, 5])])
    data = json.loads(path.read_text())
    data["images"].append({"id": 2, "file_name": "gone.png", "width": 40, "height": 30})
    data["annotations"].append(_ann(2, 2, [1, 1, 5, 5]))
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"image file not found: .*gone\.png \(image id 2"):
        CocoDetection(path)
    report = check_coco(path)
    assert [i.code for i in report.errors] == ["missing_image"]  # not also an unknown-image error


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, {"a.png": _plain()}, [_ann(1, 1, [1, 1, 5, 5])])
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    report = check_coco(path)
    assert report.errors[0].code == "unreadable_image" and "a.png" in report.errors[0].message
    dataset = CocoDetection(path)  # construction only checks existence; loading names the file
    with pytest.raises(DataError, match=r"cannot read image .*a\.png"):
        dataset[0]


def test_image_size_mismatch_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, {"a.png": _plain(40, 30)}, [])
    _plain(41, 30).save(tmp_path / "a.png")
    assert check_coco(path).errors[0].code == "size_mismatch"
    with pytest.raises(DataError, match=r"a\.png is 41x30 but .* says 40x30"):
        CocoDetection(path)[0]


def test_box_outside_is_clipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    anns = [
        _ann(1, 1, [30, 20, 20, 20]),
        _ann(2, 1, [-5, 2, 10, 4]),
        _ann(3, 1, [50, 50, 5, 5]),
        _ann(4, 1, [1, 1, 2, 2]),
    ]
    path = _write(tmp_path, {"a.png": _plain(40, 30)}, anns)
    report = check_coco(path)
    assert report.ok and report.counts()[("warning", "box_outside")] == 3
    assert any("annotation 3" in i.message and "dropped" in i.message for i in report.warnings)
    with caplog.at_level(logging.WARNING):
        dataset = CocoDetection(path, size=40)
    assert "3 x box_outside" in caplog.text
    scale, pad_x, pad_y = dataset.letterbox_params(0)
    boxes = dataset.to_original(0, dataset[0][1]["boxes"])
    torch.testing.assert_close(
        boxes, torch.tensor([[30.0, 20, 40, 30], [0, 2, 5, 6], [1, 1, 3, 3]])
    )


def test_zero_size_box_is_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    anns = [_ann(1, 1, [5, 5, 0, 4]), _ann(2, 1, [5, 5, 3, -1]), _ann(3, 1, [5, 5, 3, 3])]
    path = _write(tmp_path, {"a.png": _plain()}, anns)
    report = check_coco(path)
    assert report.counts()[("warning", "zero_size_box")] == 2
    assert "annotation 1 (image 1)" in report.warnings[0].message
    with caplog.at_level(logging.WARNING):
        dataset = CocoDetection(path)
    assert "2 x zero_size_box" in caplog.text
    assert len(dataset[0][1]["boxes"]) == 1


def test_unknown_category_is_named(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"a.png": _plain()},
        [_ann(1, 1, [1, 1, 5, 5]), _ann(7, 1, [1, 1, 5, 5], category_id=99)],
    )
    with pytest.raises(
        DataError, match=r"annotation 7 \(image 1\): category_id 99 is not in 'categories' \[1, 2\]"
    ):
        CocoDetection(path)
    assert check_coco(path).errors[0].code == "unknown_category"


def test_malformed_bbox_and_unknown_image_are_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, {"a.png": _plain()}, [_ann(1, 1, [1, 1, 5]), _ann(2, 9, [1, 1, 5, 5])])
    assert sorted(i.code for i in check_coco(path).errors) == ["bad_bbox", "unknown_image"]


# --- image modes, letterbox, round trips -------------------------------------------------------


def _with_rect(
    mode: str, size: tuple[int, int], rect: tuple[int, int, int, int]
) -> tuple[Image.Image, float]:
    """A dark image of `mode` with a bright rectangle (x, y, w, h); returns it and the bright value in [0, 1]."""
    w, h = size
    x, y, rw, rh = rect
    if mode == "I;16":
        arr = np.full((h, w), 1000, np.uint16)
        arr[y : y + rh, x : x + rw] = 40000
        return Image.fromarray(arr), 40000 / 65535
    arr = np.full((h, w, 4), 10, np.uint8)
    arr[y : y + rh, x : x + rw] = 220
    arr[..., 3] = 128  # RGBA: alpha is dropped, colour kept
    im = Image.fromarray(arr, "RGBA")
    if mode == "P":  # an adaptive palette holds both colours exactly (the web palette would dither)
        return im.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), 220 / 255
    return (im if mode == "RGBA" else im.convert(mode)), 220 / 255


@pytest.mark.parametrize(
    ("mode", "size"),
    [
        ("L", (80, 60)),
        ("RGBA", (80, 60)),
        ("I;16", (80, 60)),
        ("RGB", (101, 57)),
        ("RGB", (57, 101)),
        ("P", (33, 20)),
    ],
)
def test_image_modes_letterbox_and_round_trip(
    tmp_path: Path, mode: str, size: tuple[int, int]
) -> None:
    rect = (size[0] // 4, size[1] // 3, size[0] // 2, size[1] // 3)
    image, bright = _with_rect(mode, size, rect)
    path = _write(tmp_path, {"a.png": image}, [_ann(1, 1, list(rect))])
    if mode == "I;16":
        assert Image.open(tmp_path / "a.png").mode.startswith("I")  # really a 16-bit file
    dataset = CocoDetection(path, size=64)
    tensor, target = dataset[0]
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
    assert float(tensor.min()) >= 0 and float(tensor.max()) <= 1

    scale, pad_x, pad_y = dataset.letterbox_params(0)
    assert scale == pytest.approx(64 / max(size))
    assert (pad_x == 0) != (pad_y == 0) or size[0] == size[1]
    x, y, w, h = rect
    expected = torch.tensor(
        [[x * scale + pad_x, y * scale + pad_y, (x + w) * scale + pad_x, (y + h) * scale + pad_y]]
    )
    torch.testing.assert_close(target["boxes"], expected)
    x0, y0, x1, y1 = (int(round(v)) for v in expected[0].tolist())
    assert torch.allclose(
        tensor[:, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1], torch.tensor(bright), atol=0.02
    )
    if pad_x:
        assert torch.allclose(tensor[:, :, : pad_x - 1], torch.tensor(PAD_VALUE))
    if pad_y:
        assert torch.allclose(tensor[:, : pad_y - 1], torch.tensor(PAD_VALUE))
    back = dataset.to_original(0, target["boxes"])
    torch.testing.assert_close(back, torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32))
    np.testing.assert_allclose(
        dataset.to_original(0, target["boxes"].numpy()), back.numpy(), rtol=1e-6
    )


def test_noncontiguous_categories_and_empty_images(tmp_path: Path) -> None:
    anns = [_ann(1, 1, [1, 1, 5, 5], 12), _ann(2, 1, [2, 2, 5, 5], 3), _ann(3, 1, [3, 3, 5, 5], 7)]
    path = _write(tmp_path, {"a.png": _plain(), "b.png": _plain()}, anns, cats=(12, 3, 7))
    dataset = CocoDetection(path, size=32)
    assert dataset.category_ids == [3, 7, 12] and dataset.category_names == ["c3", "c7", "c12"]
    assert dataset[0][1]["labels"].tolist() == [2, 0, 1]
    _, empty = dataset[1]
    assert (
        empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["image_id"] == 2
    )


def test_images_folder_found_next_to_annotations(tmp_path: Path) -> None:
    _plain().save(tmp_path / "a.png")
    path = _write(tmp_path / "images", {"a.png": _plain()}, [])
    path = path.rename(tmp_path / "train.json")
    (tmp_path / "a.png").unlink()
    assert CocoDetection(path).image_dir == tmp_path / "images"


def test_ground_truth_is_evaluable_and_mapping_is_exact(tmp_path: Path) -> None:
    """Targets mapped back to original pixels score AP 1 against the file (no info/area/iscrowd in it)."""
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    images = {
        f"{i}.png": _plain(int(rng.integers(50, 120)), int(rng.integers(50, 120))) for i in range(3)
    }
    anns = []
    for i, im in enumerate(images.values(), start=1):
        for _ in range(4):
            w, h = (int(v) for v in rng.integers(4, 20, 2))
            x, y = int(rng.integers(0, im.size[0] - w)), int(rng.integers(0, im.size[1] - h))
            anns.append(_ann(len(anns) + 1, i, [x, y, w, h], int(rng.integers(1, 3))))
    path = _write(tmp_path, images, anns)
    dataset = CocoDetection(path, size=64)
    detections = []
    for i in range(len(dataset)):
        target = dataset[i][1]
        for box, label in zip(
            dataset.to_original(i, target["boxes"]).tolist(), target["labels"].tolist(), strict=True
        ):
            x0, y0, x1, y1 = box
            detections.append(
                {
                    "image_id": target["image_id"],
                    "category_id": dataset.category_ids[label],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": 1.0,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(dataset.coco, dataset.coco.loadRes(detections), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
