"""COCO-format box datasets: validation with clear messages, image decoding, letterboxing.

Bad data is found before training, never deep inside it. Errors (the dataset is unusable) name
the file and the image or annotation: unreadable JSON (with the position), a missing or
unreadable image, an unknown category or image id, a malformed box. Warnings are counted and the
data repaired: a box reaching outside its image is clipped, a zero-size box is dropped.

Images of any mode (grayscale, RGBA, palette, 16-bit) and shape are read as float RGB in [0, 1]
and letterboxed to a square: scaled to fit, aspect kept, centred on a grey pad. Each image's
(scale, pad_x, pad_y) maps boxes to letterboxed pixels and predictions back to the original
image for COCO evaluation.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nas_neck.errors import DataError

__all__ = [
    "PAD_VALUE",
    "CheckReport",
    "CocoDetection",
    "Issue",
    "check_coco",
    "letterbox",
    "read_image",
    "read_json",
]

log = logging.getLogger(__name__)

PAD_VALUE = 114 / 255  # letterbox padding, the usual YOLO grey
_FORMAT = 1  # bump when decoding or letterboxing changes: feature caches keyed on it are rebuilt
_EPS = 1e-3  # boxes may overshoot the image by this much (float round-off) without a warning


@dataclass(frozen=True)
class Issue:
    """One finding of a dataset check; `code` groups findings for counting."""

    severity: Literal["error", "warning"]
    code: str
    message: str


@dataclass
class CheckReport:
    """What `check_coco` found in one annotation file."""

    ann_file: Path
    image_dir: Path
    n_images: int = 0
    n_annotations: int = 0
    categories: list[str] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> Counter[tuple[str, str]]:
        """Number of issues per (severity, code)."""
        return Counter((i.severity, i.code) for i in self.issues)

    def summary(self, limit: int = 5) -> str:
        """The errors (first `limit`) and the warning counts, one per line."""
        lines = [i.message for i in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"... and {len(self.errors) - limit} more errors")
        lines += [
            f"{n} x {code}" for (sev, code), n in sorted(self.counts().items()) if sev == "warning"
        ]
        return "\n".join(lines)


def read_json(path: str | Path) -> object:
    """Parse a JSON file; a DataError names the file and, for broken JSON, the line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"annotation file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}"
        ) from e


