"""Synthetic colony plates: deterministic, valid COCO, idempotent, boxes on the colonies."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from nas_neck.data import synth
from nas_neck.data.synth import SPECIES, SyntheticDataset, generate_synthetic, render_plate
from nas_neck.errors import DataError

SIZE = 128


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return generate_synthetic(
        tmp_path_factory.mktemp("synth") / "a", n_train=8, n_val=3, size=SIZE, seed=0
    )


def test_same_seed_same_bytes_serial_or_parallel(small: SyntheticDataset, tmp_path: Path) -> None:
    again = generate_synthetic(tmp_path / "b", n_train=8, n_val=3, size=SIZE, seed=0, workers=1)
    assert _files(small.root).keys() == _files(again.root).keys()
    assert _files(small.root) == _files(again.root)


def test_other_seed_differs(small: SyntheticDataset, tmp_path: Path) -> None:
    other = generate_synthetic(tmp_path / "c", n_train=8, n_val=3, size=SIZE, seed=1)
    assert small.train_ann.read_bytes() != other.train_ann.read_bytes()
    img = "images/train_00000.jpg"
    assert (small.root / img).read_bytes() != (other.root / img).read_bytes()


def test_annotations_are_valid_coco(small: SyntheticDataset) -> None:
    for ann_file, n_images in ((small.train_ann, 8), (small.val_ann, 3)):
        data = json.loads(ann_file.read_text())
        assert {"info", "licenses", "images", "annotations", "categories"} <= data.keys()
        assert [c["name"] for c in data["categories"]] == list(SPECIES)
        coco = COCO(str(ann_file))
        assert len(coco.getImgIds()) == n_images
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
            assert ann["area"] == pytest.approx(w * h)
            assert ann["iscrowd"] == 0 and ann["category_id"] in range(1, len(SPECIES) + 1)
        for im in data["images"]:
            assert Image.open(small.image_dir / im["file_name"]).size == (SIZE, SIZE)
            assert coco.getAnnIds(imgIds=im["id"]), "every plate has colonies"


def test_boxes_lie_on_colonies() -> None:
    """Box centres differ from the agar just outside the box (an x/y mix-up would put them on agar)."""
    contrasts = []
    for i in range(4):
        image, colonies = render_plate(np.random.default_rng([5, i]), 256)
        image = image.astype(np.float32) / 255
        for (x, y, w, h), _ in colonies:
            if min(w, h) < 6:
                continue
            centre = image[y + h // 2 - 1 : y + h // 2 + 2, x + w // 2 - 1 : x + w // 2 + 2].mean(
                (0, 1)
            )
            ring = np.concatenate(
                [image[max(y - 3, 0), x : x + w], image[min(y + h + 2, 255), x : x + w]]
            )
            contrasts.append(np.abs(centre - np.median(ring, 0)).sum())
    assert len(contrasts) > 20
    assert np.median(contrasts) > 0.15


def test_colony_sizes_scale_with_image_size() -> None:
    sides = {}
    for size in (256, 512):
        boxes = [
            b for i in range(3) for b, _ in render_plate(np.random.default_rng([9, i]), size)[1]
        ]
        sides[size] = np.median([np.sqrt(w * h) for _, _, w, h in boxes])
    assert 1.6 < sides[512] / sides[256] < 2.4


def test_all_species_and_a_range_of_sizes_appear() -> None:
    found = [
        (k, w * h)
        for i in range(12)
        for (_, _, w, h), k in render_plate(np.random.default_rng([3, i]), 384)[1]
    ]
    assert {k for k, _ in found} == set(range(len(SPECIES)))
    areas = np.array([a for _, a in found])
    assert areas.min() < 8**2 and areas.max() > 32**2  # a few pixels to tens of pixels across


def test_idempotent_and_regenerates_on_new_parameters(
    small: SyntheticDataset, tmp_path: Path
) -> None:
    mtimes = {p: p.stat().st_mtime_ns for p in small.root.rglob("*") if p.is_file()}
    generate_synthetic(small.root, n_train=8, n_val=3, size=SIZE, seed=0)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    root = tmp_path / "d"
    generate_synthetic(root, n_train=8, n_val=2, size=96, seed=0)
    generate_synthetic(root, n_train=3, n_val=1, size=96, seed=0)
    assert len(list((root / "images").iterdir())) == 4  # no stale plates left over
    assert len(json.loads((root / "train.json").read_text())["images"]) == 3


def test_partial_generation_is_redone(tmp_path: Path) -> None:
    paths = generate_synthetic(tmp_path / "e", n_train=2, n_val=1, size=96, seed=0)
    (paths.image_dir / "train_00001.jpg").unlink()
    generate_synthetic(tmp_path / "e", n_train=2, n_val=1, size=96, seed=0)
    assert (paths.image_dir / "train_00001.jpg").is_file()


def test_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        generate_synthetic(tmp_path, n_train=2, n_val=1, size=96, seed=0)


def test_default_dataset_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth, "DEFAULT_TRAIN", 2)
    monkeypatch.setattr(synth, "DEFAULT_VAL", 1)
    monkeypatch.setattr(synth, "DEFAULT_SIZE", 96)
    monkeypatch.setenv("NAS_NECK_DATA", str(tmp_path))
    paths = synth.ensure_default_dataset()
    assert paths.root == tmp_path / "synthetic-colonies"
    assert len(json.loads(paths.train_ann.read_text())["images"]) == 2
