"""Convert the AGAR colony dataset (one JSON per photo) to COCO with a deterministic split.

AGAR ships ``<stem>.jpg`` next to ``<stem>.json`` holding
``{"colonies_number": n, "classes": [...], "labels": [{"x", "y", "width", "height", "class"}, ...]}``.
Plates with colonies counted but no boxes (AGAR's uncountable plates) and photos without an
image file are skipped and counted: as COCO images they would teach that colonies are background.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from nas_neck.data.coco import read_json
from nas_neck.errors import DataError

__all__ = ["AgarConversion", "convert_agar"]

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


@dataclass
class AgarConversion:
    """Where the COCO files went and what was kept or skipped."""

    train_ann: Path
    val_ann: Path
    n_train: int
    n_val: int
    categories: list[str]
    skipped: Counter[str] = field(default_factory=Counter)


def convert_agar(
    src: str | Path, out: str | Path, val_fraction: float = 0.2, seed: int = 0, copy: bool = False
) -> AgarConversion:
    """Convert the AGAR folder `src` into ``out/{train,val}.json`` plus ``out/images``.

    Images are symlinked into ``out/images`` (copied with `copy`, or where links fail). The split
    is a seeded permutation of the sorted file stems, so it depends only on `seed` and the files.
    """
    src, out = Path(src), Path(out)
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not src.is_dir():
        raise DataError(f"AGAR folder not found: {src}")
    samples, skipped = [], Counter()
    for json_path in sorted(src.glob("*.json")):
        sample = _read_sample(json_path)
        image = next(
            (p for p in (json_path.with_suffix(s) for s in _suffix_variants()) if p.is_file()), None
        )
        if image is None:
            skipped["missing_image"] += 1
            log.warning("%s: no image with the same name next to it: skipped", json_path)
        elif not sample["labels"] and sample["colonies_number"]:
            skipped["uncountable"] += 1
        else:
            samples.append((json_path.stem, image, sample))
    if not samples:
        raise DataError(f"{src}: no AGAR samples (<stem>.json next to <stem>.jpg) found")
    if skipped:
        log.warning("%s: skipped %s", src, dict(skipped))

    classes = sorted(
        {label["class"] for _, _, s in samples for label in s["labels"]}
        | {c for _, _, s in samples for c in s["classes"]}
    )
    cat_ids = {name: i + 1 for i, name in enumerate(classes)}
    stems = [stem for stem, _, _ in samples]
    numeric = all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems)
    image_ids = [int(s) if numeric else i + 1 for i, s in enumerate(stems)]

    n_val = round(len(samples) * val_fraction)
    if val_fraction > 0 and len(samples) >= 2:
        n_val = min(max(n_val, 1), len(samples) - 1)
    order = np.random.default_rng(seed).permutation(len(samples))
    splits = {"val": sorted(order[:n_val].tolist()), "train": sorted(order[n_val:].tolist())}

    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for _, image, _ in samples:
        _link(image, image_dir / image.name, copy)
    for split, indices in splits.items():
        coco = _to_coco(
            [samples[i] for i in indices], [image_ids[i] for i in indices], cat_ids, src
        )
        (out / f"{split}.json").write_text(json.dumps(coco))
    log.info("converted %d AGAR photos from %s to %s (%d val)", len(samples), src, out, n_val)
    return AgarConversion(
        out / "train.json", out / "val.json", len(splits["train"]), n_val, classes, skipped
    )


def _suffix_variants() -> list[str]:
    return [s for suffix in _IMAGE_SUFFIXES for s in (suffix, suffix.upper())]


def _read_sample(path: Path) -> dict:
    """One AGAR JSON, checked: a DataError names the file and the offending label."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("labels", []), list):
        raise DataError(f"{path}: not an AGAR sample (expected an object with a 'labels' list)")
    labels = data.get("labels", [])
    for n, label in enumerate(labels):
        ok = isinstance(label, dict) and isinstance(label.get("class"), str)
        ok = ok and all(
            isinstance(label.get(k), int | float) for k in ("x", "y", "width", "height")
        )
        if not ok:
            raise DataError(
                f"{path}: label #{n} {label!r} needs numeric x, y, width, height and a 'class'"
            )
    classes = data.get("classes") or []
    count = data.get("colonies_number") or 0
    return {
        "labels": labels,
        "classes": [c for c in classes if isinstance(c, str)],
        "colonies_number": count if isinstance(count, int) else 0,
    }


def _to_coco(
    samples: list[tuple[str, Path, dict]], image_ids: list[int], cat_ids: dict[str, int], src: Path
) -> dict:
    images, annotations = [], []
    for (_, image, sample), image_id in zip(samples, image_ids, strict=True):
        try:
            with Image.open(image) as im:
                width, height = im.size
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"cannot read image {image}: {e}") from e
        images.append({"id": image_id, "file_name": image.name, "width": width, "height": height})
        for label in sample["labels"]:
            w, h = float(label["width"]), float(label["height"])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_ids[label["class"]],
                    "bbox": [float(label["x"]), float(label["y"]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"AGAR converted by nas-neck from {src}"},
        "licenses": [{"id": 1, "name": "CC BY-NC 4.0 (AGAR)"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "colony"} for n, i in cat_ids.items()],
    }


def _link(source: Path, target: Path, copy: bool) -> None:
    if target.is_symlink() or target.exists():
        target.unlink()
    if not copy:
        try:
            os.symlink(source.resolve(), target)
            return
        except OSError:
            pass  # no symlinks on this file system: copy instead
    shutil.copy2(source, target)