def read_image(path: str | Path) -> np.ndarray:
    """Decode any image as float32 RGB (H, W, 3) in [0, 1]; 16-bit data is scaled by 1/65535."""
    try:
        with Image.open(path) as im:
            im.load()
    except FileNotFoundError as e:
        raise DataError(f"image file not found: {path}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float32) / 65535.0
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
    else:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.clip(arr, 0.0, 1.0)


def letterbox(image: np.ndarray, size: int) -> tuple[torch.Tensor, float, int, int]:
    """Resize (H, W, 3) float `image` to fit `size` x `size`, keep aspect, centre it on a pad.

    Returns the (3, size, size) tensor, the scale and the left/top padding in pixels; a point
    (x, y) of the original lands at (x * scale + pad_x, y * scale + pad_y).
    """
    h, w = image.shape[:2]
    scale, pad_x, pad_y = _letterbox_params(w, h, size)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    if (nh, nw) != (h, w):
        x = F.interpolate(
            x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0, 1)
    out = torch.full((3, size, size), PAD_VALUE, dtype=torch.float32)
    out[:, pad_y : pad_y + nh, pad_x : pad_x + nw] = x[0]
    return out, scale, pad_x, pad_y


def _letterbox_params(width: int, height: int, size: int) -> tuple[float, int, int]:
    scale = size / max(width, height)
    return (
        scale,
        (size - max(1, round(width * scale))) // 2,
        (size - max(1, round(height * scale))) // 2,
    )


@dataclass
class _Parsed:
    """A validated annotation file: per-image boxes (original xyxy, repaired) and the issues."""

    report: CheckReport
    images: list[dict]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    categories: list[dict]
    clean: dict  # the dataset with repairs and COCO's required fields filled, for pycocotools


def check_coco(
    ann_file: str | Path, image_dir: str | Path | None = None, open_images: bool = True
) -> CheckReport:
    """Validate a COCO annotation file and its images; with `open_images`, decode every image.

    An unreadable or non-COCO annotation file is reported as an error issue rather than raised.
    """
    try:
        parsed = _parse(Path(ann_file), image_dir, open_images=open_images)
    except DataError as e:
        report = CheckReport(Path(ann_file), Path(image_dir or Path(ann_file).parent))
        report.issues.append(Issue("error", "bad_annotation_file", str(e)))
        return report
    return parsed.report


class CocoDetection:
    """A COCO box dataset letterboxed to `size`: ``dataset[i] -> (image, target)``.

    ``image`` is a float tensor (3, size, size) in [0, 1]; ``target`` holds ``boxes`` (M, 4) xyxy
    in letterboxed pixels, ``labels`` (M,) contiguous in 0..K-1 (``category_ids[label]`` is the
    COCO id) and ``image_id``. Crowd annotations are kept for evaluation but not in targets.

    Args:
        ann_file: COCO JSON file.
        image_dir: folder the ``file_name`` entries are relative to; default: the annotation
            file's folder, or its ``images/`` subfolder if the images are there.
        size: letterbox side in pixels.
    """

    def __init__(
        self, ann_file: str | Path, image_dir: str | Path | None = None, size: int = 384
    ) -> None:
        self.ann_file = Path(ann_file)
        self.size = int(size)
        parsed = _parse(self.ann_file, image_dir, open_images=False)
        report = parsed.report
        if not report.ok:
            raise DataError(
                f"{self.ann_file}: {len(report.errors)} error(s) in the dataset "
                f"(run `nas-neck data check {self.ann_file}` for a full report):\n{report.summary()}"
            )
        for (severity, code), n in sorted(report.counts().items()):
            if severity == "warning":
                example = next(i.message for i in report.warnings if i.code == code)
                log.warning("%s: %d x %s (e.g. %s)", self.ann_file, n, code, example)
        self.image_dir = report.image_dir
        self._images = parsed.images
        self._boxes = parsed.boxes
        self._labels = parsed.labels
        self._clean = parsed.clean
        self._coco = None
        self.image_ids: list[int] = [im["id"] for im in parsed.images]
        self.category_ids: list[int] = [c["id"] for c in parsed.categories]
        self.category_names: list[str] = [str(c["name"]) for c in parsed.categories]

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def coco(self):  # -> pycocotools.coco.COCO
        """Ground truth for COCOeval: the file's annotations in original coordinates, repaired
        like the training targets (clipped, zero-size dropped) and with info/area/iscrowd filled."""
        if self._coco is None:
            from pycocotools.coco import COCO

            coco = COCO()
            coco.dataset = self._clean
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco.createIndex()
            self._coco = coco
        return self._coco

    def __len__(self) -> int:
        return len(self._images)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self._images[i]["file_name"]

    def letterbox_params(self, i: int) -> tuple[float, int, int]:
        """(scale, pad_x, pad_y) of image `i`: original (x, y) -> (x * scale + pad_x, y * scale + pad_y)."""
        im = self._images[i]
        return _letterbox_params(im["width"], im["height"], self.size)

    def to_original(self, i: int, boxes: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Map xyxy boxes in letterboxed pixels of image `i` back to its original pixels (clipped)."""
        scale, pad_x, pad_y = self.letterbox_params(i)
        im = self._images[i]
        offset, limit = [pad_x, pad_y, pad_x, pad_y], [im["width"], im["height"]] * 2
        if isinstance(boxes, torch.Tensor):
            out = (boxes - boxes.new_tensor(offset)) / scale
            return torch.minimum(out.clamp(min=0), out.new_tensor(limit))
        return np.clip((np.asarray(boxes) - offset) / scale, 0, limit)

    def load_image(self, i: int) -> np.ndarray:
        """Image `i` in original resolution as float32 RGB (H, W, 3) in [0, 1]."""
        path, im = self.image_path(i), self._images[i]
        image = read_image(path)
        if image.shape[:2] != (im["height"], im["width"]):
            raise DataError(
                f"image {path} is {image.shape[1]}x{image.shape[0]} but {self.ann_file} says "
                f"{im['width']}x{im['height']} (image id {im['id']})"
            )
        return image

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        image, scale, pad_x, pad_y = letterbox(self.load_image(i), self.size)
        boxes = torch.from_numpy(
            self._boxes[i] * scale + np.array([pad_x, pad_y, pad_x, pad_y], np.float32)
        )
        target = {
            "boxes": boxes.float(),
            "labels": torch.from_numpy(self._labels[i]),
            "image_id": self.image_ids[i],
        }
        return image, target

    def fingerprint(self) -> str:
        """Hash of what letterboxed images and targets depend on: the annotation file's bytes,
        every image's name, size and modification time, the letterbox size and code version."""
        h = hashlib.sha256(f"coco-v{_FORMAT}|{self.size}|".encode())
        h.update(self.ann_file.read_bytes())
        for i in range(len(self)):
            path = self.image_path(i)
            try:
                st = path.stat()
            except OSError as e:
                raise DataError(f"image file not found: {path}") from e
            h.update(f"{self._images[i]['file_name']}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


def _resolve_image_dir(ann_file: Path, images: list[dict], image_dir: str | Path | None) -> Path:
    if image_dir is not None:
        return Path(image_dir)
    candidates = [ann_file.parent, ann_file.parent / "images"]
    first = next(
        (im.get("file_name") for im in images if isinstance(im.get("file_name"), str)), None
    )
    for folder in candidates:
        if first is not None and (folder / first).is_file():
            return folder
    return candidates[0]


def _parse(ann_file: Path, image_dir: str | Path | None, open_images: bool) -> _Parsed:
    data = read_json(ann_file)
    src = ann_file.name
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(
            f"{ann_file}: not a COCO annotation file (no 'images' list at the top level)"
        )
    raw_images, raw_cats = data["images"], data.get("categories")
    report = CheckReport(ann_file, _resolve_image_dir(ann_file, raw_images, image_dir))
    issue = report.issues.append

    if not isinstance(raw_cats, list) or not raw_cats:
        issue(Issue("error", "no_categories", f"{src}: no 'categories' list"))
        raw_cats = []
    categories: dict[int, dict] = {}
    for c in raw_cats:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            issue(
                Issue(
                    "error",
                    "bad_category",
                    f"{src}: category {c!r} needs an integer 'id' and a 'name'",
                )
            )
        elif c["id"] in categories:
            issue(
                Issue("error", "duplicate_category", f"{src}: category id {c['id']} appears twice")
            )
        else:
            categories[c["id"]] = c
    cat_index = {cid: k for k, cid in enumerate(sorted(categories))}
    report.categories = [str(categories[cid]["name"]) for cid in sorted(categories)]

    images: list[dict] = []
    index: dict[int, int] = {}  # image id -> position, for the usable images
    declared: set[int] = set()  # every image id, usable or not
    for im in raw_images:
        if (
            not isinstance(im, dict)
            or not isinstance(im.get("id"), int)
            or not isinstance(im.get("file_name"), str)
        ):
            issue(
                Issue(
                    "error",
                    "bad_image",
                    f"{src}: image entry {im!r} needs an integer 'id' and a 'file_name'",
                )
            )
            continue
        if im["id"] in index:
            issue(Issue("error", "duplicate_image", f"{src}: image id {im['id']} appears twice"))
            continue
        declared.add(im["id"])
        im = _check_image(dict(im), report, src, open_images)
        if im is not None:
            index[im["id"]] = len(images)
            images.append(im)
    report.n_images = len(images)

    raw_anns = data.get("annotations")
    if raw_anns is None:
        issue(
            Issue(
                "warning",
                "no_annotations",
                f"{src}: no 'annotations' list: every image is background",
            )
        )
        raw_anns = []
    per_image: list[list[tuple[list[float], int]]] = [[] for _ in images]
    clean_anns = []
    for n, ann in enumerate(raw_anns):
        result = _check_annotation(ann, n, src, index, declared, images, categories, report)
        if result is None:
            continue
        box, ann = result
        clean_anns.append(ann)
        if not ann.get("iscrowd", 0):
            per_image[index[ann["image_id"]]].append((box, cat_index[ann["category_id"]]))
    report.n_annotations = len(clean_anns)

    boxes = [np.array([b for b, _ in anns], np.float32).reshape(-1, 4) for anns in per_image]
    labels = [np.array([k for _, k in anns], np.int64) for anns in per_image]
    clean = {
        "info": data.get("info") or {"description": src},
        "licenses": data.get("licenses") or [],
        "images": images,
        "annotations": clean_anns,
        "categories": [categories[cid] for cid in sorted(categories)],
    }
    return _Parsed(report, images, boxes, labels, clean["categories"], clean)


def _check_image(im: dict, report: CheckReport, src: str, open_images: bool) -> dict | None:
    """Existence (and with `open_images`, decodability and size) of one image; fills missing width/height."""
    path = report.image_dir / im["file_name"]
    where = f"image id {im['id']}, file_name {im['file_name']!r} in {src}"
    if not path.is_file():
        report.issues.append(
            Issue("error", "missing_image", f"image file not found: {path} ({where})")
        )
        return None
    sized = all(isinstance(im.get(k), int) and im[k] > 0 for k in ("width", "height"))
    if open_images or not sized:
        try:
            with Image.open(path) as pil:
                width, height = pil.size
                if open_images:
                    pil.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            report.issues.append(
                Issue("error", "unreadable_image", f"cannot read image {path}: {e} ({where})")
            )
            return None
        if not sized:
            report.issues.append(
                Issue(
                    "warning",
                    "missing_size",
                    f"{where}: no width/height, read {width}x{height} from the file",
                )
            )
            im["width"], im["height"] = width, height
        elif (width, height) != (im["width"], im["height"]):
            report.issues.append(
                Issue(
                    "error",
                    "size_mismatch",
                    f"image {path} is {width}x{height} but {src} says {im['width']}x{im['height']} ({where})",
                )
            )
            return None
    return im


def _check_annotation(
    ann: object,
    n: int,
    src: str,
    index: dict[int, int],
    declared: set[int],
    images: list[dict],
    categories: dict[int, dict],
    report: CheckReport,
) -> tuple[list[float], dict] | None:
    """One annotation: its repaired xyxy box and cleaned dict, or None (dropped, with an issue)."""
    issue = report.issues.append
    if not isinstance(ann, dict):
        issue(Issue("error", "bad_annotation", f"{src}: annotation #{n} is not an object: {ann!r}"))
        return None
    where = f"{src}: annotation {ann.get('id', f'#{n}')} (image {ann.get('image_id')})"
    if ann.get("image_id") not in index:
        if ann.get("image_id") not in declared:  # else its image has an error of its own already
            issue(
                Issue(
                    "error",
                    "unknown_image",
                    f"{where}: image_id {ann.get('image_id')!r} is not in 'images'",
                )
            )
        return None
    if ann.get("category_id") not in categories:
        issue(
            Issue(
                "error",
                "unknown_category",
                f"{where}: category_id {ann.get('category_id')!r} is not in 'categories' {sorted(categories)}",
            )
        )
        return None
    bbox = ann.get("bbox")
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
    ):
        issue(
            Issue(
                "error",
                "bad_bbox",
                f"{where}: bbox {bbox!r} is not [x, y, width, height] of 4 finite numbers",
            )
        )
        return None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        issue(Issue("warning", "zero_size_box", f"{where}: bbox {bbox} has no area: dropped"))
        return None
    im = images[index[ann["image_id"]]]
    W, H = im["width"], im["height"]
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, W), min(y + h, H)
    if x < -_EPS or y < -_EPS or x + w > W + _EPS or y + h > H + _EPS:
        if x1 <= x0 or y1 <= y0:
            issue(
                Issue(
                    "warning",
                    "box_outside",
                    f"{where}: bbox {bbox} lies outside the {W}x{H} image: dropped",
                )
            )
            return None
        issue(
            Issue(
                "warning",
                "box_outside",
                f"{where}: bbox {bbox} reaches outside the {W}x{H} image: clipped",
            )
        )
    clean = {**ann, "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": int(ann.get("iscrowd", 0) or 0)}
    clean.setdefault("area", (x1 - x0) * (y1 - y0))
    clean.setdefault("id", n + 1)
    return [x0, y0, x1, y1], clean
