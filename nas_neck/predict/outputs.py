"""What `nas-neck predict` writes: annotated pictures, a counts CSV, COCO detections JSON.

- ``<stem>.png`` per photo: boxes coloured by class over the photo (its long side shrunk to at
  most `PICTURE_SIDE` px, so a 6000 px photo gives a picture a viewer opens), the count per
  class in the top-left corner, and the dish-crop box when one was used;
- ``counts.csv``: one row per photo (its path, COCO image id, size, status, total count and
  one column per class), counting detections scoring at least ``--score-thresh``;
- ``detections.json``: COCO result format (``image_id, category_id, bbox [x, y, w, h],
  score``) in photo pixels, with every detection down to the evaluation threshold (what
  COCO evaluation needs), so it can be scored against any ground truth later.

Every file is written to a temporary name and renamed into place, so an interrupted run never
leaves half a CSV behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from nas_neck.errors import OUT_OF_SPACE, WriteError, describe_os_error
from nas_neck.predict.tiling import Detections

__all__ = ["PICTURE_SIDE", "annotate", "class_colour", "write_counts", "write_json", "write_png"]

PICTURE_SIDE = 2400
_PALETTE = [  # colour-blind-safe (Okabe-Ito), bright enough on dark agar
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (213, 94, 0),
    (204, 121, 167),
    (0, 114, 178),
    (255, 255, 255),
]


def class_colour(label: int) -> tuple[int, int, int]:
    return _PALETTE[label % len(_PALETTE)]


def annotate(
    picture: Image.Image,
    scale: float,
    detections: Detections,
    names: Sequence[str],
    crop: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """`picture` (the photo shrunk by `scale`) with boxes coloured by class and the counts."""
    picture = picture.convert("RGB")
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 800))
    if crop is not None:
        draw.rectangle([v * scale for v in crop], outline=(160, 160, 160), width=width)
    for box, label in zip(detections.boxes.tolist(), detections.labels.tolist(), strict=True):
        x0, y0, x1, y1 = (v * scale for v in box)
        draw.rectangle(
            [x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], outline=class_colour(label), width=width
        )
    counts = [int((detections.labels == k).sum()) for k in range(len(names))]
    lines = [f"{len(detections)} colonies"]
    if len(names) > 1:
        lines += [f"{n}: {c}" for n, c in zip(names, counts, strict=True)]
    _legend(draw, lines, max(picture.size), [None] + list(range(len(names))))
    return picture


def _legend(draw: ImageDraw.ImageDraw, lines: list[str], side: int, labels: list[Any]) -> None:
    size = max(14, side // 45)
    font = _font(size)
    pad = size // 3
    height = len(lines) * (size + pad) + pad
    widest = max(draw.textlength(t, font=font) for t in lines)
    draw.rectangle([0, 0, widest + 3 * pad + size, height], fill=(0, 0, 0))
    for i, (text, label) in enumerate(zip(lines, labels, strict=False)):
        y = pad + i * (size + pad)
        colour = (255, 255, 255) if label is None else class_colour(label)
        if label is not None:
            draw.rectangle([pad, y + 2, pad + size - 4, y + size - 2], outline=colour, width=2)
        draw.text((2 * pad + size - 4, y), text, fill=colour, font=font)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def write_png(path: Path, picture: Image.Image) -> Path:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False, compress_level=3)
    return _write_bytes(path, buffer.getvalue())


def write_counts(path: Path, rows: list[dict[str, Any]], names: Sequence[str]) -> Path:
    """One row per photo: image, image_id, width, height, status, total, one column per class."""
    buffer = io.StringIO()
    columns = ["image", "image_id", "width", "height", "status", "total", *names]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return _write_bytes(path, buffer.getvalue().encode())


def write_json(path: Path, obj: Any) -> Path:
    return _write_bytes(path, (json.dumps(obj) + "\n").encode())


def _write_bytes(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        hint = "; free some space and run again" if e.errno in OUT_OF_SPACE else ""
        raise WriteError(f"{path}: cannot write it: {describe_os_error(e)}{hint}") from None
    return path
