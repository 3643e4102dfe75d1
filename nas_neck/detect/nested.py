"""Nested duplicates: one colony detected whole and again as a part inside itself (a post-process
of `nas-neck predict` and of the exported `detector.py`, which gets a copy of `nested_keep`).

The decoder's NMS compares boxes by IoU, and a box of half the side inside another has an IoU of
0.25, so both survive; on dense photo-style plates these nested pairs are most of what a count
over-counts (study 8 of experiments/RESULTS.md). Colonies are round and do not grow inside one
another, so each box is read as the disc inscribed in it (centre of the box, radius a quarter of
width plus height), and a box is dropped when at least `overlap` of the smaller disc lies inside
the disc of a box that scores higher. Boxes rather than discs would not do: a small colony
touching a large one diagonally sits inside the large one's box, but its disc does not overlap.
Torch only, so the exported detector can carry a copy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["disc_overlap", "nested_keep"]


def disc_overlap(box: Tensor, others: Tensor) -> Tensor:
    """Fraction of the smaller disc inside the other, between `box` (4,) and each of `others`
    (N, 4), all xyxy; 0 for discs that do not meet, 1 for one inside the other."""
    c0, r0 = _disc(box[None])
    c1, r1 = _disc(others)
    return _fraction((c1 - c0).norm(dim=1), r0, r1)


def nested_keep(
    boxes: Tensor, scores: Tensor, labels: Tensor, overlap: float, agnostic: bool
) -> Tensor:
    """Which of the xyxy `boxes` stay (a bool mask): not those whose disc lies at least `overlap`
    inside the disc of a kept box that scores higher (of the same label unless `agnostic`);
    `overlap` 0 keeps every box."""
    n = len(scores)
    alive = torch.ones(n, dtype=torch.bool)
    if overlap <= 0 or n < 2:
        return alive
    centre, radius = _disc(boxes.double().cpu())
    labels = labels.cpu()
    order = torch.argsort(scores.cpu(), descending=True, stable=True)
    for rank in range(n - 1):
        i = order[rank]
        if not alive[i]:
            continue
        rest = order[rank + 1 :]
        rest = rest[alive[rest]]
        if not agnostic:
            rest = rest[labels[rest] == labels[i]]
        d = (centre[rest] - centre[i]).norm(dim=1)
        near = d < radius[rest] + radius[i]  # discs that meet: the others overlap by 0
        if near.any():
            rest, d = rest[near], d[near]
            alive[rest[_fraction(d, radius[i], radius[rest]) >= overlap]] = False
    return alive


def _disc(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Centres (N, 2) and radii (N,) of the discs inscribed in xyxy `boxes`."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    radius = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).sum(1) / 4
    return centre, radius


def _fraction(d: Tensor, r0: Tensor, r1: Tensor) -> Tensor:
    """Fraction of the smaller of discs of radii `r0` and `r1` at centre distance `d` that lies
    inside the larger."""
    small, big = torch.minimum(r0, r1), torch.maximum(r0, r1)
    disc = math.pi * small**2
    area = torch.where(d <= big - small, disc, _lens_area(d, small, big))
    area = torch.where(d >= small + big, torch.zeros_like(area), area)
    return area / disc.clamp(min=1e-12)


def _lens_area(d: Tensor, r: Tensor, s: Tensor) -> Tensor:
    """Area where discs of radii `r` and `s` at centre distance `d` overlap (valid where they
    cross: |r - s| < d < r + s; other entries are finite but meaningless)."""
    d = d.clamp(min=1e-12)
    a = ((d**2 + r**2 - s**2) / (2 * d * r.clamp(min=1e-12))).clamp(-1, 1)
    b = ((d**2 + s**2 - r**2) / (2 * d * s.clamp(min=1e-12))).clamp(-1, 1)
    k = ((-d + r + s) * (d + r - s) * (d - r + s) * (d + r + s)).clamp(min=0)
    return r**2 * torch.arccos(a) + s**2 * torch.arccos(b) - 0.5 * k.sqrt()
