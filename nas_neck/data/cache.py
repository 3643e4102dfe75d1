"""Frozen-backbone features computed once, stored as fp16 memory maps, shared by every trial.

The backbone never trains, so its features for a (dataset, backbone weights, input size,
augmentation view) never change (docs/architecture.md). `FeatureCache.build` computes them once into
``<root>/<name>-<key>/`` (one ``level<L>.npy`` per level, ``targets.npz``, ``meta.json`` and a
``COMPLETE`` marker) where the key hashes all of those inputs; every later build, in any process
on the machine, just maps the files. Builders take a file lock and write into a temporary folder
renamed into place at the end, so a second process waits and reuses, and an interrupted or
truncated cache is detected (marker, sizes) and rebuilt.

Views are fixed, deterministic augmentations, each cached separately (boxes transformed alike):
0 plain, 1 horizontal flip, 2 vertical flip, 3 rotation by 180 degrees with a colour jitter seeded
by the image index. A training cache with views (0, 1, 2) has ``3 * n_images`` entries, index
``view_position * n_images + image``; the trainer samples random batches over all of them, so
each step sees each plate in a random one of the cached orientations. Validation uses view 0.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nas_neck.errors import OUT_OF_SPACE, DataError, WriteError, describe_os_error, os_error_of

__all__ = ["VIEWS", "FeatureCache", "default_cache_root"]

log = logging.getLogger(__name__)

VIEWS = {0: "plain", 1: "hflip", 2: "vflip", 3: "rot180-jitter"}
_FORMAT = 1  # bump when the layout or the view transforms change
_FP16_MAX = 65504.0


class _Dataset(Protocol):
    size: int
    image_ids: list[int]

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]: ...
    def fingerprint(self) -> str: ...


class _Backbone(Protocol):
    levels: list[int]
    channels: list[int]
    strides: list[int]

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]: ...
    def fingerprint(self) -> str: ...


def default_cache_root() -> Path:
    """``$NAS_NECK_CACHE`` or ``./.nas-neck-cache``."""
    return Path(os.environ.get("NAS_NECK_CACHE", ".nas-neck-cache"))


class FeatureCache:
    """Cached backbone features and targets of one dataset split, over one or more views."""

    def __init__(self, paths: Sequence[Path], views: Sequence[int]) -> None:
        """Open finished cache folders (one per view); use `build` to create them."""
        self.paths = list(paths)
        self.views = list(views)
        meta = json.loads((self.paths[0] / "meta.json").read_text())
        self.keys: list[str] = [
            json.loads((p / "meta.json").read_text())["key"] for p in self.paths
        ]
        self.levels: list[int] = meta["levels"]
        self.channels: list[int] = meta["channels"]
        self.strides: list[int] = meta["strides"]
        self.image_ids: list[int] = meta["image_ids"]
        self.image_size: tuple[int, int] = (meta["size"], meta["size"])
        self.n_images: int = meta["n_images"]
        self._shapes = [tuple(s[1:]) for s in meta["shapes"]]
        self._maps: list[list[np.ndarray]] | None = None
        self._targets = [_load_targets(p) for p in self.paths]

    @classmethod
    def build(
        cls,
        dataset: _Dataset,
        backbone: _Backbone,
        root: str | Path | None = None,
        views: Sequence[int] = (0,),
        batch_size: int = 16,
        progress: bool = True,
    ) -> FeatureCache:
        """The cache of `dataset` through `backbone` for `views`, computing only what is missing."""
        views = list(dict.fromkeys(int(v) for v in views))
        unknown = [v for v in views if v not in VIEWS]
        if not views or unknown:
            raise DataError(f"views must be a non-empty subset of {VIEWS}, got {views}")
        if len(dataset) == 0:
            raise DataError(f"{getattr(dataset, 'ann_file', 'dataset')}: no images to cache")
        root = Path(root) if root is not None else default_cache_root()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _write_error(root, e) from None
        fingerprints = {"dataset": dataset.fingerprint(), "backbone": backbone.fingerprint()}
        name = Path(getattr(dataset, "ann_file", "dataset")).stem
        paths = []
        for view in views:
            key = _key(fingerprints, dataset.size, view)
            path = root / f"{name}-{dataset.size}-v{view}-{key}"
            if _is_valid(path, key):
                log.debug("feature cache hit: %s", path)
            else:
                with _locked(root / f"{path.name}.lock"):
                    # re-check under the lock: another process may have built it meanwhile
                    if not _is_valid(path, key, warn=True):
                        _build_view(
                            dataset, backbone, view, path, key, fingerprints, batch_size, progress
                        )
            paths.append(path)
        return cls(paths, views)

    def __len__(self) -> int:
        return self.n_images * len(self.views)

    def locate(self, index: int) -> tuple[int, int]:
        """(view, image position in the dataset) of a cache index."""
        position, image = divmod(int(index), self.n_images)
        return self.views[position], image

    def features(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Float32 features (len(indices), C, H, W) per level, read from the memory maps."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"cache index out of range 0..{len(self) - 1}")
        maps = self._open()
        position, image = np.divmod(idx, self.n_images)
        out = [np.empty((idx.size, *shape), np.float16) for shape in self._shapes]
        for p in np.unique(position):
            sel = np.flatnonzero(position == p)
            sel = sel[np.argsort(image[sel], kind="stable")]  # sorted rows: sequential reads
            for level, mm in enumerate(maps[p]):
                out[level][sel] = mm[image[sel]]
        return [torch.from_numpy(o).float() for o in out]

    def targets(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Per index: ``boxes`` (M, 4) xyxy in letterboxed pixels of its view, ``labels`` (M,)."""
        result = []
        for index in indices:
            position, image = divmod(int(index), self.n_images)
            boxes, labels, offsets = self._targets[position]
            lo, hi = offsets[image], offsets[image + 1]
            result.append(
                {
                    "boxes": torch.from_numpy(boxes[lo:hi].copy()),
                    "labels": torch.from_numpy(labels[lo:hi].copy()),
                }
            )
        return result

    def _open(self) -> list[list[np.ndarray]]:
        if self._maps is None:
            self._maps = [
                [
                    np.load(p / f"level{lv}.npy", mmap_mode="r", allow_pickle=False)
                    for lv in self.levels
                ]
                for p in self.paths
            ]
        return self._maps

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the memory maps (worker processes reopen the files themselves)."""
        return {**self.__dict__, "_maps": None}

    def __repr__(self) -> str:
        return (
            f"FeatureCache({self.n_images} images x views {self.views}, levels {self.levels}, "
            f"channels {self.channels}, size {self.image_size[0]}, at {self.paths[0].parent})"
        )


def _key(fingerprints: dict[str, str], size: int, view: int) -> str:
    blob = json.dumps(
        {"format": _FORMAT, **fingerprints, "size": size, "view": view}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` across processes (released if the holder dies)."""
    try:
        fh = open(path, "a")  # noqa: SIM115 (closed by the with below)
    except OSError as e:
        raise _write_error(path.parent, e) from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building %s", path.with_suffix(""))
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_valid(path: Path, key: str, warn: bool = False) -> bool:
    """A complete cache folder for `key`: marker, metadata, and level files of the recorded sizes."""
    if not path.exists():
        return False
    try:
        if (path / "COMPLETE").read_text() != key:
            raise ValueError("no completion marker")
        meta = json.loads((path / "meta.json").read_text())
        for level, shape in zip(meta["levels"], meta["shapes"], strict=True):
            file = path / f"level{level}.npy"
            mm = np.load(file, mmap_mode="r", allow_pickle=False)
            if (
                mm.shape != tuple(shape)
                or mm.dtype != np.float16
                or mm.offset + mm.nbytes != file.stat().st_size
            ):
                raise ValueError(f"{file.name} has the wrong size")
        if len(_load_targets(path)[2]) != meta["n_images"] + 1:
            raise ValueError("targets do not match the images")
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        if warn:
            log.warning("feature cache %s is incomplete or corrupt (%s): rebuilding it", path, e)
        return False
    return True


