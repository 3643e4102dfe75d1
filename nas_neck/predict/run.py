"""`predict`: a detector over photos (one file, a folder, or the images of a COCO file), with the
pictures, counts and detections written as it goes and, given ground truth, COCO metrics.

Each photo: read (`images.read_photo`), optionally cropped to its dish (`dish.dish_region`),
detected whole (letterboxed like training) or in tiles (`tiling.sliced_detect`), mapped back
to photo pixels, rid of nested duplicates (`nas_neck.detect.nested`). A photo that cannot be read is reported by name and skipped; the others are
still predicted and written, and the report lists what was skipped.

Ground truth (a COCO file) is matched to the photos by ``file_name`` (the path relative to the
image folder, else the bare name). Photos then keep their stored pixel orientation, as the
annotations and training saw them, instead of the EXIF rotation applied otherwise.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_neck.config import NESTED_OVERLAP
from nas_neck.data.coco import read_json
from nas_neck.detect.evaluate import coco_evaluate, count_mae
from nas_neck.detect.nested import nested_keep
from nas_neck.errors import DataError, NasNeckError
from nas_neck.predict.dish import dish_region
from nas_neck.predict.images import IMAGE_SUFFIXES, read_photo
from nas_neck.predict.outputs import PICTURE_SIDE, annotate, write_counts, write_json, write_png
from nas_neck.predict.sources import AGNOSTIC_NAME, LoadedModel
from nas_neck.predict.tiling import Detections, sliced_detect, whole_detect

__all__ = ["Item", "PredictOptions", "PredictReport", "collect_inputs", "predict_photos"]

log = logging.getLogger(__name__)

EVAL_THRESH = 0.05  # detections kept for detections.json and COCO evaluation


@dataclass(frozen=True)
class Item:
    """One photo to predict: where it is, its COCO image id and name, its annotated size."""

    path: Path
    image_id: int
    file_name: str
    size: tuple[int, int] | None = None  # (width, height) a COCO file declares


@dataclass(frozen=True)
class PredictOptions:
    """How to predict (the `nas-neck predict` options)."""

    score_thresh: float = 0.35
    input_size: int | None = None  # default: the model's training input size
    agnostic: bool = False
    tile: int | None = None
    overlap: float = 0.2
    dish_crop: bool = False
    batch_size: int = 8
    max_det: int = 300  # per input (per tile when sliced)
    nested_overlap: float = NESTED_OVERLAP  # `detect.nested.nested_keep`; 0 keeps every box
    pictures: bool = True


@dataclass
class PredictReport:
    """What a run did: per-photo rows (the CSV), skipped photos, files, metrics with --gt."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    metrics: dict[str, float] | None = None
    evaluated: int = 0
    seconds: float = 0.0
    names: list[str] = field(default_factory=list)
    detections: list[dict[str, Any]] = field(default_factory=list)


