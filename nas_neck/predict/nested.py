"""Nested duplicates: one colony detected whole and again as a part inside itself.

The decoder's NMS compares boxes by IoU, and a box of half the side inside another has an IoU of
0.25, so both survive; on dense photo-style plates these nested pairs are most of what a count
over-counts (study 8 of experiments/RESULTS.md). Colonies are round and do not grow inside one
another, so each box is read as the disc inscribed in it (centre of the box, radius a quarter of
width plus height), and a box is dropped when at least `overlap` of the smaller disc lies inside
the disc of a box that scores higher. Boxes rather than discs would not do: a small colony
touching a large one diagonally sits inside the large one's box, but its disc does not overlap.
"""

from __future__ import annotations

import numpy as np

from nas_neck.predict.tiling import Detections

__all__ = ["drop_nested", "disc_overlap"]


def disc_overlap(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Fraction of the smaller disc inside the other, between `box` (4,) and each of `others`
    (N, 4), all xyxy; 0 for discs that do not meet, 1 for one inside the other."""
    c0, r0 = _disc(box[None])
    c1, r1 = _disc(others)
    d = np.hypot(*(c1 - c0).T)
    small, big = np.minimum(r0, r1), np.maximum(r0, r1)
    lens = _lens_area(d, small, big)
    inside = d <= big - small
    area = np.where(inside, np.pi * small**2, np.where(d >= small + big, 0.0, lens))
    return area / np.maximum(np.pi * small**2, 1e-12)


def drop_nested(found: Detections, overlap: float, agnostic: bool = True) -> Detections:
    """`found` without the boxes whose disc lies at least `overlap` inside a higher-scoring box's
    disc (of the same label unless `agnostic`); `overlap` 0 keeps every box. Order is kept."""
    n = len(found)
    if overlap <= 0 or n < 2:
        return found
    boxes = found.boxes.astype(np.float64)
    order = np.argsort(-found.scores, kind="stable")
    alive = np.ones(n, bool)
    for rank, i in enumerate(order[:-1]):
        if not alive[i]:
            continue
        rest = order[rank + 1 :]
        rest = rest[alive[rest]]
        if not agnostic:
            rest = rest[found.labels[rest] == found.labels[i]]
        if rest.size:
            alive[rest[disc_overlap(boxes[i], boxes[rest]) >= overlap]] = False
    return Detections(found.boxes[alive], found.scores[alive], found.labels[alive])


def _disc(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, 2) and radii (N,) of the discs inscribed in xyxy `boxes`."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    radius = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).sum(1) / 4
    return centre, radius


def _lens_area(d: np.ndarray, r: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Area where discs of radii `r` and `s` at centre distance `d` overlap (valid where they
    cross: |r - s| < d < r + s; other entries are finite but meaningless)."""
    d = np.maximum(d, 1e-12)
    a = np.clip((d**2 + r**2 - s**2) / (2 * d * np.maximum(r, 1e-12)), -1, 1)
    b = np.clip((d**2 + s**2 - r**2) / (2 * d * np.maximum(s, 1e-12)), -1, 1)
    k = np.clip((-d + r + s) * (d + r - s) * (d - r + s) * (d + r + s), 0, None)
    return r**2 * np.arccos(a) + s**2 * np.arccos(b) - 0.5 * np.sqrt(k)
