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


def box_mask(shape: tuple[int, int], boxes: np.ndarray, pad: float = 0.0) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies in any of the (k, 4) x, y, w, h boxes grown by `pad` a side."""
    height, width = shape
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cols, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in boxes:
        inside_x = (cols >= x - pad) & (cols <= x + w + pad)
        inside_y = (rows >= y - pad) & (rows <= y + h + pad)
        mask |= inside_y[:, None] & inside_x[None, :]
    return mask


def top_mask(heatmap: np.ndarray, percent: float) -> np.ndarray:
    """The map's top `percent`% pixels (ties at the cut kept; zeros never: they are no evidence)."""
    flat = heatmap.ravel()
    keep = max(1, int(round(flat.size * percent / 100.0)))
    cut = np.partition(flat, flat.size - keep)[flat.size - keep]
    return (heatmap >= cut) & (heatmap > 0)


def score_map(
    heatmap: np.ndarray, boxes: np.ndarray, tolerance_px: float, top_percents: Sequence[float]
) -> dict[str, float]:
    """Every measure of one (H, W) heatmap against one finding's (k, 4) boxes in the same frame."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    scores = dict.fromkeys(measures(top_percents), 0.0)
    total = heatmap.sum()
    if not total > 0:
        return scores
    inside = box_mask(heatmap.shape, boxes)
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    scores[POINTING] = float(box_mask(heatmap.shape, boxes, tolerance_px)[peak])
    for percent in top_percents:
        top = top_mask(heatmap, percent)
        union = np.count_nonzero(top | inside)
        scores[iou_measure(percent)] = np.count_nonzero(top & inside) / union if union else 0.0
    scores[MASS_IN_BOX] = float(heatmap[inside].sum() / total)
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
