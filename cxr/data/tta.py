"""Test-time augmentation: a few fixed views of a batch of grey uint8 images, whose scores are averaged.

A mature evaluation averages a model's probabilities over small, deterministic changes of each image
(the same image a few pixels up, down, left, right, a little closer or further), so a finding does not
hinge on where the radiographer framed the chest. Chest X-rays are not left-right symmetric (the heart
sits left, the liver right), so a mirrored view is only an explicit opt-in.

Every view is an axis-aligned shift and/or zoom about the centre, sampled bilinearly with black beyond the
image's edges, as the training augmentation fills them (`cxr.models.layers`). Pure NumPy: the same views
for evaluation, `cxr.predict` and serving, whatever the Keras backend. The identity view is the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

IDENTITY = (1.0, 0.0, 0.0, False)  # (zoom, row shift, column shift, mirrored) of the image itself
SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (rows, columns) in units of the shift: up, down, left, right


@dataclass(frozen=True)
class Views:
    """Which views of each image are scored: the image itself, then 4 shifts by `shift_fraction` of the
    side (when > 0), a zoom in and a zoom out by `zoom_fraction` (when > 0), and its mirror image
    (`horizontal_flip`)."""

    shift_fraction: float = 0.0
    zoom_fraction: float = 0.0
    horizontal_flip: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.shift_fraction < 0.5 or not 0.0 <= self.zoom_fraction < 0.5:
            raise ValueError(f"shift and zoom fractions must lie in [0, 0.5): {self}")

    @classmethod
    def of(cls, settings: Mapping[str, Any] | Any | None) -> Views:
        """Views from a model spec's dict, a config node with these keys (and `enabled`), or None (the
        image alone). A config node that is not enabled is the image alone."""
        if settings is None:
            return cls()
        get = (
            settings.get
            if isinstance(settings, Mapping)
            else lambda key, default: getattr(settings, key, default)
        )
        if not get("enabled", True):
            return cls()
        return cls(
            float(get("shift_fraction", 0.0)),
            float(get("zoom_fraction", 0.0)),
            bool(get("horizontal_flip", False)),
        )

    @property
    def transforms(self) -> list[tuple[float, float, float, bool]]:
        """(zoom, row shift, column shift, mirrored) of each view, shifts as shares of the side; first the
        identity."""
        out = [IDENTITY]
        if self.shift_fraction > 0:
            out += [(1.0, dy * self.shift_fraction, dx * self.shift_fraction, False) for dy, dx in SHIFTS]
        if self.zoom_fraction > 0:
            out += [(1.0 + self.zoom_fraction, 0.0, 0.0, False), (1.0 - self.zoom_fraction, 0.0, 0.0, False)]
        if self.horizontal_flip:
            out.append((1.0, 0.0, 0.0, True))
        return out

    @property
    def count(self) -> int:
        """How many views are scored per image (1: no test-time augmentation)."""
        return len(self.transforms)

    @property
    def enabled(self) -> bool:
        return self.count > 1

    def spec(self) -> dict[str, Any]:
        """What a logged model's spec stores: {} for the image alone (as models before TTA)."""
        return asdict(self) if self.enabled else {}

    def describe(self) -> str:
        """`5 views (shift 0.03)`, `1 view (off)`: for logs, params and docs."""
        parts = [f"shift {self.shift_fraction:g}"] if self.shift_fraction > 0 else []
        parts += [f"zoom {self.zoom_fraction:g}"] if self.zoom_fraction > 0 else []
        parts += ["flip"] if self.horizontal_flip else []
        return f"{self.count} view{'s' if self.count > 1 else ''} ({', '.join(parts) or 'off'})"

    def apply(self, batch: np.ndarray) -> np.ndarray:
        """(views, N, H, W, ...) uint8 from an (N, H, W, ...) uint8 batch (with a channel axis or not)."""
        batch = np.asarray(batch)
        if batch.ndim < 3:
            raise ValueError(f"expected a batch (N, H, W[, C]) of images, got shape {batch.shape}")
        height, width = batch.shape[1:3]
        if not self.enabled:
            return batch[None]
        pixels = batch.astype(np.float32)
        out = np.empty((self.count, *batch.shape), np.uint8)
        for i, (zoom, dy, dx, mirrored) in enumerate(self.transforms):
            if (zoom, dy, dx, mirrored) == IDENTITY:
                out[i] = batch
                continue
            view = _resample(pixels, 1, _taps(height, zoom, dy))
            view = _resample(view, 2, _taps(width, zoom, dx, mirrored))
            out[i] = np.clip(np.rint(view), 0, 255)
        return out


def _taps(
    side: int, zoom: float, shift: float, mirrored: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bilinear sampling along one axis, as two (index, weight) taps per output pixel: pixel i reads the
    input at centre + (i - centre) / zoom - shift * side (mirrored: counted from the other end); a tap
    outside the image weighs 0 (black)."""
    centre = (side - 1) / 2
    source = centre + (np.arange(side) - centre) / zoom - shift * side
    if mirrored:
        source = source[::-1]
    low = np.floor(source).astype(int)
    frac = (source - low).astype(np.float32)
    taps = []
    for index, weight in ((low, 1.0 - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < side)
        taps.append((np.clip(index, 0, side - 1), np.where(inside, weight, 0.0).astype(np.float32)))
    return taps


def _resample(pixels: np.ndarray, axis: int, taps: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """`pixels` resampled along `axis` (1: rows, 2: columns) by the taps' weighted sum."""
    shape = [1] * pixels.ndim
    shape[axis] = -1
    return sum(np.take(pixels, index, axis=axis) * weight.reshape(shape) for index, weight in taps)


NO_VIEWS = Views()  # the image alone: no test-time augmentation


def chosen(setting: Any, own: Mapping[str, Any]) -> Views:
    """A command's views when its setting says (`enabled` true or false), else `own`: the views a logged
    model carries (its spec's `tta`), those its calibrator and thresholds were chosen with."""
    return Views.of(own) if getattr(setting, "enabled", None) is None else Views.of(setting)
