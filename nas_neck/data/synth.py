"""Procedural petri-dish photos with COCO box annotations: the embedded default dataset.

Each plate is drawn with vectorised numpy: a dish (rim, wall reflections, meniscus) on a bench,
agar of one of four media (LB yellow, blood red, chocolate brown, dark), then colonies of four
morphotypes that differ in colour, shape, edge, texture and size:

- ``round``: smooth, entire-edged, cream, matte, slightly domed (E. coli-like);
- ``irregular``: lobate edge, grey-white, flat and wrinkled, larger (B. subtilis-like);
- ``spreading``: large translucent green-grey film with swarming rings and a pigment halo
  (P. aeruginosa / Proteus-like);
- ``glossy``: small, convex, orange-golden with a specular highlight; a clear haemolysis ring on
  blood agar (S. aureus-like).

Colonies range from a few pixels to tens of pixels on one plate, clump and overlap; bubbles,
dust, fibres, a label sticker, glare, blur, sensor noise and JPEG compression are distractors
and nuisances that are never annotated. Everything scales with the image size and is a pure
function of (seed, split, index), so datasets are reproducible byte for byte.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from nas_neck.config import MAX_SYNTH_SIZE, MIN_SYNTH_SIZE, SynthConfig
from nas_neck.errors import DataError

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_SIZE",
    "DEFAULT_TRAIN",
    "DEFAULT_VAL",
    "SPECIES",
    "STYLES",
    "SyntheticDataset",
    "ensure_default_dataset",
    "generate_synthetic",
    "render_plate",
]

log = logging.getLogger(__name__)

SPECIES: tuple[str, ...] = ("round", "irregular", "spreading", "glossy")  # COCO ids 1..4
_DEFAULTS = SynthConfig()  # the defaults and bounds live there, for the command line to read
DEFAULT_SIZE = _DEFAULTS.size
DEFAULT_TRAIN = _DEFAULTS.train
DEFAULT_VAL = _DEFAULTS.val
DEFAULT_SEED = _DEFAULTS.seed
COLONIES_PER_PLATE = (15, 40)
STYLES = typing.get_args(SynthConfig.model_fields["style"].annotation)  # photo: `_PhotoPlate`

_VERSION = 2  # bump when rendering changes: the manifest then no longer matches and data is redrawn
_MANIFEST = "manifest.json"
_REF = 512.0  # sizes below are in pixels of a 512 px image and scale with the image size

# radius range (log-uniform), colour (RGB in [0, 1]) per species
_RADIUS = {
    "round": (4.5, 18.0),
    "irregular": (7.5, 26.0),
    "spreading": (13.0, 38.0),
    "glossy": (4.0, 11.5),
}
_COLOUR = {
    "round": (0.93, 0.89, 0.77),
    "irregular": (0.74, 0.74, 0.71),
    "spreading": (0.42, 0.62, 0.46),
    "glossy": (0.98, 0.60, 0.14),
}
_MEDIA = {  # name: (colour, probability)
    "lb": ((0.86, 0.72, 0.45), 0.4),
    "blood": ((0.58, 0.07, 0.09), 0.25),
    "chocolate": ((0.42, 0.27, 0.15), 0.15),
    "dark": ((0.13, 0.13, 0.14), 0.2),
}


@dataclass(frozen=True)
class SyntheticDataset:
    """Paths of a generated dataset: COCO files for both splits share one image folder."""

    root: Path
    image_dir: Path
    train_ann: Path
    val_ann: Path


def generate_synthetic(
    out_dir: str | Path,
    n_train: int = DEFAULT_TRAIN,
    n_val: int = DEFAULT_VAL,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    workers: int | None = None,
    style: str = "default",
) -> SyntheticDataset:
    """Draw `n_train` + `n_val` plates of `size` px into `out_dir` (idempotent, process-safe).

    If `out_dir` already holds a complete dataset drawn with the same parameters, nothing is done.
    A different previous synthetic dataset there is replaced; any other non-empty folder is refused.
    `style` "photo" draws camera-like plates, `size` px wide and 3/4 of that high (`_PhotoPlate`);
    the default style is unchanged byte for byte.
    """
    if n_train < 1 or n_val < 0 or not MIN_SYNTH_SIZE <= size <= MAX_SYNTH_SIZE:
        raise DataError(
            f"need n_train >= 1, n_val >= 0 and size in [{MIN_SYNTH_SIZE}, {MAX_SYNTH_SIZE}], "
            f"got {n_train}, {n_val}, {size}"
        )
    if style not in STYLES:
        raise DataError(f"style: expected one of {', '.join(STYLES)}, got {style!r}")
    root = Path(out_dir)
    paths = SyntheticDataset(root, root / "images", root / "train.json", root / "val.json")
    params = {"version": _VERSION, "n_train": n_train, "n_val": n_val, "size": size, "seed": seed}
    if style != "default":  # the default manifest stays as it was: its datasets stay valid
        params |= {"style": style, "style_version": _PHOTO_VERSION}
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".generate.lock"):
        if _is_complete(paths, params):
            log.info("synthetic dataset in %s is up to date", root)
            return paths
        previous = _read_manifest(root)
        others = [p for p in root.iterdir() if p.name not in {".generate.lock", _MANIFEST}]
        if previous is None and others:
            raise DataError(
                f"{root} is not empty and holds no synthetic dataset: choose an empty folder"
            )
        shutil.rmtree(paths.image_dir, ignore_errors=True)
        paths.image_dir.mkdir()
        _write_json(root / _MANIFEST, {**params, "complete": False})
        for split, count, ann_file in ((0, n_train, paths.train_ann), (1, n_val, paths.val_ann)):
            _write_json(
                ann_file, _draw_split(paths.image_dir, split, count, size, seed, workers, style)
            )
        _write_json(root / _MANIFEST, {**params, "complete": True})
    log.info("drew %d + %d synthetic plates at %d px into %s", n_train, n_val, size, root)
    return paths


def ensure_default_dataset(root: str | Path | None = None) -> SyntheticDataset:
    """The embedded default dataset (used when no --data is given), drawn on first use.

    It lives in ``<root>/synthetic-colonies`` with root from the argument, the ``NAS_NECK_DATA``
    environment variable or ``./data``.
    """
    root = Path(root if root is not None else os.environ.get("NAS_NECK_DATA", "data"))
    return generate_synthetic(
        root / "synthetic-colonies", DEFAULT_TRAIN, DEFAULT_VAL, DEFAULT_SIZE, DEFAULT_SEED
    )


def render_plate(
    rng: np.random.Generator, size: int, style: str = "default"
) -> tuple[np.ndarray, list[tuple[list[int], int]]]:
    """Draw one plate: a (size, size, 3) uint8 image and its colonies as ([x, y, w, h], species index).

    `style` "photo": a camera-like photo (`_PhotoPlate`), `size` wide and 3/4 of that high.
    """
    if style == "photo":
        return _PhotoPlate(rng, size).render()
    return _Plate(rng, size).render()


# --------------------------------------------------------------------------------------------
# dataset writing


def _draw_split(
    image_dir: Path,
    split: int,
    count: int,
    size: int,
    seed: int,
    workers: int | None,
    style: str = "default",
) -> dict:
    prefix = ("train", "val")[split]
    jobs = [
        (image_dir, f"{prefix}_{i:05d}.jpg", (seed, split, i, _VERSION), size) for i in range(count)
    ]
    if style != "default":  # its own random streams: photo plates are not default ones redrawn
        jobs = [(d, n, (*e, 1, _PHOTO_VERSION), s, style) for d, n, e, s in jobs]
    height, width = _photo_shape(size) if style == "photo" else (size, size)
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers > 1 and count >= 8:
        # not fork: forking a process that already runs threads (torch, Ray, MLflow) can deadlock
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            results = pool.map(_draw_one, jobs, chunksize=4)
    else:
        results = [_draw_one(job) for job in jobs]

    images, annotations = [], []
    for image_id, (job, colonies) in enumerate(zip(jobs, results, strict=True), start=1):
        images.append({"id": image_id, "file_name": job[1], "width": width, "height": height})
        for box, species in colonies:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": species + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {
            "description": f"nas-neck synthetic colony plates ({prefix})",
            "version": str(_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "colony"} for i, n in enumerate(SPECIES)
        ],
    }


def _draw_one(job: tuple) -> list[tuple[list[int], int]]:
    image_dir, name, entropy, size = job[:4]
    style = job[4] if len(job) > 4 else "default"
    image, colonies = render_plate(np.random.default_rng(list(entropy)), size, style)
    # photo plates went through JPEG at the camera's quality already: keep that, add little
    quality = 95 if style == "photo" else 93
    Image.fromarray(image).save(image_dir / name, quality=quality, subsampling=0)
    return colonies


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(paths: SyntheticDataset, params: dict) -> bool:
    manifest = _read_manifest(paths.root)
    if manifest != {**params, "complete": True}:
        return False
    try:
        names = [
            im["file_name"]
            for f in (paths.train_ann, paths.val_ann)
            for im in json.loads(f.read_text())["images"]
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return len(names) == params["n_train"] + params["n_val"] and all(
        (paths.image_dir / n).is_file() for n in names
    )


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# rendering


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two-octave low-frequency noise (size, size): normal grids of 5 and 32 cells, upsampled."""
    coarse = np.asarray(
        Image.fromarray(rng.standard_normal((5, 5)).astype(np.float32)).resize(
            (32, 32), Image.BICUBIC
        )
    )
    grid = coarse + 0.4 * rng.standard_normal((32, 32)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC))


