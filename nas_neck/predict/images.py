"""Photos read robustly and kept small: native integer pixels, float only a region at a time.

A 6000 x 4000 photo is 72 MB as 8-bit RGB but 288 MB as the float32 image training reads
(`nas_neck.data.coco.read_image`), so a `Photo` keeps the decoded integer array (uint8, or uint16
for 16-bit files) and converts to float in [0, 1] only the region that is being looked at (a
tile, or the whole image once it has been reduced to about the network's input size). The
conversion matches `read_image`: 8-bit / 255, 16-bit / 65535, grayscale repeated to RGB, alpha
dropped (as ``Image.convert("RGB")`` does), float images clipped to [0, 1].

Phone photos carry their rotation in EXIF; `read_photo` applies it (``exif_transpose``) unless
told to keep the stored orientation, which COCO ground truth made without rotation needs.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from nas_neck.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "Photo", "read_photo"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
MAX_PIXELS = 400_000_000  # 20000 x 20000: above PIL's bomb guard (179 MP), below a full disk
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class Photo:
    """A decoded photo: `pixels` (H, W, 3) uint8 or uint16 (or float32 in [0, 1]), its path."""

    path: Path
    pixels: np.ndarray

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] as float32 RGB in [0, 1], like `read_image` would give them."""
        return _to_float(self.pixels[y0:y1, x0:x1])

    def reduced(self, factor: int) -> np.ndarray:
        """The whole photo shrunk by an integer `factor` (box filter) as float32 in [0, 1]; one
        band of rows at a time, so no full-size float copy is ever made."""
        if factor <= 1:
            return self.region(0, 0, self.width, self.height)
        h, w = self.height // factor, self.width // factor
        out = np.empty((h, w, 3), np.float32)
        band = max(1, 256 // factor)  # output rows per band: about 256 photo rows
        for r0 in range(0, h, band):
            r1 = min(h, r0 + band)
            block = self.region(0, r0 * factor, w * factor, r1 * factor)
            out[r0:r1] = block.reshape(r1 - r0, factor, w, factor, 3).mean((1, 3))
        return out

    def preview(self, max_side: int) -> Image.Image:
        """An 8-bit RGB picture of the photo, its long side at most `max_side` (for drawing)."""
        factor = max(1, -(-max(self.width, self.height) // max_side))
        if self.pixels.dtype == np.uint8 and factor == 1:
            return Image.fromarray(np.ascontiguousarray(self.pixels))
        small = self.reduced(factor)
        return Image.fromarray((small * 255 + 0.5).astype(np.uint8))


def read_photo(path: str | Path, exif: bool = True) -> Photo:
    """Decode any image file as a `Photo`; a `DataError` names the file and what is wrong.

    Grayscale, palette, CMYK, RGBA (alpha dropped), 16-bit and float images are accepted;
    `exif` applies the EXIF orientation (a phone photo shown the way it was taken).
    """
    path = Path(path)
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if exif:
                    im = ImageOps.exif_transpose(im)
                pixels = _pixels(im)
    except FileNotFoundError as e:
        raise DataError(f"image file not found: {path}") from e
    except IsADirectoryError as e:
        raise DataError(f"{path} is a folder, not an image") from e
    except Image.DecompressionBombError as e:
        raise DataError(
            f"cannot read image {path}: more than {MAX_PIXELS / 1e6:.0f} megapixels ({e})"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    except MemoryError as e:
        raise DataError(f"cannot read image {path}: not enough memory to decode it") from e
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise DataError(f"cannot read image {path}: it has no pixels")
    return Photo(path, pixels)


def _pixels(im: Image.Image) -> np.ndarray:
    """(H, W, 3) pixels in the file's own depth: uint8, uint16 (16-bit), or float32 in [0, 1]."""
    if im.mode in _SIXTEEN_BIT:
        arr = np.asarray(im)
        if arr.dtype != np.uint16:  # mode I holds int32; read_image scales it by 1/65535 too
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
    elif im.mode == "F":
        arr = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    else:
        arr = np.asarray(im.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr


def _to_float(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype not in (np.uint8, np.uint16):
        return np.ascontiguousarray(pixels, dtype=np.float32)
    out = pixels.astype(np.float32)
    out /= 255.0 if pixels.dtype == np.uint8 else 65535.0  # in place: one float copy, not two
    return out