def collect_inputs(source: str | Path) -> tuple[list[Item], Path | None]:
    """The photos of `source` (an image, a folder of images, or a COCO json file), sorted; and
    the COCO file when `source` is one."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(
            p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not paths:
            raise DataError(f"{source}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
        return [Item(p, i, p.name) for i, p in enumerate(paths, start=1)], None
    if not source.exists():
        raise DataError(f"{source}: no such image, folder or COCO file")
    if source.suffix.lower() == ".json":
        return _coco_items(source), source
    return [Item(source, 1, source.name)], None


def _coco_items(ann_file: Path) -> list[Item]:
    data = read_json(ann_file)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{ann_file}: not a COCO file (no 'images' list at the top level)")
    images = [im for im in data["images"] if isinstance(im, dict)]
    bad = [im for im in images if not isinstance(im.get("file_name"), str) or "id" not in im]
    if bad or not images:
        raise DataError(f"{ann_file}: every image needs an 'id' and a 'file_name' (e.g. {bad[:1]})")
    folder = _image_dir(ann_file, images[0]["file_name"])
    return [
        Item(
            folder / im["file_name"],
            int(im["id"]),
            im["file_name"],
            (im["width"], im["height"]) if "width" in im and "height" in im else None,
        )
        for im in images
    ]


def _image_dir(ann_file: Path, first: str) -> Path:
    for folder in (ann_file.parent, ann_file.parent / "images"):
        if (folder / first).is_file():
            return folder
    return ann_file.parent


def predict_photos(
    items: list[Item],
    model: LoadedModel,
    options: PredictOptions,
    out_dir: str | Path,
    gt: str | Path | None = None,
    on_photo: Callable[[int, int, str], None] | None = None,
) -> PredictReport:
    """Predict every photo in `items`, write the outputs to `out_dir` and, with `gt`, evaluate."""
    out = Path(out_dir)
    start = time.perf_counter()
    names = [AGNOSTIC_NAME] if options.agnostic else list(model.category_names)
    ids = [1] if options.agnostic else list(model.category_ids)
    truth = _ground_truth(gt, items, names, options.agnostic) if gt is not None else None
    if truth is not None:
        items = truth.items
        ids = truth.category_ids
    report = PredictReport(names=names)
    size = options.input_size or model.input_size

    def detect(batch: Any) -> list[dict]:
        thresh = min(EVAL_THRESH, options.score_thresh)
        return model.detect(batch, thresh, options.max_det, options.agnostic)

    used: set[str] = set()
    for n, item in enumerate(items):
        if on_photo is not None:
            on_photo(n, len(items), item.file_name)
        row: dict[str, Any] = {"image": str(item.path), "image_id": item.image_id}
        try:
            photo = read_photo(item.path, exif=truth is None and item.size is None)
            if item.size is not None and item.size != (photo.width, photo.height):
                raise DataError(
                    f"image {item.path} is {photo.width}x{photo.height} but its COCO entry says "
                    f"{item.size[0]}x{item.size[1]} (image id {item.image_id})"
                )
        except DataError as e:
            log.warning("skipped: %s", e)
            report.failures.append((item.path, str(e)))
            report.rows.append({**row, "status": "unreadable", "total": ""})
            continue
        region = (0, 0, photo.width, photo.height)
        crop = dish_region(photo) if options.dish_crop else None
        region = crop or region
        if options.tile:
            found = sliced_detect(
                photo, region, detect, size, options.tile, options.overlap, options.batch_size
            )
        else:
            found = whole_detect(photo, region, detect, size)
        found = found.take(_nested_keep(found, options))
        counted = found.above(options.score_thresh)
        counts = {name: int((counted.labels == k).sum()) for k, name in enumerate(names)}
        report.rows.append(
            {
                **row,
                "width": photo.width,
                "height": photo.height,
                "status": "ok" if crop is not None or not options.dish_crop else "ok, no dish",
                "total": len(counted),
                **counts,
            }
        )
        report.detections += _results(found, item.image_id, ids)
        if options.pictures:
            preview = photo.preview(PICTURE_SIDE)
            scale = preview.width / photo.width  # the preview shrinks by an integer factor
            picture = annotate(preview, scale, counted, names, crop)
            report.files.append(write_png(out / _picture_name(item.file_name, used), picture))
    report.files.append(write_counts(out / "counts.csv", report.rows, names))
    report.files.append(write_json(out / "detections.json", report.detections))
    if truth is not None:
        _evaluate(report, truth, options)
    report.seconds = time.perf_counter() - start
    return report


def _results(found: Detections, image_id: int, category_ids: list[int]) -> list[dict[str, Any]]:
    boxes = found.boxes.astype(np.float64)
    return [
        {
            "image_id": image_id,
            "category_id": int(category_ids[label]),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(score), 5),
        }
        for (x0, y0, x1, y1), score, label in zip(
            boxes.tolist(), found.scores.tolist(), found.labels.tolist(), strict=True
        )
    ]


def _nested_keep(found: Detections, options: PredictOptions) -> np.ndarray:
    """Which of `found` are not nested duplicates (`nas_neck.detect.nested`)."""
    keep = nested_keep(
        *map(torch.from_numpy, (found.boxes, found.scores, found.labels)),
        options.nested_overlap,
        options.agnostic,
    )
    return keep.numpy()


def _picture_name(file_name: str, used: set[str]) -> str:
    stem = Path(file_name).with_suffix("").as_posix().replace("/", "__")
    name, i = f"{stem}.png", 2
    while name in used or name in ("counts.csv", "detections.json"):
        name, i = f"{stem}-{i}.png", i + 1
    used.add(name)
    return name


# ---- ground truth ---------------------------------------------------------------------------
@dataclass
class _Truth:
    dataset: dict[str, Any]
    items: list[Item]  # the photos, with the ground truth's image ids
    category_ids: list[int]  # COCO id of each predicted label
    unmatched: int


def _ground_truth(gt: str | Path, items: list[Item], names: list[str], agnostic: bool) -> _Truth:
    """The ground truth of the photos: image ids by file name, categories mapped by name (all
    into one `colony` category when `agnostic`)."""
    data = read_json(gt)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"--gt {gt}: not a COCO file (no 'images' list at the top level)")
    categories = [c for c in data.get("categories") or [] if isinstance(c, dict)]
    if agnostic:
        category_ids = [1]
        annotations = [{**a, "category_id": 1} for a in data.get("annotations") or []]
        categories = [{"id": 1, "name": AGNOSTIC_NAME}]
    else:
        by_name = {str(c.get("name")).lower(): c.get("id") for c in categories}
        missing = [n for n in names if n.lower() not in by_name]
        if missing:
            raise NasNeckError(
                f"--gt {gt}: the model's classes {names} are not all among the ground truth's "
                f"{[c.get('name') for c in categories]}; pass --class-agnostic to count and score "
                "every box as one class 'colony'"
            )
        category_ids = [by_name[n.lower()] for n in names]
        annotations = list(data.get("annotations") or [])
    images = [im for im in data["images"] if isinstance(im, dict) and "file_name" in im]
    by_path = {im["file_name"]: im for im in images}
    by_base: dict[str, list[dict]] = {}
    for im in images:
        by_base.setdefault(Path(im["file_name"]).name, []).append(im)
    matched, unmatched = [], 0
    for item in items:
        im = by_path.get(item.file_name)
        if im is None and len(by_base.get(Path(item.file_name).name, [])) == 1:
            im = by_base[Path(item.file_name).name][0]
        if im is None:
            unmatched += 1
            log.warning("%s is not in --gt %s: predicted, not evaluated", item.path, gt)
            matched.append(Item(item.path, -len(matched) - 1, item.file_name, item.size))
            continue
        size = (im["width"], im["height"]) if "width" in im and "height" in im else item.size
        matched.append(Item(item.path, int(im["id"]), item.file_name, size))
    if unmatched == len(items):
        raise DataError(f"--gt {gt}: none of the photos is in it (matched by file_name)")
    dataset = {**data, "annotations": annotations, "categories": categories}
    return _Truth(dataset, matched, category_ids, unmatched)


def _evaluate(report: PredictReport, truth: _Truth, options: PredictOptions) -> None:
    failed = {str(p) for p, _ in report.failures}
    ids = sorted({i.image_id for i in truth.items if i.image_id > 0 and str(i.path) not in failed})
    if not ids:
        return
    wanted = set(ids)
    known = {im["id"] for im in truth.dataset["images"]}
    results = [d for d in report.detections if d["image_id"] in wanted and d["image_id"] in known]
    per_image = Counter(d["image_id"] for d in results)
    max_dets = max(100, max(per_image.values(), default=0))
    metrics = coco_evaluate(truth.dataset, results, image_ids=ids, max_dets=max_dets)
    metrics["count_mae"] = count_mae(truth.dataset, results, options.score_thresh, image_ids=ids)
    report.metrics = metrics
    report.evaluated = len(ids)
