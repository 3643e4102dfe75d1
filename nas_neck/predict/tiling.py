"""How a photo becomes network inputs (the whole image letterboxed, or overlapping tiles) and how
the tiles' boxes become one set of detections.

Whole image: the photo (or its dish crop) letterboxed to the input size exactly as training did
(`nas_neck.data.coco.letterbox`); a photo much larger than the input is first shrunk by an
integer box filter, band by band, so no full-size float copy is made (antialiased bilinear
resizing averages the same pixels).

Sliced: tiles of `tile` pixels overlapping by `overlap`, the last ones flush with the border,
each scaled by ``input_size / tile`` (the same scale for every tile, edge tiles padded with the
letterbox grey), run `batch_size` at a time so memory stays bounded by the batch, not the photo.

Merging: a colony in the overlap is seen by two or four tiles, a colony cut by a tile's edge is
seen whole by its neighbour and as a part by the tile that cuts it. `merge_tiles` keeps one box
per colony: boxes from different tiles are duplicates when their IoU is at least `iou` or, when
one of them touches an inner tile edge (truncated), when the intersection covers `ios` of the
smaller one, or when both are truncated, meet, and span the same rows (or columns) across the
cut (IoU of the two intervals at least 0.7). Whole boxes win over truncated ones, then higher
scores; a colony cut in every tile that saw it (larger than the overlap) gets the union of
its parts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nas_neck.data.coco import PAD_VALUE, letterbox
from nas_neck.predict.images import Photo

__all__ = ["Detections", "merge_tiles", "sliced_detect", "tile_grid", "whole_detect"]

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in photo pixels
DetectFn = Callable[[torch.Tensor], list[dict[str, torch.Tensor]]]
_EDGE_PX = 3.0  # input pixels: a box this close to an inner tile edge is truncated
_REDUCE_ABOVE = 2.0  # whole image: shrink by an integer factor first when this much larger
_SAME_SPAN = 0.7  # two cut parts of one colony span this much of the same rows or columns


@dataclass
class Detections:
    """Boxes (D, 4) xyxy in photo pixels, scores (D,), contiguous labels (D,), as numpy."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, score: float) -> Detections:
        return self.take(self.scores >= score)

    def take(self, keep: np.ndarray) -> Detections:
        """The detections where the boolean mask `keep` is true."""
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])


def tile_grid(region: Box, tile: int, overlap: float) -> list[Box]:
    """Tiles of side `tile` covering `region`, overlapping by `overlap` (a fraction of `tile`);
    the last row and column are flush with the region's far edges (no tile hangs over)."""
    x0, y0, x1, y1 = region
    xs = _starts(x0, x1, tile, overlap)
    ys = _starts(y0, y1, tile, overlap)
    return [(x, y, min(x + tile, x1), min(y + tile, y1)) for y in ys for x in xs]


def _starts(lo: int, hi: int, tile: int, overlap: float) -> list[int]:
    side = hi - lo
    if side <= tile:
        return [lo]
    step = max(1, int(tile * (1 - overlap)))
    n = math.ceil((side - tile) / step) + 1
    return [lo + min(i * step, side - tile) for i in range(n)]


def whole_detect(photo: Photo, region: Box, detect: DetectFn, size: int) -> Detections:
    """Detections of `region` of `photo` letterboxed to `size` as in training."""
    x0, y0, x1, y1 = region
    factor = int(max(x1 - x0, y1 - y0) / (_REDUCE_ABOVE * size))
    if factor >= 2:
        crop = Photo(photo.path, photo.pixels[y0:y1, x0:x1]).reduced(factor)
    else:
        crop, factor = photo.region(x0, y0, x1, y1), 1
    image, scale, pad_x, pad_y = letterbox(crop, size)
    pred = detect(image[None])[0]
    boxes = pred["boxes"].float().cpu().numpy().copy()
    boxes[:, 0::2] = (boxes[:, 0::2] - pad_x) / scale * factor + x0
    boxes[:, 1::2] = (boxes[:, 1::2] - pad_y) / scale * factor + y0
    boxes[:, 0::2] = boxes[:, 0::2].clip(x0, x1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(y0, y1)
    return _valid(Detections(boxes, _np(pred["scores"]), _np(pred["labels"]).astype(np.int64)))


def sliced_detect(
    photo: Photo,
    region: Box,
    detect: DetectFn,
    size: int,
    tile: int,
    overlap: float,
    batch_size: int = 8,
    iou: float = 0.5,
    ios: float = 0.6,
) -> Detections:
    """Detections of `region` of `photo` from overlapping tiles (module docstring)."""
    tiles = tile_grid(region, tile, overlap)
    scale = size / tile
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]] = []
    for start, batch in _batches(photo, tiles, size, scale, batch_size):
        for k, pred in enumerate(detect(batch)):
            i = start + k
            tx0, ty0, tx1, ty1 = tiles[i]
            boxes = pred["boxes"].float().cpu().numpy() / scale
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, tx1 - tx0) + tx0
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, ty1 - ty0) + ty0
            cut = _truncated(boxes, tiles[i], region, _EDGE_PX / scale)
            parts.append((boxes, _np(pred["scores"]), _np(pred["labels"]), cut, i))
    if not parts:
        return Detections.empty()
    boxes = np.concatenate([p[0] for p in parts]).astype(np.float32)
    scores = np.concatenate([p[1] for p in parts]).astype(np.float32)
    labels = np.concatenate([p[2] for p in parts]).astype(np.int64)
    cut = np.concatenate([p[3] for p in parts])
    tile_ids = np.concatenate([np.full(len(p[1]), p[4]) for p in parts])
    merged = merge_tiles(boxes, scores, labels, tile_ids, cut, iou=iou, ios=ios)
    log.debug(
        "%s: %d tiles, %d boxes -> %d merged", photo.path, len(tiles), len(scores), len(merged)
    )
    return _valid(merged)