def _load_targets(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path / "targets.npz", allow_pickle=False) as t:
        return t["boxes"], t["labels"], t["offsets"]


def _apply_view(
    image: torch.Tensor, boxes: torch.Tensor, view: int, index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transform a letterboxed (3, S, S) image and its xyxy boxes for `view` (module docstring)."""
    s = image.shape[-1]
    x0, y0, x1, y1 = boxes.reshape(-1, 4).unbind(-1)
    if view in (1, 3):
        image, x0, x1 = image.flip(-1), s - x1, s - x0
    if view in (2, 3):
        image, y0, y1 = image.flip(-2), s - y1, s - y0
    if view == 3:
        b, c, sat = np.random.default_rng([view, index]).uniform(0.8, 1.2, 3)
        image = image * float(b)
        mean = image.mean()
        image = (image - mean) * float(c) + mean
        gray = image.mean(0, keepdim=True)
        image = (gray + (image - gray) * float(sat)).clamp(0, 1)
    return image, torch.stack([x0, y0, x1, y1], -1).reshape(-1, 4)


def _prefetch(dataset: _Dataset, depth: int) -> Iterator[tuple[torch.Tensor, dict]]:
    """dataset[0], dataset[1], ... decoded by two threads, at most `depth` ahead."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: deque = deque()
        for i in range(len(dataset)):
            pending.append(pool.submit(dataset.__getitem__, i))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _device_of(backbone: _Backbone) -> torch.device:
    if isinstance(backbone, torch.nn.Module):
        for p in backbone.parameters():
            return p.device
    return torch.device("cpu")


@contextmanager
def _all_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build_view(
    dataset: _Dataset,
    backbone: _Backbone,
    view: int,
    path: Path,
    key: str,
    fingerprints: dict[str, str],
    batch_size: int,
    progress: bool,
) -> None:
    """Compute one view into a temporary folder next to `path`, then rename it into place.

    On any failure the temporary folder is removed, so nothing half-written is ever taken for a
    cache; a full disk is a `WriteError` saying how much space the cache needs.
    """
    root = path.parent
    for stale in root.glob(f".{path.name}.*"):  # left by a builder that died; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    if path.exists():
        shutil.rmtree(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=root))
    except OSError as e:
        raise _write_error(root, e) from None
    tmp.chmod(
        0o755
    )  # mkdtemp makes it private; the cache is shared by every process on the machine
    n = len(dataset)
    log.info("caching backbone features of %d images (view %s) in %s", n, VIEWS[view], path)
    device = _device_of(backbone)
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not (progress and console.is_terminal),  # no stray lines in logs and pipes
    )
    need: int | None = None  # bytes, known once the first batch gives the feature shapes
    try:
        maps: list[np.ndarray] = []
        boxes, labels, offsets = [], [], [0]
        batch: list[torch.Tensor] = []
        with bar, _all_threads(), torch.inference_mode():
            task = bar.add_task(f"backbone features, view {VIEWS[view]}", total=n)
            for i, (image, target) in enumerate(_prefetch(dataset, 2 * batch_size)):
                image, b = _apply_view(image, target["boxes"], view, i)
                batch.append(image)
                boxes.append(b.numpy().astype(np.float32))
                labels.append(target["labels"].numpy().astype(np.int64))
                offsets.append(offsets[-1] + len(b))
                if len(batch) == batch_size or i == n - 1:
                    feats = backbone(torch.stack(batch).to(device))
                    if not maps:
                        shapes = [(n, *f.shape[1:]) for f in feats]
                        need = _estimate_bytes(shapes, n)
                        for lv, shape in zip(backbone.levels, shapes, strict=True):
                            file = tmp / f"level{lv}.npy"
                            maps.append(np.lib.format.open_memmap(file, "w+", np.float16, shape))
                            _reserve(file)
                    for mm, f in zip(maps, feats, strict=True):
                        mm[i + 1 - len(batch) : i + 1] = (
                            f.clamp(-_FP16_MAX, _FP16_MAX).half().cpu().numpy()
                        )
                    bar.advance(task, len(batch))
                    batch = []
        for mm in maps:
            mm.flush()
        np.savez(
            tmp / "targets.npz",
            boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
            labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
            offsets=np.asarray(offsets, np.int64),
        )
        meta = {
            "key": key,
            "format": _FORMAT,
            "view": view,
            "size": dataset.size,
            "n_images": n,
            "image_ids": list(dataset.image_ids),
            "levels": list(backbone.levels),
            "channels": list(backbone.channels),
            "strides": list(backbone.strides),
            "shapes": [list(mm.shape) for mm in maps],
            **fingerprints,
            "backbone_name": getattr(backbone, "name", None),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        del maps
        (tmp / "COMPLETE").write_text(key)
        os.rename(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        error = os_error_of(e)
        if error is None or error.errno not in OUT_OF_SPACE:
            raise
        raise _write_error(root, error, need, path.name) from None


def _estimate_bytes(shapes: Sequence[tuple[int, ...]], n: int) -> int:
    """Rough size of one cache folder: fp16 level files plus targets (a guess of 64 boxes each)."""
    return sum(2 * int(np.prod(s)) + 128 for s in shapes) + n * 64 * 24 + 4096


def _reserve(file: Path) -> None:
    """Allocate the memory-mapped `file` on disk now: a full disk is then an `OSError` here, not
    a SIGBUS that kills the process when a page of the map is written later."""
    allocate = getattr(os, "posix_fallocate", None)  # not on macOS
    if allocate is None:
        return
    with open(file, "r+b") as fh:
        try:
            allocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as e:
            if e.errno in OUT_OF_SPACE:
                raise
            log.debug("cannot preallocate %s (%s); writing it sparse", file, e)


def _write_error(
    root: Path, error: OSError, need: int | None = None, name: str | None = None
) -> WriteError:
    """One line naming the cache folder, what went wrong and, for a full disk, the space needed."""
    where = f" while writing {name}" if name else ""
    message = f"feature cache in {root}: {describe_os_error(error)}{where}"
    if error.errno in OUT_OF_SPACE:
        if need is not None:
            try:
                free = f", {_human(shutil.disk_usage(root).free)} free"
            except OSError:
                free = ""
            message += f"; this view of the cache needs about {_human(need)} there{free}"
        message += "; free some space or point --cache-dir (or $NAS_NECK_CACHE) at a bigger disk"
    else:
        message += "; point --cache-dir (or $NAS_NECK_CACHE) at a writable folder"
    return WriteError(message)


def _human(n: float) -> str:
    """Bytes as ``12.3 MB`` (decimal units, like `df -H`)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
