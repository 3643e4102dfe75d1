"""Feature cache: exact features and view transforms, hits, invalidation, concurrency, corruption."""

import json
import multiprocessing as mp
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nas_neck.data.cache import FeatureCache
from nas_neck.data.coco import CocoDetection
from nas_neck.errors import DataError

# Heavier modules (timm, scipy) are imported inside the tests that need them: the concurrency
# test re-imports this module in two fresh processes.

SIZE = 64


class CountingBackbone(nn.Module):
    """A tiny deterministic stand-in for FrozenBackbone (same protocol) that counts its calls."""

    def __init__(self, tag: str = "a", delay: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.levels, self.strides, self.channels = [3, 4], [8, 16], [4, 6]
        self.p3 = nn.Conv2d(3, 4, 8, stride=8)
        self.p4 = nn.Conv2d(4, 6, 2, stride=2)
        self.tag, self.delay, self.calls = tag, delay, 0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        time.sleep(self.delay)
        p3 = self.p3(x)
        return [p3, self.p4(p3)]

    def fingerprint(self) -> str:
        return f"counting-{self.tag}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nas_neck.data.synth import generate_synthetic

    return generate_synthetic(
        tmp_path_factory.mktemp("data") / "synth", n_train=5, n_val=1, size=SIZE, seed=0
    ).root


@pytest.fixture()
def dataset(data_dir: Path) -> CocoDetection:
    return CocoDetection(data_dir / "train.json", size=SIZE)


def _build(dataset, backbone, root: Path, views=(0,)) -> FeatureCache:
    return FeatureCache.build(
        dataset, backbone, root=root, views=views, batch_size=2, progress=False
    )


def test_features_and_targets_match_the_backbone_per_view(
    dataset: CocoDetection, tmp_path: Path
) -> None:
    backbone = CountingBackbone()
    cache = _build(dataset, backbone, tmp_path, views=(0, 1, 2, 3))
    n = len(dataset)
    assert (
        len(cache) == 4 * n
        and cache.image_ids == dataset.image_ids
        and cache.image_size == (SIZE, SIZE)
    )
    assert (cache.levels, cache.channels, cache.strides) == ([3, 4], [4, 6], [8, 16])
    image, target = dataset[2]
    with torch.no_grad():
        for position, flip in ((0, []), (1, [-1]), (2, [-2])):
            expected = backbone((image.flip(flip) if flip else image)[None])
            got = cache.features([position * n + 2])
            for g, e in zip(got, expected, strict=True):
                assert g.dtype == torch.float32
                torch.testing.assert_close(g, e, atol=2e-3, rtol=2e-3)  # fp16 storage
    boxes = target["boxes"]
    hflip = cache.targets([n + 2])[0]["boxes"]
    vflip = cache.targets([2 * n + 2])[0]["boxes"]
    torch.testing.assert_close(hflip[:, [0, 2]], SIZE - boxes[:, [2, 0]])
    torch.testing.assert_close(vflip[:, [1, 3]], SIZE - boxes[:, [3, 1]])
    rot = cache.targets([3 * n + 2])[0]["boxes"]
    torch.testing.assert_close(rot, SIZE - boxes[:, [2, 3, 0, 1]])
    assert torch.equal(cache.targets([2])[0]["labels"], target["labels"])
    assert cache.locate(3 * n + 2) == (3, 2)

    # any order, duplicates, several views at once: same as one index at a time
    order = [3 * n + 1, 0, 4, 0, n + 3, 2]
    batch = cache.features(order)
    for row, index in enumerate(order):
        for level, single in enumerate(cache.features([index])):
            assert torch.equal(batch[level][row], single[0])


def test_second_build_is_a_cache_hit(dataset: CocoDetection, tmp_path: Path) -> None:
    first = CountingBackbone()
    _build(dataset, first, tmp_path, views=(0, 1))
    assert first.calls == 2 * 3  # 5 images in batches of 2, per view
    again = CountingBackbone()
    cache = _build(dataset, again, tmp_path, views=(1, 0))
    assert again.calls == 0
    assert cache.views == [1, 0]


@pytest.mark.parametrize("change", ["size", "annotations", "image", "backbone", "view"])
def test_any_key_change_rebuilds(data_dir: Path, tmp_path: Path, change: str) -> None:
    root, work = tmp_path / "cache", tmp_path / "data"
    shutil.copytree(data_dir, work)
    dataset = CocoDetection(work / "train.json", size=SIZE)
    _build(dataset, CountingBackbone(), root)

    backbone, views = CountingBackbone(), (0,)
    if change == "size":
        dataset = CocoDetection(work / "train.json", size=SIZE + 32)
    elif change == "annotations":
        data = json.loads((work / "train.json").read_text())
        data["annotations"][0]["bbox"][2] += 1
        (work / "train.json").write_text(json.dumps(data))
        dataset = CocoDetection(work / "train.json", size=SIZE)
    elif change == "image":
        image = dataset.image_path(0)
        Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image, quality=50)
    elif change == "backbone":
        backbone = CountingBackbone(tag="b")
    else:
        views = (2,)
    _build(dataset, backbone, root, views)
    assert backbone.calls > 0
    assert len([p for p in root.iterdir() if p.is_dir()]) == 2