def _jitter(rng: np.random.Generator, colour: tuple[float, ...], amount: float) -> np.ndarray:
    """`colour` moved by up to `amount` per channel, as a (3, 1, 1) column to broadcast over images."""
    jittered = np.clip(np.ravel(colour) + rng.uniform(-amount, amount, 3), 0.0, 1.0)
    return jittered.astype(np.float32).reshape(3, 1, 1)


class _Plate:
    """One plate's scene state; `render()` draws it layer by layer.

    Images are float32 (3, H, W) while drawing: channel-first keeps numpy's inner loops long
    when a (H, W) map scales all channels, several times faster than (H, W, 3).
    """

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng = rng
        self.s = size
        self.u = size / _REF
        # python floats, not numpy scalars: those would promote every float32 image op to float64
        light = float(rng.uniform(0, 2 * np.pi))
        self.lx, self.ly = math.cos(light), math.sin(light)
        self.cx, self.cy = (float(v) for v in size / 2 + rng.normal(0, 0.015 * size, 2))
        self.r_dish = size * float(rng.uniform(0.43, 0.485))
        self.r_agar = self.r_dish - size * float(rng.uniform(0.018, 0.03))
        names = list(_MEDIA)
        self.medium = names[rng.choice(len(names), p=[_MEDIA[n][1] for n in names])]
        self.label = self._label_geometry()

    def render(self) -> tuple[np.ndarray, list[tuple[list[int], int]]]:
        s = self.s
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
        dx, dy = xx - self.cx, yy - self.cy
        img = self._dish(dx, dy, np.hypot(dx, dy))
        colonies = self._colonies(img)
        self._bubbles(img)
        self._dust_and_fibres(img)
        self._draw_label(img)
        self._lighting(img, xx, yy)
        return self._camera(img), colonies

    # -- scene layers -----------------------------------------------------------------------

    def _dish(self, dx: np.ndarray, dy: np.ndarray, dist: np.ndarray) -> np.ndarray:
        """Bench, contact shadow, agar (gradient, texture, meniscus), plastic wall with lit edges."""
        rng, s, u = self.rng, self.s, self.u
        noise = _smooth_noise(rng, s)
        facing = (
            dx * self.lx + dy * self.ly
        ) / self.r_dish  # -1 .. 1 across the dish, towards the light
        inside = np.clip(self.r_agar - dist + 0.5, 0, 1)
        wall = np.clip(self.r_dish - dist + 0.5, 0, 1) - inside
        shadow = np.clip(1 - (dist - self.r_dish) / (0.04 * s), 0, 1) * np.clip(-facing, 0, 1)
        shadow *= 1 - inside - wall

        tone = float(rng.choice([rng.uniform(0.05, 0.2), rng.uniform(0.55, 0.8)]))
        bench = _jitter(rng, (tone, tone, tone * rng.uniform(0.95, 1.15)), 0.03)
        keep = (1 + 0.12 * noise) * (1 - inside - 0.5 * wall) * (1 - 0.35 * shadow)

        rho = dist / self.r_agar
        shade = 1 + 0.08 * facing + 0.035 * noise - 0.18 * np.clip((rho - 0.9) / 0.1, 0, 1) ** 2
        agar = np.clip(shade * _jitter(rng, _MEDIA[self.medium][0], 0.04), 0, 1) * inside

        lit = 0.25 + 0.75 * np.clip(facing * float(rng.choice([-1, 1])), 0, 1) ** 3
        glow = 0.5 * float(rng.uniform(0.55, 0.8)) * wall
        for radius, width, gain in (
            (self.r_dish - 1.2 * u, 1.0, 0.7),
            (self.r_agar + 1.0 * u, 0.8, 0.45),
        ):
            glow += np.exp(-(((dist - radius) / (width * u + 0.4)) ** 2)) * lit * gain
        return (keep * bench + agar + glow).astype(np.float32)

    def _colonies(self, img: np.ndarray) -> list[tuple[list[int], int]]:
        rng, u = self.rng, self.u
        n_present = rng.choice([1, 2, 3, 4], p=[0.25, 0.4, 0.25, 0.1])
        present = rng.choice(len(SPECIES), size=n_present, replace=False)
        spreading = SPECIES.index("spreading")
        if n_present == 1 and present[0] == spreading:
            n = int(rng.integers(4, 10))
            species = np.full(n, spreading)
        else:
            n = int(rng.integers(COLONIES_PER_PLATE[0], COLONIES_PER_PLATE[1] + 1))
            species = rng.choice(present, size=n, p=rng.dirichlet(np.full(n_present, 2.0)))
            species[np.flatnonzero(species == spreading)[4:]] = (
                present[0] if present[0] != spreading else present[1]
            )
        lo, hi = np.array([_RADIUS[SPECIES[k]] for k in species]).T
        radii = np.exp(rng.uniform(np.log(lo), np.log(hi))) * u
        radii *= np.where(rng.random(n) < 0.15, rng.uniform(0.45, 0.7, n), 1.0)  # young colonies
        radii = np.maximum(radii, 1.6)
        order = np.argsort(-radii, kind="stable")  # big first, so small colonies lie on top
        plate_colour = {k: _jitter(rng, _COLOUR[SPECIES[k]], 0.04) for k in present}

        owner = np.full((self.s, self.s), -1, np.int32)
        placed: list[tuple[float, float, float, int]] = []
        drawn: list[tuple[list[int], int, int]] = []  # box, species, pixels covered
        for i in order:
            k, r = int(species[i]), float(radii[i])
            centre = self._place(r, placed, clump=rng.random() < 0.3)
            if centre is None:
                continue
            placed.append((*centre, r, k))
            box, covered = self._paint(
                img, owner, len(drawn), SPECIES[k], plate_colour[k], *centre, r
            )
            if box is not None:
                drawn.append((box, k, covered))
        visible = np.bincount(owner.ravel() + 1, minlength=len(drawn) + 1)[1:]
        return [
            (box, k)
            for (box, k, covered), seen in zip(drawn, visible, strict=True)
            if SPECIES[k] == "spreading" or seen >= 0.3 * covered
        ]

    def _place(self, r: float, placed: list, clump: bool) -> tuple[float, float] | None:
        """A centre inside the agar and off the label: touching a placed colony if `clump`, else free."""
        rng = self.rng
        limit = self.r_agar - 1.25 * r - 3 * self.u
        if limit <= 0:
            return None
        solid = [(x, y, pr) for x, y, pr, k in placed if SPECIES[k] != "spreading"]
        for _ in range(25):
            if clump and solid:
                x0, y0, r0 = solid[rng.integers(len(solid))]
                a, gap = rng.uniform(0, 2 * np.pi), (r + r0) * rng.uniform(0.72, 1.0)
                x, y = x0 + gap * np.cos(a), y0 + gap * np.sin(a)
            else:
                a, d = rng.uniform(0, 2 * np.pi), limit * np.sqrt(rng.random())
                x, y = self.cx + d * np.cos(a), self.cy + d * np.sin(a)
            if np.hypot(x - self.cx, y - self.cy) > limit or self._under_label(x, y, r):
                continue
            if clump or all(np.hypot(x - px, y - py) > r + pr + 1 for px, py, pr in solid):
                return float(x), float(y)
        return None

    def _paint(
        self,
        img: np.ndarray,
        owner: np.ndarray,
        idx: int,
        kind: str,
        colour: np.ndarray,
        cx: float,
        cy: float,
        r: float,
    ) -> tuple[list[int] | None, int]:
        """Alpha-composite one colony; return its tight box [x, y, w, h] and covered pixel count."""
        rng, u = self.rng, self.u
        harmonics = {
            "round": (2, 4, 0.035),
            "irregular": (3, 10, 0.09),
            "spreading": (2, 6, 0.1),
            "glossy": (2, 3, 0.015),
        }
        j0, j1, amp = harmonics[kind]
        js = np.arange(j0, j1)
        amps = amp * rng.uniform(0.3, 1.0, len(js)) / np.sqrt(js / j0)
        phases = rng.uniform(0, 2 * np.pi, len(js))
        halo = 1.7 if kind == "spreading" or (kind == "glossy" and self.medium == "blood") else 1.0
        ext = int(np.ceil(r * (1 + amps.sum()) * halo + 3))
        x0, x1 = max(int(cx) - ext, 0), min(int(cx) + ext + 1, self.s)
        y0, y1 = max(int(cy) - ext, 0), min(int(cy) + ext + 1, self.s)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        dx, dy = xx - cx, yy - cy
        d = np.hypot(dx, dy)
        theta = np.arctan2(dy, dx)
        radius = r * (
            1
            + (amps[:, None, None] * np.cos(js[:, None, None] * theta + phases[:, None, None])).sum(
                0
            )
        )
        rho = np.clip(d / radius, 0, 1)
        lit = (dx * self.lx + dy * self.ly) / r
        colour = _jitter(rng, colour, 0.02)
        soft = {"round": 0.7, "irregular": 0.9, "spreading": max(1.0, 0.15 * r), "glossy": 0.6}[
            kind
        ] * max(u, 0.6)
        cover = np.clip((radius - d) / soft + 0.5, 0, 1)

        if kind == "round":
            shade = 1 - 0.18 * rho**2 + 0.05 * lit - 0.12 * np.exp(-(((rho - 0.93) / 0.07) ** 2))
            rgb, alpha = shade * colour, 0.93 * cover
        elif kind == "irregular":
            wrinkle = np.cos(theta * rng.integers(7, 14) + 7 * rho + rng.uniform(0, 6.3)) * np.cos(
                11 * rho
            )
            shade = 0.95 + 0.09 * wrinkle * rho + 0.08 * (rho < 0.3) + 0.02 * lit
            rgb, alpha = shade * colour, cover * (0.9 - 0.25 * rho**2)
        elif kind == "spreading":
            rings = 1 + 0.12 * np.cos(2 * np.pi * rho * rng.uniform(2, 4.5) + rng.uniform(0, 6.3))
            film = cover * rng.uniform(0.45, 0.65) * (1 - 0.45 * rho**2) * rings
            outer = np.clip(1 - (d - radius) / (0.6 * radius), 0, 1) * (d > radius)
            rgb, alpha = np.broadcast_to(colour, (3, *d.shape)), np.clip(film + 0.16 * outer, 0, 1)
        else:  # glossy: convex dome with a specular highlight towards the light
            dome = np.sqrt(np.clip(1 - rho**2, 0, 1))
            spec = 0.9 * np.exp(
                -((dx - 0.35 * r * self.lx) ** 2 + (dy - 0.35 * r * self.ly) ** 2)
                / (2 * (0.17 * r) ** 2)
            )
            rgb = (0.6 + 0.4 * dome) * colour + spec
            alpha = cover
            if self.medium == "blood":  # haemolysis: a clear ring around the colony
                ring = np.clip(1 - (d - radius) / (0.7 * radius), 0, 1) * (d > radius)
                region = img[:, y0:y1, x0:x1]
                region += (
                    0.45 * ring * (np.array([0.9, 0.55, 0.4], np.float32).reshape(3, 1, 1) - region)
                )

        region = img[:, y0:y1, x0:x1]
        region += alpha * (np.clip(rgb, 0, 1.2) - region)
        mask = cover >= 0.5
        if not mask.any():
            return None, 0
        owner[y0:y1, x0:x1][mask] = idx
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = [
            x0 + int(cols[0]),
            y0 + int(rows[0]),
            int(cols[-1] - cols[0] + 1),
            int(rows[-1] - rows[0] + 1),
        ]
        return box, int(mask.sum())

    def _bubbles(self, img: np.ndarray) -> None:
        """Air bubbles in the agar: dark rim, light centre, a glint; colony-sized, never annotated."""
        rng, u = self.rng, self.u
        for _ in range(rng.poisson(3)):
            r = rng.uniform(1.5, 6.0) * u + 0.8
            a, d = rng.uniform(0, 2 * np.pi), (self.r_agar - 2 * r) * np.sqrt(rng.random())
            cx, cy = self.cx + d * np.cos(a), self.cy + d * np.sin(a)
            ext = int(r + 3)
            x0, y0 = max(int(cx) - ext, 0), max(int(cy) - ext, 0)
            yy, xx = (
                np.mgrid[y0 : min(int(cy) + ext + 1, self.s), x0 : min(int(cx) + ext + 1, self.s)]
                + 0.5
            )
            dist = np.hypot(xx - cx, yy - cy)
            edge = np.exp(-(((dist - r) / (0.5 + 0.15 * r)) ** 2))
            glint = np.exp(
                -((xx - cx - 0.4 * r * self.lx) ** 2 + (yy - cy - 0.4 * r * self.ly) ** 2)
                / (0.1 * r * r + 0.3)
            )
            region = img[:, y0 : y0 + dist.shape[0], x0 : x0 + dist.shape[1]]
            region *= 1 - 0.45 * edge + 0.08 * (dist < r)
            region += 0.6 * glint

    def _dust_and_fibres(self, img: np.ndarray) -> None:
        rng, s = self.rng, self.s
        n = rng.integers(5, 30)
        ys, xs = rng.integers(0, s, n), rng.integers(0, s, n)
        img[:, ys, xs] *= rng.uniform(0.3, 0.75, n).astype(np.float32)
        for _ in range(rng.poisson(0.8)):  # a fibre: a dark quadratic Bezier curve
            p = rng.uniform(0.15 * s, 0.85 * s, (3, 2))
            p[1:] = p[0] + (p[1:] - p[0]) * rng.uniform(0.05, 0.25)
            t = np.linspace(0, 1, int(s * 0.4))[:, None]
            pts = (
                ((1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2])
                .astype(int)
                .clip(0, s - 1)
            )
            img[:, pts[:, 1], pts[:, 0]] *= float(rng.uniform(0.35, 0.7))

    def _label_geometry(self) -> tuple[float, float, float, float, float] | None:
        """A sticker (centre x, y, half width, half height, angle) overlapping the dish edge, or None."""
        rng, s = self.rng, self.s
        if rng.random() < 0.35:
            return None
        a = rng.uniform(0, 2 * np.pi)
        d = self.r_agar * rng.uniform(0.8, 0.95)
        return (
            self.cx + d * np.cos(a),
            self.cy + d * np.sin(a),
            s * rng.uniform(0.09, 0.14),
            s * rng.uniform(0.03, 0.05),
            a + np.pi / 2 + rng.normal(0, 0.15),
        )

    def _under_label(self, x: float, y: float, r: float) -> bool:
        if self.label is None:
            return False
        lx, ly, hw, hh, ang = self.label
        du = (x - lx) * np.cos(ang) + (y - ly) * np.sin(ang)
        dv = -(x - lx) * np.sin(ang) + (y - ly) * np.cos(ang)
        return abs(du) < hw + r + 2 and abs(dv) < hh + r + 2

    def _draw_label(self, img: np.ndarray) -> None:
        if self.label is None:
            return
        rng, s = self.rng, self.s
        lx, ly, hw, hh, ang = self.label
        ext = int(np.hypot(hw, hh) + 2)
        x0, x1 = max(int(lx) - ext, 0), min(int(lx) + ext + 1, s)
        y0, y1 = max(int(ly) - ext, 0), min(int(ly) + ext + 1, s)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        du = (xx - lx) * np.cos(ang) + (yy - ly) * np.sin(ang)
        dv = -(xx - lx) * np.sin(ang) + (yy - ly) * np.cos(ang)
        paper = np.clip(hw - np.abs(du) + 0.5, 0, 1) * np.clip(hh - np.abs(dv) + 0.5, 0, 1)
        # handwriting-like ink: two rows of strokes with word gaps
        row = np.abs(((dv / hh + 1) * 1.5) % 1 - 0.5) < 0.22
        strokes = np.cos(du * rng.uniform(0.9, 1.6) / max(self.u, 0.5)) > 0.2
        words = np.cos(du / hw * rng.uniform(6, 10) + rng.uniform(0, 6.3)) > -0.6
        ink = row & strokes & words & (np.abs(du) < 0.85 * hw) & (np.abs(dv) < 0.8 * hh)
        region = img[:, y0:y1, x0:x1]
        sheet = _jitter(rng, rng.choice([(0.95, 0.95, 0.93), (0.96, 0.9, 0.55)]), 0.03)
        region += paper * (sheet - region)
        region += 0.8 * ink * paper * (_jitter(rng, (0.12, 0.13, 0.3), 0.08) - region)

    def _lighting(self, img: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> None:
        """Vignetting, an illumination gradient and one or two soft glare reflections of the lamp."""
        rng, s = self.rng, self.s
        cx, cy = xx - s / 2, yy - s / 2
        gain = 1 - float(rng.uniform(0.1, 0.3)) * (cx**2 + cy**2) / (0.5 * s) ** 2
        gain += float(rng.uniform(0, 0.1)) * (cx * self.lx + cy * self.ly) / s
        img *= gain
        for _ in range(rng.integers(1, 3)):
            gx, gy, a, b, t, peak = (
                float(v)
                for v in rng.uniform(
                    [0.2 * s, 0.2 * s, 0.04 * s, 0.015 * s, 0, 0.1],
                    [0.8 * s, 0.8 * s, 0.16 * s, 0.05 * s, math.pi, 0.35],
                )
            )
            x0, x1, y0, y1 = (
                int(np.clip(v, 0, s)) for v in (gx - 3 * a, gx + 3 * a, gy - 3 * a, gy + 3 * a)
            )
            wx, wy = xx[y0:y1, x0:x1] - gx, yy[y0:y1, x0:x1] - gy
            du = wx * math.cos(t) + wy * math.sin(t)
            dv = -wx * math.sin(t) + wy * math.cos(t)
            img[:, y0:y1, x0:x1] += peak * np.exp(-((du / a) ** 2 + (dv / b) ** 2))

    def _camera(self, img: np.ndarray) -> np.ndarray:
        """Defocus blur, white balance, sensor noise, quantisation to (H, W, 3) uint8."""
        rng, u = self.rng, self.u
        sigma = rng.uniform(0.25, 0.8) * u if rng.random() < 0.85 else rng.uniform(0.8, 1.3) * u
        img = gaussian_filter(img, sigma=(0, sigma, sigma))
        img *= rng.uniform(0.94, 1.06, (3, 1, 1)).astype(np.float32)
        # uniform noise of the drawn standard deviation: as good as Gaussian here, 3x cheaper to draw
        noise = rng.random(img.shape, dtype=np.float32) - 0.5
        img += float(rng.uniform(0.004, 0.018) * math.sqrt(12)) * noise
        return np.ascontiguousarray(
            (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
        )


# --------------------------------------------------------------------------------------------
# photo style (opt-in): what a lab camera or phone photo of a plate looks like


_PHOTO_VERSION = 1  # bump when photo-style rendering changes
_DISH_MM = 90.0  # a standard petri dish
_PHOTO_COLONY_MM = (1.0, 5.0)  # colony diameters, log-uniform
_PHOTO_COLONIES = (10, 120)
# colony look: (RGB, species index it is annotated as, probability)
_PHOTO_LOOKS = {
    "cream": ((0.93, 0.9, 0.8), 0, 0.4),  # round: smooth, cream-white
    "white": ((0.97, 0.97, 0.95), 0, 0.15),
    "grey": ((0.72, 0.72, 0.69), 1, 0.2),  # irregular: flat, grey, lobate
    "yellow": ((0.96, 0.84, 0.32), 3, 0.2),  # glossy: domed, yellow-golden
    "film": ((0.62, 0.66, 0.55), 2, 0.05),  # spreading: translucent film
}
_PHOTO_MEDIA = {  # colour, opacity over the bench, probability
    "amber": ((0.8, 0.62, 0.32), 0.6, 0.35),  # LB / nutrient agar, translucent
    "pale": ((0.88, 0.84, 0.68), 0.5, 0.3),  # clear agar, the bench shows through
    "blood": ((0.56, 0.08, 0.1), 0.9, 0.2),
    "chocolate": ((0.4, 0.25, 0.13), 0.92, 0.15),
}


def _photo_shape(size: int) -> tuple[int, int]:
    """(height, width) of a photo-style plate: `size` wide, 4:3 like most cameras."""
    return max(48, round(size * 3 / 4)), size


class _PhotoPlate:
    """A plate as a camera sees it: a 90 mm dish on a dark or textured bench, translucent agar,
    colonies of 1-5 mm (cream, white, grey, yellow), marker writing and lamp reflections on the
    lid, sensor noise and JPEG compression. Sizes are in millimetres of the dish, so a photo of
    any resolution shows the same scene.
    """

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng = rng
        self.h, self.w = _photo_shape(size)
        self.r_dish = self.h * float(rng.uniform(0.41, 0.475))
        self.px_mm = 2 * self.r_dish / _DISH_MM
        self.cx = self.w / 2 + float(rng.normal(0, 0.03 * self.w))
        self.cy = self.h / 2 + float(rng.normal(0, 0.015 * self.h))
        self.r_agar = self.r_dish - 1.6 * self.px_mm
        light = float(rng.uniform(0, 2 * np.pi))
        self.lx, self.ly = math.cos(light), math.sin(light)
        names = list(_PHOTO_MEDIA)
        self.medium = names[rng.choice(len(names), p=[_PHOTO_MEDIA[n][2] for n in names])]

    def render(self) -> tuple[np.ndarray, list[tuple[list[int], int]]]:
        yy, xx = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32) + 0.5
        dist = np.hypot(xx - self.cx, yy - self.cy)
        img = self._bench(xx, yy)
        self._dish(img, xx, yy, dist)
        del xx, yy
        colonies = self._colonies(img)
        self._marker(img)
        self._reflections(img, dist)
        return self._camera(img), colonies

    def _bench(self, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        """A dark bench, a wood-grain one or a speckled lab mat, with the dish's shadow."""
        rng, h, w = self.rng, self.h, self.w
        kind = rng.choice(["dark", "wood", "mat"], p=[0.45, 0.3, 0.25])
        noise = _smooth_noise(rng, max(h, w))[:h, :w]
        if kind == "dark":
            tone = _jitter(rng, (0.07, 0.07, 0.08), 0.03)
            img = tone * (1 + 0.15 * noise)
        elif kind == "wood":
            angle = float(rng.uniform(0, np.pi))
            along = xx * math.cos(angle) + yy * math.sin(angle)
            period = float(rng.uniform(0.008, 0.02)) * w
            grain = np.sin(2 * np.pi * along / period + 3.0 * noise)
            tone = _jitter(rng, (0.42, 0.27, 0.15), 0.06) * float(rng.uniform(0.5, 1.0))
            img = tone * (1 + 0.18 * grain + 0.1 * noise)
        else:
            tone = _jitter(rng, (0.3, 0.32, 0.34), 0.08)
            speck = rng.random((h, w), dtype=np.float32) - 0.5
            speck = gaussian_filter(speck, 0.8 * max(self.px_mm / 10, 0.5))
            img = tone * (1 + 0.8 * speck + 0.08 * noise)
        img = np.ascontiguousarray(img, dtype=np.float32)
        # contact shadow on the side away from the light
        sx, sy = self.cx - 0.03 * self.r_dish * self.lx, self.cy - 0.03 * self.r_dish * self.ly
        ds = np.hypot(xx - sx, yy - sy)
        img *= 1 - 0.45 * np.clip(1 - np.abs(ds - self.r_dish) / (0.06 * self.r_dish), 0, 1)
        return img

    def _dish(self, img: np.ndarray, xx: np.ndarray, yy: np.ndarray, dist: np.ndarray) -> None:
        """Translucent agar (the bench seen through it), the meniscus, the plastic wall."""
        rng, mm = self.rng, self.px_mm
        colour, opacity, _ = _PHOTO_MEDIA[self.medium]
        inside = np.clip(self.r_agar - dist + 0.5, 0, 1)
        wall = np.clip(self.r_dish - dist + 0.5, 0, 1) - inside
        facing = ((xx - self.cx) * self.lx + (yy - self.cy) * self.ly) / self.r_dish
        rho = dist / self.r_agar
        shade = 1 + 0.06 * facing - 0.25 * np.clip((rho - 0.93) / 0.07, 0, 1) ** 2
        agar = _jitter(rng, colour, 0.04) * shade
        through = 0.35 + 0.65 * img  # diffuse light through the agar, dimmed by the bench
        tinted = opacity * agar + (1 - opacity) * through * agar * 1.4
        img += inside * (np.clip(tinted, 0, 1) - img)
        lit = 0.3 + 0.7 * np.clip(facing * float(rng.choice([-1, 1])), 0, 1) ** 2
        rim = np.exp(-(((dist - self.r_dish + 0.5 * mm) / (0.35 * mm + 0.5)) ** 2))
        edge = np.exp(-(((dist - self.r_agar) / (0.25 * mm + 0.5)) ** 2))
        img += (0.25 * wall + 0.55 * rim * lit + 0.25 * edge * lit).astype(np.float32)

    def _colonies(self, img: np.ndarray) -> list[tuple[list[int], int]]:
        rng, mm = self.rng, self.px_mm
        looks = list(_PHOTO_LOOKS)
        p = np.array([_PHOTO_LOOKS[k][2] for k in looks])
        chosen = rng.choice(
            len(looks), size=int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])), p=p, replace=False
        )
        lo, hi = _PHOTO_COLONIES
        n = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        kinds = rng.choice(chosen, size=n)
        lo_mm, hi_mm = _PHOTO_COLONY_MM
        radii = 0.5 * mm * np.exp(rng.uniform(np.log(lo_mm), np.log(hi_mm), n))
        radii = np.maximum(radii, 1.0)
        out = []
        placed: list[tuple[float, float, float]] = []
        for i in np.argsort(-radii, kind="stable"):
            r, look = float(radii[i]), looks[int(kinds[i])]
            limit = self.r_agar - r - 1.5 * mm
            if limit <= 0:
                continue
            for _ in range(20):
                a, d = rng.uniform(0, 2 * np.pi), limit * np.sqrt(rng.random())
                x, y = self.cx + d * math.cos(a), self.cy + d * math.sin(a)
                if all(math.hypot(x - px, y - py) > 0.9 * (r + pr) for px, py, pr in placed):
                    break
            else:
                continue
            placed.append((x, y, r))
            box = self._paint(img, look, x, y, r)
            if box is not None:
                out.append((box, _PHOTO_LOOKS[look][1]))
        return out

    def _paint(
        self, img: np.ndarray, look: str, cx: float, cy: float, r: float
    ) -> list[int] | None:
        """One colony: a dome with a soft edge and a highlight (a film for `film`)."""
        rng = self.rng
        lobes = 0.12 if look == "grey" else 0.04
        js = np.arange(2, 7)
        amps = lobes * rng.uniform(0.2, 1.0, len(js)) / js
        phases = rng.uniform(0, 2 * np.pi, len(js))
        ext = int(math.ceil(r * (1 + amps.sum()) + 3))
        x0, x1 = max(int(cx) - ext, 0), min(int(cx) + ext + 1, self.w)
        y0, y1 = max(int(cy) - ext, 0), min(int(cy) + ext + 1, self.h)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        dx, dy = xx - cx, yy - cy
        d, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
        radius = r * (
            1
            + (amps[:, None, None] * np.cos(js[:, None, None] * theta + phases[:, None, None])).sum(
                0
            )
        )
        rho = np.clip(d / radius, 0, 1)
        cover = np.clip((radius - d) / max(0.6, 0.08 * r) + 0.5, 0, 1)
        colour = _jitter(rng, _PHOTO_LOOKS[look][0], 0.04)
        dome = np.sqrt(np.clip(1 - rho**2, 0, 1))
        spec = np.exp(
            -((dx - 0.4 * r * self.lx) ** 2 + (dy - 0.4 * r * self.ly) ** 2)
            / (2 * (0.15 * r) ** 2 + 0.5)
        )
        if look == "film":
            rgb, alpha = colour + 0 * rho, cover * (0.35 + 0.2 * rho)
        else:
            rgb = colour * (0.78 + 0.22 * dome) + (0.5 if look == "yellow" else 0.25) * spec
            rgb = rgb - 0.12 * np.exp(-(((rho - 0.95) / 0.06) ** 2))  # darker edge
            alpha = cover * float(rng.uniform(0.8, 0.97))
        region = img[:, y0:y1, x0:x1]
        region += alpha * (np.clip(rgb, 0, 1.2) - region)
        mask = cover >= 0.5
        if not mask.any():
            return None
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        return [
            x0 + int(cols[0]),
            y0 + int(rows[0]),
            int(cols[-1] - cols[0] + 1),
            int(rows[-1] - rows[0] + 1),
        ]

    def _marker(self, img: np.ndarray) -> None:
        """Handwriting on the lid in marker pen (a plate id, a date): strokes of 0.5-1 mm, on
        the dish and sometimes over colonies; never annotated."""
        rng, mm = self.rng, self.px_mm
        if rng.random() < 0.25:
            return
        ink = _jitter(
            rng, [(0.05, 0.05, 0.1), (0.08, 0.1, 0.45), (0.5, 0.05, 0.08)][rng.integers(3)], 0.03
        )
        for _ in range(int(rng.integers(1, 3))):
            chars = int(rng.integers(3, 9))
            ch = float(rng.uniform(4, 8)) * mm  # character height
            a = rng.uniform(0, 2 * np.pi)
            d = self.r_dish * rng.uniform(0.45, 0.85)
            ox = self.cx + d * math.cos(a) - chars * 0.35 * ch
            oy = self.cy + d * math.sin(a)
            tilt = float(rng.normal(0, 0.15))
            pts = []
            for c in range(chars):
                base = np.array([ox + c * 0.7 * ch, oy])
                ctrl = rng.uniform([0, -0.5], [0.55, 0.5], (int(rng.integers(3, 6)), 2)) * ch
                t = np.linspace(0, 1, 40)[:, None]
                for p0, p1 in zip(ctrl[:-1], ctrl[1:], strict=True):
                    pts.append(base + p0 + t * (p1 - p0))
            pts = np.concatenate(pts)
            rx, ry = pts[:, 0] - ox, pts[:, 1] - oy
            pts = np.stack(
                [
                    ox + rx * math.cos(tilt) - ry * math.sin(tilt),
                    oy + rx * math.sin(tilt) + ry * math.cos(tilt),
                ],
                1,
            )
            x0, y0 = (np.floor(pts.min(0)) - 3 * mm).astype(int)
            x1, y1 = (np.ceil(pts.max(0)) + 3 * mm).astype(int)
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.w), min(y1, self.h)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.float32)
            ix = np.clip((pts[:, 0] - x0).astype(int), 0, x1 - x0 - 1)
            iy = np.clip((pts[:, 1] - y0).astype(int), 0, y1 - y0 - 1)
            mask[iy, ix] = 1.0
            width = float(rng.uniform(0.25, 0.5)) * mm
            mask = gaussian_filter(mask, width)
            mask = np.clip(mask / (mask.max() + 1e-9) * 3, 0, 1) * float(rng.uniform(0.7, 0.95))
            region = img[:, y0:y1, x0:x1]
            region += mask * (ink - region)

    def _reflections(self, img: np.ndarray, dist: np.ndarray) -> None:
        """The lamp on the lid: a bright arc along the lid and a soft window, desaturated."""
        rng = self.rng
        theta0 = float(rng.uniform(0, 2 * np.pi))
        for _ in range(int(rng.integers(1, 3))):
            rr = self.r_dish * float(rng.uniform(0.6, 0.95))
            width = self.r_dish * float(rng.uniform(0.015, 0.05))
            span = float(rng.uniform(0.3, 1.2))
            x0, x1 = (
                max(int(self.cx - rr - 3 * width), 0),
                min(int(self.cx + rr + 3 * width), self.w),
            )
            y0, y1 = (
                max(int(self.cy - rr - 3 * width), 0),
                min(int(self.cy + rr + 3 * width), self.h),
            )
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
            ang = (np.arctan2(yy - self.cy, xx - self.cx) - theta0 + np.pi) % (2 * np.pi) - np.pi
            band = np.exp(-(((dist[y0:y1, x0:x1] - rr) / width) ** 2)) * np.exp(
                -((ang / span) ** 2)
            )
            img[:, y0:y1, x0:x1] += float(rng.uniform(0.12, 0.4)) * band.astype(np.float32)
            theta0 += float(rng.uniform(1.5, 4.5))
        if rng.random() < 0.6:  # a window or light box
            gx = self.cx + float(rng.uniform(-0.5, 0.5)) * self.r_dish
            gy = self.cy + float(rng.uniform(-0.5, 0.5)) * self.r_dish
            a, b = self.r_dish * rng.uniform([0.15, 0.08], [0.35, 0.2])
            x0, x1 = max(int(gx - 2 * a), 0), min(int(gx + 2 * a), self.w)
            y0, y1 = max(int(gy - 2 * b), 0), min(int(gy + 2 * b), self.h)
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
            soft = np.exp(-((((xx - gx) / a) ** 8 + ((yy - gy) / b) ** 8) ** 0.5) * 2)
            inside = dist[y0:y1, x0:x1] < self.r_dish
            img[:, y0:y1, x0:x1] += float(rng.uniform(0.05, 0.18)) * (soft * inside).astype(
                np.float32
            )

    def _camera(self, img: np.ndarray) -> np.ndarray:
        """Vignetting, white balance, slight defocus, signal-dependent sensor noise, JPEG."""
        rng = self.rng
        h, w = self.h, self.w
        yy, xx = np.ogrid[0:h, 0:w]
        r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (0.5 * math.hypot(w, h)) ** 2
        img *= (1 - float(rng.uniform(0.1, 0.35)) * r2).astype(np.float32)
        img *= rng.uniform(0.92, 1.08, (3, 1, 1)).astype(np.float32)
        sigma = float(rng.uniform(0.3, 1.0)) * max(self.px_mm / 12, 0.4)
        img = gaussian_filter(img, sigma=(0, sigma, sigma))
        np.clip(img, 0, 1, out=img)
        shot, read = float(rng.uniform(0.0004, 0.003)), float(rng.uniform(0.003, 0.012))
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        img += noise * np.sqrt(shot * img + read**2)
        out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
        quality = int(rng.integers(60, 93))
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(out)).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return np.asarray(decoded.convert("RGB")).copy()
