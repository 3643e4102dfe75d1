"""Find the petri dish in a photo, so the plate can fill the network's input (`--dish-crop`).

A plate photo is mostly bench around a round dish; cropped to the dish, a letterboxed input
spends its pixels on the agar. The dish is found as the circle whose rim has the strongest
radial brightness edge: on a copy shrunk to about 320 px, every circle of a coarse grid of
centres (the middle 40 % of the frame) and radii is scored by the mean of |gradient . radial
direction| along it, then the best one is refined twice on finer grids. A photo without a clear
rim (its best circle scores under `_MIN_CONTRAST` times the median circle) gives None, and
prediction runs on the whole photo.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates, sobel

from nas_neck.predict.images import Photo

__all__ = ["dish_region", "find_dish"]

log = logging.getLogger(__name__)

_WORK_SIDE = 320  # the long side the search runs at
_ANGLES = 96
_MIN_CONTRAST = 1.8
_MIN_SIDE = 32  # smaller photos are not searched


def find_dish(photo: Photo) -> tuple[float, float, float] | None:
    """The dish as (centre x, centre y, radius) in photo pixels, or None when no rim stands out."""
    if min(photo.width, photo.height) < _MIN_SIDE:
        return None
    factor = max(1, max(photo.width, photo.height) // _WORK_SIDE)
    small = photo.reduced(factor).mean(2)
    small = gaussian_filter(small, 1.0)
    gx, gy = sobel(small, axis=1), sobel(small, axis=0)
    h, w = small.shape
    side = min(h, w)
    cx = np.linspace(0.3 * w, 0.7 * w, 17)
    cy = np.linspace(0.3 * h, 0.7 * h, 17)
    radii = np.linspace(0.2 * side, 0.56 * side, 37)
    scores = _scores(gx, gy, cx, cy, radii)
    if not np.isfinite(scores).any():
        return None
    best = np.unravel_index(np.nanargmax(scores), scores.shape)
    contrast = scores[best] / max(float(np.nanmedian(scores)), 1e-9)
    if not np.isfinite(contrast) or contrast < _MIN_CONTRAST:
        log.info("%s: no dish rim found (contrast %.2f)", photo.path, contrast)
        return None
    x, y, r = cx[best[0]], cy[best[1]], radii[best[2]]
    for step in (0.02 * side, 0.006 * side):  # refine around the best circle
        offsets = np.linspace(-2 * step, 2 * step, 9)
        sx, sy, sr = x + offsets, y + offsets, r + offsets
        fine = _scores(gx, gy, sx, sy, sr)
        i, j, k = np.unravel_index(np.nanargmax(fine), fine.shape)
        x, y, r = sx[i], sy[j], sr[k]
    scale = photo.width / w if factor > 1 else 1.0
    return float((x + 0.5) * scale), float((y + 0.5) * scale), float(r * scale)


def dish_region(photo: Photo, margin: float = 0.04) -> tuple[int, int, int, int] | None:
    """The box around the dish (its radius plus `margin` of it), clipped to the photo; or None."""
    found = find_dish(photo)
    if found is None:
        return None
    x, y, r = found
    r *= 1 + margin
    box = (
        max(0, int(x - r)),
        max(0, int(y - r)),
        min(photo.width, int(np.ceil(x + r))),
        min(photo.height, int(np.ceil(y + r))),
    )
    log.info("%s: dish at (%.0f, %.0f), radius %.0f px: cropped to %s", photo.path, x, y, r, box)
    return box


def _scores(
    gx: np.ndarray, gy: np.ndarray, cx: np.ndarray, cy: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    """Mean |radial gradient| along every circle (cx x cy x radii); NaN for circles mostly
    outside the image."""
    theta = np.linspace(0, 2 * np.pi, _ANGLES, endpoint=False)
    ux, uy = np.cos(theta), np.sin(theta)
    xs = cx[:, None, None, None] + radii[None, None, :, None] * ux
    ys = cy[None, :, None, None] + radii[None, None, :, None] * uy
    xs, ys = np.broadcast_arrays(xs, ys)
    h, w = gx.shape
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    coords = np.stack([ys.clip(0, h - 1).ravel(), xs.clip(0, w - 1).ravel()])
    sx = map_coordinates(gx, coords, order=1).reshape(xs.shape)
    sy = map_coordinates(gy, coords, order=1).reshape(xs.shape)
    radial = np.abs(sx * ux + sy * uy) * inside
    count = inside.sum(-1)
    out = radial.sum(-1) / np.maximum(count, 1)
    out[count < 0.7 * _ANGLES] = np.nan
    return out