def _build_in_process(root: str) -> tuple[str, int]:
    data = Path(root).parent / "data"
    dataset = CocoDetection(data / "train.json", size=SIZE)
    backbone = CountingBackbone(delay=0.3)
    cache = _build(dataset, backbone, Path(root))
    return str(cache.paths[0]), backbone.calls


def test_concurrent_builds_compute_once(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(data_dir)
    root = tmp_path / "cache"
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_build_in_process, [str(root), str(root)], chunksize=1)
    (path_a, calls_a), (path_b, calls_b) = results
    assert path_a == path_b
    assert sorted([calls_a, calls_b]) == [0, 3]  # one process computed, the other waited and reused
    assert [p.name for p in root.iterdir() if p.is_dir()] == [Path(path_a).name]  # no leftovers
    cache = _build(
        CocoDetection(data_dir / "train.json", size=SIZE), counting := CountingBackbone(), root
    )
    assert counting.calls == 0 and len(cache) == 5


@pytest.mark.parametrize("damage", ["truncate", "no_marker", "missing_level"])
def test_damaged_cache_is_detected_and_rebuilt(
    dataset: CocoDetection, tmp_path: Path, damage: str
) -> None:
    cache = _build(dataset, CountingBackbone(), tmp_path)
    expected = cache.features(range(len(cache)))
    path = cache.paths[0]
    if damage == "truncate":
        level = path / "level3.npy"
        os.truncate(level, level.stat().st_size // 2)
    elif damage == "no_marker":
        (path / "COMPLETE").unlink()
    else:
        (path / "level4.npy").unlink()
    backbone = CountingBackbone()
    rebuilt = _build(dataset, backbone, tmp_path)
    assert backbone.calls > 0
    for a, b in zip(rebuilt.features(range(len(rebuilt))), expected, strict=True):
        assert torch.equal(a, b)


def test_pickles_without_the_arrays(dataset: CocoDetection, tmp_path: Path) -> None:
    cache = _build(dataset, CountingBackbone(), tmp_path)
    cache.features([0])
    blob = pickle.dumps(cache)
    assert len(blob) < 20_000
    assert torch.equal(pickle.loads(blob).features([3])[0], cache.features([3])[0])


def test_unknown_view_is_an_error(dataset: CocoDetection, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="views"):
        _build(dataset, CountingBackbone(), tmp_path, views=(7,))


def test_with_the_real_frozen_backbone(dataset: CocoDetection, tmp_path: Path) -> None:
    from nas_neck.backbone import FrozenBackbone

    backbone = FrozenBackbone(levels=(3, 4, 5))
    cache = _build(dataset, backbone, tmp_path)
    assert cache.channels == backbone.channels and cache.strides == [8, 16, 32]
    image, _ = dataset[1]
    for got, expected in zip(cache.features([1]), backbone(image[None]), strict=True):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=0.05, rtol=0.01)