def _batches(
    photo: Photo, tiles: list[Box], size: int, scale: float, batch_size: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(index of the first tile, (B, 3, size, size) inputs) for consecutive tiles."""
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        batch = torch.full((len(chunk), 3, size, size), PAD_VALUE, dtype=torch.float32)
        for k, (x0, y0, x1, y1) in enumerate(chunk):
            crop = torch.from_numpy(photo.region(x0, y0, x1, y1).transpose(2, 0, 1).copy())
            h, w = max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))
            resized = F.interpolate(
                crop[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False
            )
            batch[k, :, : min(h, size), : min(w, size)] = resized[0, :, :size, :size].clamp(0, 1)
        yield start, batch


def _truncated(boxes: np.ndarray, tile: Box, region: Box, margin: float) -> np.ndarray:
    """Whether each box touches an edge of `tile` that lies inside `region` (a cut colony)."""
    tx0, ty0, tx1, ty1 = tile
    rx0, ry0, rx1, ry1 = region
    cut = np.zeros(len(boxes), bool)
    if tx0 > rx0:
        cut |= boxes[:, 0] <= tx0 + margin
    if ty0 > ry0:
        cut |= boxes[:, 1] <= ty0 + margin
    if tx1 < rx1:
        cut |= boxes[:, 2] >= tx1 - margin
    if ty1 < ry1:
        cut |= boxes[:, 3] >= ty1 - margin
    return cut


def merge_tiles(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    tile_ids: np.ndarray,
    truncated: np.ndarray,
    iou: float = 0.5,
    ios: float = 0.6,
) -> Detections:
    """One box per colony from the boxes of several tiles (module docstring).

    Boxes of the same tile never merge (the decoder's NMS already ran there), nor boxes of
    different labels (pass one label for class-agnostic merging).
    """
    n = len(scores)
    if n == 0:
        return Detections.empty()
    boxes = np.asarray(boxes, np.float32)
    order = np.lexsort((-scores, truncated))  # whole boxes first, then by score
    alive = np.ones(n, bool)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    out_boxes, out_idx = [], []
    for i in order:
        if not alive[i]:
            continue
        alive[i] = False
        box = boxes[i].copy()
        cand = np.flatnonzero(alive & (tile_ids != tile_ids[i]) & (labels == labels[i]))
        if cand.size:
            other = boxes[cand]
            iw = np.minimum(box[2], other[:, 2]) - np.maximum(box[0], other[:, 0])
            ih = np.minimum(box[3], other[:, 3]) - np.maximum(box[1], other[:, 1])
            inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
            union = area[i] + area[cand] - inter
            smaller = np.minimum(area[i], area[cand])
            over_union = inter / np.maximum(union, 1e-9)
            over_smaller = inter / np.maximum(smaller, 1e-9)
            cut = truncated[cand] | truncated[i]
            # two parts of one colony cut in both tiles: they meet in the overlap and span the
            # same rows (or columns) across the cut
            both = truncated[cand] & truncated[i] & (inter > 0)
            rows = _overlap_1d(box[1], box[3], other[:, 1], other[:, 3])
            cols = _overlap_1d(box[0], box[2], other[:, 0], other[:, 2])
            parts = both & (np.maximum(rows, cols) >= _SAME_SPAN)
            dup = (over_union >= iou) | ((over_smaller >= ios) & cut) | parts
            same = cand[dup]
            alive[same] = False
            if truncated[i] and same.size:  # cut everywhere it was seen: join the parts
                box[:2] = np.minimum(box[:2], boxes[same, :2].min(0))
                box[2:] = np.maximum(box[2:], boxes[same, 2:].max(0))
        out_boxes.append(box)
        out_idx.append(i)
    idx = np.array(out_idx)
    return Detections(np.stack(out_boxes), scores[idx], labels[idx])


def _overlap_1d(a0: float, a1: float, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """IoU of the interval [a0, a1] with each [b0, b1]."""
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)
    return inter / np.maximum(np.maximum(a1, b1) - np.minimum(a0, b0), 1e-9)


def _valid(d: Detections) -> Detections:
    """Without boxes that clipping left with no area, sorted by score."""
    keep = (d.boxes[:, 2] > d.boxes[:, 0]) & (d.boxes[:, 3] > d.boxes[:, 1])
    order = np.argsort(-d.scores[keep], kind="stable")
    return Detections(
        d.boxes[keep][order].astype(np.float32),
        d.scores[keep][order].astype(np.float32),
        d.labels[keep][order].astype(np.int64),
    )


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
