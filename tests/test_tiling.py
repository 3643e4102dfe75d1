"""Sliced inference: tiles cover the photo, a colony cut by a tile border is counted once, and a
6000 x 4000 photo runs in bounded memory (tiles batched, no full-size float copy)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from nas_neck.predict.images import Photo
from nas_neck.predict.tiling import merge_tiles, sliced_detect, tile_grid, whole_detect


def _blob_detector(calls: list[int] | None = None):
    """A stand-in detector: one box per bright blob of the input (what it sees of a colony)."""

    def detect(batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        if calls is not None:
            calls.append(len(batch))
        out = []
        for image in batch:
            mask = image.mean(0).numpy() > 0.6
            labels, n = ndimage.label(mask)
            boxes = [
                [s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(labels)
            ]
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.full((n,), 0.9),
                    "labels": torch.zeros(n, dtype=torch.long),
                }
            )
        return out

    return detect


def _photo(width: int, height: int, discs: list[tuple[int, int, int]]) -> Photo:
    pixels = np.full((height, width, 3), 40, np.uint8)
    for cx, cy, r in discs:
        y0, x0 = max(cy - r, 0), max(cx - r, 0)
        yy, xx = np.ogrid[y0 : cy + r + 1, x0 : cx + r + 1]
        patch = pixels[y0 : cy + r + 1, x0 : cx + r + 1]
        patch[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 230
    return Photo(Path("plate.png"), pixels)


def test_tiles_cover_the_region_flush_with_its_edges() -> None:
    tiles = tile_grid((0, 0, 1000, 700), 300, 0.25)
    covered = np.zeros((700, 1000), bool)
    for x0, y0, x1, y1 in tiles:
        assert x1 - x0 == 300 and y1 - y0 == 300  # no tile hangs over the border
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({t[0] for t in tiles})
    assert xs[-1] == 700 and all(b - a <= 225 for a, b in zip(xs, xs[1:], strict=False))
    assert tile_grid((10, 20, 110, 70), 300, 0.2) == [(10, 20, 110, 70)]  # smaller than a tile


def test_a_colony_across_a_tile_border_is_counted_once() -> None:
    # tiles of 200 px with overlap 0.25 start at x = 0, 150, 300: the colony at x 190-210 is
    # cut by the first tile's right edge and whole in the second
    photo = _photo(500, 200, [(200, 100, 10), (60, 60, 8)])
    detect = _blob_detector()
    tiles = tile_grid((0, 0, 500, 200), 200, 0.25)
    seen = sum(len(d["scores"]) for t in tiles for d in detect(_crop(photo, t)))
    assert seen >= 3  # without merging the cut colony would be counted twice
    found = sliced_detect(photo, (0, 0, 500, 200), detect, 200, 200, 0.25, batch_size=2)
    assert len(found) == 2
    box = found.boxes[np.argmin(np.abs(found.boxes[:, 0] - 190))]
    np.testing.assert_allclose(box, [190, 90, 211, 111], atol=1.5)


def test_a_colony_larger_than_the_overlap_is_joined_from_its_parts() -> None:
    # overlap 0.1 of 200 px = 20 px; a colony 60 px across at the border is cut in both tiles
    photo = _photo(380, 200, [(190, 100, 30)])
    found = sliced_detect(photo, (0, 0, 380, 200), _blob_detector(), 200, 200, 0.1)
    assert len(found) == 1
    np.testing.assert_allclose(found.boxes[0], [160, 70, 221, 131], atol=1.5)


def test_neighbouring_colonies_in_the_overlap_stay_apart() -> None:
    boxes = np.array([[100, 10, 120, 30], [121, 10, 140, 30], [100, 10, 120, 30]], np.float32)
    merged = merge_tiles(
        boxes,
        np.array([0.9, 0.8, 0.7], np.float32),
        np.zeros(3, np.int64),
        np.array([0, 0, 1]),
        np.array([False, True, False]),
    )
    assert len(merged) == 2  # the duplicate of the first merges, its touching neighbour stays
    other_class = merge_tiles(
        boxes[[0, 2]],
        np.array([0.9, 0.7], np.float32),
        np.array([0, 1]),
        np.array([0, 1]),
        np.array([False, False]),
    )
    assert len(other_class) == 2


def test_a_6000x4000_photo_in_bounded_memory() -> None:
    discs = [(x, y, 20) for x in range(300, 6000, 700) for y in range(300, 4000, 700)]
    photo = _photo(6000, 4000, discs)  # 72 MB of uint8; a float32 copy would be 288 MB
    calls: list[int] = []
    tracemalloc.start()
    try:
        found = sliced_detect(
            photo, (0, 0, 6000, 4000), _blob_detector(calls), 128, 1024, 0.2, batch_size=4
        )
        _, sliced_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = whole_detect(photo, (0, 0, 6000, 4000), _blob_detector(), 512)
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(found) == len(discs)
    assert max(calls) <= 4 and sum(calls) == len(tile_grid((0, 0, 6000, 4000), 1024, 0.2))
    assert sliced_peak < 60e6, sliced_peak  # a batch of float tiles, not the photo
    assert whole_peak < 120e6, whole_peak  # reduced band by band before letterboxing
    assert len(whole) == len(discs)


def _crop(photo: Photo, tile: tuple[int, int, int, int]) -> torch.Tensor:
    x0, y0, x1, y1 = tile
    return torch.from_numpy(photo.region(x0, y0, x1, y1).transpose(2, 0, 1).copy())[None]
