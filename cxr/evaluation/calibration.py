"""Calibration of predicted probabilities: expected calibration error, Brier score, reliability data.

Bins hold equal numbers of images (equal mass), not equal widths: scores of a rare finding crowd near 0,
where equal-width bins leave all but the first nearly empty and the error is read from a handful of
images. Pure NumPy on (images, pathologies) arrays, like `cxr.evaluation.scoring`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Reliability:
    """One finding's reliability diagram: per bin, mean score (confidence), observed rate and size."""

    confidence: np.ndarray
    observed: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """Mean of |observed - confidence| over bins, weighted by their size."""
        total = self.count.sum()
        if total == 0:
            return float("nan")
        return float(np.sum(self.count * np.abs(self.observed - self.confidence)) / total)


def equal_mass_bins(n: int, bins: int) -> np.ndarray:
    """Bin index of each of n items sorted by score: sizes differ by at most one, the larger bins first
    (NumPy's `array_split`)."""
    sizes = np.full(bins, n // bins)
    sizes[: n % bins] += 1
    return np.repeat(np.arange(bins), sizes)


def reliability(y: np.ndarray, s: np.ndarray, bins: int = 15) -> Reliability:
    """Reliability diagram data of one label: images sorted by score, cut into `bins` equal-mass bins."""
    y, s = np.asarray(y, np.float64), np.asarray(s, np.float64)
    order = np.argsort(s, kind="mergesort")
    which = equal_mass_bins(len(s), bins)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, s[order], minlength=bins) / count
        observed = np.bincount(which, y[order], minlength=bins) / count
    used = count > 0
    return Reliability(confidence[used], observed[used], count[used])


def expected_calibration_error(y: np.ndarray, s: np.ndarray, bins: int = 15) -> float:
    """ECE of one label (equal-mass bins); NaN for no images."""
    return reliability(y, s, bins).ece


def brier(y: np.ndarray, s: np.ndarray) -> float:
    """Mean squared difference between probability and outcome."""
    y, s = np.asarray(y, np.float64), np.asarray(s, np.float64)
    return float(np.mean((s - y) ** 2)) if len(y) else float("nan")


def calibration_table(
    y: np.ndarray, s: np.ndarray, pathologies: Sequence[str], bins: int = 15
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per finding `ece` and `brier`, and pooled over every (image, finding) pair: `ece`, `brier`."""
    y, s = np.asarray(y, np.float64), np.asarray(s, np.float64)
    table = pd.DataFrame(index=pd.Index(list(pathologies), name="disease"))
    table["ece"] = [expected_calibration_error(y[:, k], s[:, k], bins) for k in range(y.shape[1])]
    table["brier"] = [brier(y[:, k], s[:, k]) for k in range(y.shape[1])]
    pooled = {"ece": expected_calibration_error(y.ravel(), s.ravel(), bins), "brier": brier(y, s)}
    return table, pooled
