"""Where a heatmap looks, scored against expert boxes: pointing game, IoU of its top pixels, mass in box.

Pure NumPy on one (H, W) heatmap and the boxes of one finding on that image, in the same pixel frame
(NIH's 1024 px one: `cxr.data.boxes.BOX_FRAME`); then per finding and pooled, with the patient-level
bootstrap of `cxr.evaluation.scoring`. A pixel belongs to a box when its centre lies inside it; several
boxes of one finding count as their union. A map with no evidence (all zero) points nowhere and scores 0
on every measure, as it would for a radiologist asking where the model looked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr.evaluation.scoring import _interval, _nanmean_rows, patient_bootstrap

POINTING = "pointing"  # 1 if the map's maximum lies inside a box (within the tolerance), else 0
MASS_IN_BOX = "mass_in_box"  # share of the map's total inside the boxes


def iou_measure(percent: float) -> str:
    """`iou_top10`: IoU of the map's top 10% pixels with the union of boxes (MLflow names allow no `@`)."""
    return f"iou_top{percent:g}"


def measures(top_percents: Sequence[float]) -> tuple[str, ...]:
    return (POINTING, *(iou_measure(p) for p in top_percents), MASS_IN_BOX)


def _spans(boxes: np.ndarray, shape: tuple[int, int], pad: float) -> list[tuple[slice, slice]]:
    """Each x, y, w, h box (grown by `pad` a side) as the rows and columns whose pixel centres it holds."""
    height, width = shape
    spans = []
    for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        # pixel i's centre i + 0.5 lies in [lo, hi] for i in ceil(lo - 0.5) .. floor(hi - 0.5)
        c0, c1 = max(0, int(np.ceil(x - pad - 0.5))), min(width, int(np.floor(x + w + pad - 0.5)) + 1)
        r0, r1 = max(0, int(np.ceil(y - pad - 0.5))), min(height, int(np.floor(y + h + pad - 0.5)) + 1)
        spans.append((slice(r0, max(r0, r1)), slice(c0, max(c0, c1))))
    return spans


def box_mask(shape: tuple[int, int], boxes: np.ndarray, pad: float = 0.0) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies in any of the (k, 4) x, y, w, h boxes grown by `pad` a side."""
    mask = np.zeros(shape, dtype=bool)
    for rows, cols in _spans(boxes, shape, pad):
        mask[rows, cols] = True
    return mask


def top_cuts(heatmap: np.ndarray, top_percents: Sequence[float]) -> np.ndarray:
    """The value at which each top `percent`% of the map's pixels begins (one partial sort for all)."""
    flat = heatmap.ravel()
    keep = np.maximum(1, np.rint(flat.size * np.asarray(top_percents, np.float64) / 100.0).astype(np.int64))
    return np.partition(flat, flat.size - keep)[flat.size - keep]


def score_map(
    heatmap: np.ndarray, boxes: np.ndarray, tolerance_px: float, top_percents: Sequence[float]
) -> dict[str, float]:
    """Every measure of one (H, W) heatmap against one finding's (k, 4) boxes in the same frame.

    The top k% are the pixels at or above the k% cut (ties at the cut kept) that are above 0 (zero is
    no evidence); IoU compares them with the union of the boxes.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    scores = dict.fromkeys(measures(top_percents), 0.0)
    total = float(heatmap.sum(dtype=np.float64))
    if not total > 0:
        return scores
    inside = box_mask(heatmap.shape, boxes)
    within = heatmap[inside]
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    spans = _spans(boxes, heatmap.shape, tolerance_px)
    scores[POINTING] = float(any(r.start <= row < r.stop and c.start <= col < c.stop for r, c in spans))
    for percent, cut in zip(top_percents, top_cuts(heatmap, top_percents), strict=True):
        level = max(float(cut), float(np.finfo(np.float32).tiny))  # zeros are never among the top
        top, both = np.count_nonzero(heatmap >= level), np.count_nonzero(within >= level)
        union = top + len(within) - both
        scores[iou_measure(percent)] = float(both / union) if union else 0.0
    scores[MASS_IN_BOX] = float(within.sum(dtype=np.float64) / total)
    return scores


@dataclass(frozen=True)
class LocalisationReport:
    """Per finding (`table`: n_images, each measure and its interval) and pooled (`summary`: each
    measure's mean over findings, `<measure>_mean`, with `_ci_low`/`_ci_high` when resampled)."""

    table: pd.DataFrame
    summary: dict[str, float]


def _weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R,) means of `values` under each column of `weights` (rows aligned); NaN where all weights are 0."""
    total = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, values @ weights / np.where(total > 0, total, 1.0), np.nan)


def summarise(
    pairs: pd.DataFrame,
    findings: Sequence[str],
    names: Sequence[str],
    resamples: int,
    confidence: float,
    seed: int,
) -> LocalisationReport:
    """`pairs` has one row per scored (image, finding): `finding`, `patient`, and the measures `names`.

    A finding's value is the mean over its images; the pooled value the mean over findings with images
    (like `auc_mean`). Intervals resample patients, so an image's findings move together.
    """
    present = [f for f in findings if (pairs["finding"] == f).any()]
    table = pd.DataFrame(index=pd.Index(present, name="finding"))
    table["n_images"] = [int((pairs["finding"] == f).sum()) for f in present]
    ones = np.ones((len(pairs), 1))
    if resamples > 0:
        weights, owner = patient_bootstrap(pairs["patient"].to_numpy(), resamples, seed)
        drawn = weights[owner].astype(np.float64)
    summary: dict[str, float] = {}
    for name in names:
        values = pairs[name].to_numpy(dtype=np.float64)
        rows = [(pairs["finding"] == f).to_numpy() for f in present]
        point = np.array([_weighted_means(values[r], ones[r])[0] for r in rows])
        table[name] = point
        summary[f"{name}_mean"] = float(point.mean()) if len(point) else float("nan")
        if resamples > 0 and present:
            boot = np.stack([_weighted_means(values[r], drawn[r]) for r in rows], axis=1)  # (R, findings)
            table[f"{name}_ci_low"], table[f"{name}_ci_high"] = _interval(boot, confidence)
            low, high = _interval(_nanmean_rows(boot), confidence)
            summary[f"{name}_mean_ci_low"], summary[f"{name}_mean_ci_high"] = float(low), float(high)
    return LocalisationReport(table, summary)


# ------------------------------------------------------------------ reference heatmaps
def random_maps(n: int, cells: int, seed: int) -> np.ndarray:
    """(n, cells, cells) uniform noise: a heatmap that knows nothing, at a feature map's resolution."""
    return np.random.default_rng(seed).random((n, cells, cells), dtype=np.float32)


def centre_map(cells: int) -> np.ndarray:
    """(cells, cells) a Gaussian bump on the image centre (sigma a quarter of the side): the prior of a
    model that always looks at the middle of the chest."""
    grid = (np.arange(cells) + 0.5) / cells - 0.5
    bump = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * 0.25**2))
    return (bump / bump.max()).astype(np.float32)
