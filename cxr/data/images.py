"""Decoding one image file (or bytes) into grey uint8 pixels, and resizing them, one way for all.

The cache, prediction over files, the served model and Grad-CAM overlays all read images here, so
a picture gets the same pixels whether it was trained on, predicted from a folder or posted to a server.
Bytes from outside (a served request, a file given to `cxr.predict`) are checked before PIL decodes
them: `cxr.data.untrusted_images.decode_grey`.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

# What reading a file that is not a (complete, supported) image raises
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")
_STRIP_ROWS = 256  # wide images are converted to 8 bits this many rows at a time (bounded temporaries)


def bit_depth(pixels: np.ndarray) -> int:
    """The bits an integer image's data actually uses: the fewest (at least 8) that hold its maximum.

    PNG stores 10-, 12- and 14-bit detector data in 16-bit containers; dividing by 65535 would leave
    12-bit data (0..4095) nearly black, so each image is scaled by the depth its values need."""
    top = int(pixels.max(initial=0))
    return max(8, top.bit_length())


def to_grey(img: Image.Image) -> np.ndarray:
    """8/16-bit grey, RGB or RGBA -> (H, W) uint8 grey; wider-than-8-bit data is scaled by its bit depth.

    16-bit data is converted a strip of rows at a time into the 8-bit result (the same arithmetic as
    whole): a 100 MB 16-bit image no longer needs 1 GB of float temporaries."""
    if img.mode in _SIXTEEN_BIT:
        top = max(0, int(img.getextrema()[1]))
        scale = np.float32(255.0 / (2 ** bit_depth(np.array([top])) - 1))
        width, height = img.size
        out = np.empty((height, width), np.uint8)
        for top_row in range(0, height, _STRIP_ROWS):
            strip = np.asarray(img.crop((0, top_row, width, min(height, top_row + _STRIP_ROWS))))
            out[top_row : top_row + len(strip)] = np.rint(strip.astype(np.float32) * scale).clip(0, 255)
        return out
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8)


def read_grey(source: str | os.PathLike | bytes) -> np.ndarray:
    """A file's path, or its bytes, -> (H, W) uint8 grey at the file's own resolution."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        return to_grey(img)


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W) uint8 -> (size, size) uint8, bilinear with PIL's reducing gap (fast, antialiased)."""
    if pixels.shape == (size, size):
        return pixels
    img = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def read_image(path: str, size: int) -> tuple[np.ndarray | None, tuple[int, int], str | None]:
    """(pixels, source (height, width), None), or (None, (0, 0), "path: reason") for a file that
    cannot be read as an image (oversized ones included: PIL's DecompressionBombError)."""
    try:
        pixels = read_grey(path)
        return resize(pixels, size), pixels.shape, None
    except IMAGE_ERRORS as err:
        return None, (0, 0), f"{path}: {type(err).__name__}: {err}"
