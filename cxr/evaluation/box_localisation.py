"""A model's heatmaps on a split's boxed images, scored against the boxes and logged like any metric.

Runs wherever a model is at hand with its test split (`cxr.train`, `cxr.evaluate`, `cxr.ensemble`, a
sweep's best trials through `cxr.evaluate`), only on the images with boxes, in batches. Each (image,
finding) with a box of that finding is scored whatever the model predicted: the question is where it
looks, not whether it is right. Heatmaps are brought to the boxes' frame (`BOX_FRAME`, NIH's 1024 px) as
`heatmap_at` brings them to an image; an ensemble's heatmap is its members' weighted mean.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import mlflow
import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from tqdm import tqdm

from cxr.data.boxes import BOX_FRAME, COORDINATES
from cxr.data.images import read_grey
from cxr.data.prepared import PreparedData, load_prepared
from cxr.evaluation.localisation import LocalisationReport, measures, score_map, summarise
from cxr.runtime.errors import CxrError
from cxr.serving.gradcam import ensemble_heatmaps, heatmap_at, overlay_png
from cxr.tracking import names as mn

if TYPE_CHECKING:
    from cxr.config import DatasetConfig, EvaluationConfig, LocalisationConfig

SPLIT = mn.TEST  # the split NIH boxed: localisation is a test measure, reported and never chosen by
ImagesAt = Callable[[int, np.ndarray], np.ndarray]  # (input side, table rows) -> (n, side, side) uint8


@dataclass(frozen=True)
class Localisation:
    """One model's localisation on one split: per (image, finding) scores, the report and its metrics."""

    method: str
    split: str
    pairs: pd.DataFrame  # row, image_id, patient, finding and one column per measure
    report: LocalisationReport
    metrics: dict[str, float]


def split_boxes(data: PreparedData, split: str) -> pd.DataFrame:
    """The boxes on the readable images of `split` (empty without any)."""
    if data.boxes is None:
        return pd.DataFrame(columns=["row", "image_id", "finding", *COORDINATES])
    return data.boxes[data.boxes["row"].isin(data.rows[split])]


def wanted(cfg: LocalisationConfig, data: PreparedData, split: str = SPLIT) -> bool:
    """`enabled`: auto (when `split` has boxed images), true (an error without them) or false."""
    if cfg.enabled is False:
        return False
    if len(split_boxes(data, split)):
        return True
    if cfg.enabled is True:
        raise CxrError(
            f"evaluation.localisation.enabled=true, but no {split} image has an expert box (the dataset has "
            "no BBox_List_2017.csv, or none of its boxes is on a readable test image); pass "
            "evaluation.localisation.enabled=auto to score localisation only where boxes exist"
        )
    return False


def localise(
    members: Sequence[keras.Model],
    weights: Sequence[float],
    images_at: ImagesAt,
    data: PreparedData,
    cfg: EvaluationConfig,
    split: str = SPLIT,
) -> Localisation:
    """Score the members' (weighted mean) heatmaps on every boxed (image, finding) of `split`."""
    loc = cfg.localisation
    boxes = split_boxes(data, split)
    sizes = [int(m.input_shape[1]) for m in members]
    names = measures(loc.top_percents)
    rows = []
    with tqdm(total=boxes.groupby(["row", "finding"]).ngroups, desc="localisation", unit="img") as bar:
        for finding, found in boxes.groupby("finding", sort=False):
            k = data.pathologies.index(finding)
            by_row = {r: b[list(COORDINATES)].to_numpy() for r, b in found.groupby("row")}
            order = np.array(sorted(by_row))
            for start in range(0, len(order), loc.batch_size):
                chunk = order[start : start + loc.batch_size]
                batches = [images_at(size, chunk) for size in sizes]
                maps = ensemble_heatmaps(members, batches, k, (BOX_FRAME, BOX_FRAME), loc.method, weights)
                for row, heatmap in zip(chunk, maps, strict=True):
                    scores = score_map(heatmap, by_row[row], loc.tolerance_px, loc.top_percents)
                    rows.append({"row": int(row), "finding": finding, **scores})
                bar.update(len(chunk))
    pairs = pd.DataFrame(rows, columns=["row", "finding", *names])
    pairs.insert(1, "image_id", data.table["image_id"].to_numpy()[pairs["row"]])
    pairs.insert(2, "patient", data.patients[pairs["row"]])
    b = cfg.bootstrap
    report = summarise(pairs, data.pathologies, names, b.resamples, b.confidence, b.seed)
    return Localisation(loc.method, split, pairs, report, localisation_metrics(split, report))


def localisation_metrics(split: str, report: LocalisationReport) -> dict[str, float]:
    """`test/localisation/<Finding>/<measure>` and `test/localisation/<measure>_mean`, with intervals."""
    metrics = {mn.localisation(split, k): v for k, v in report.summary.items()}
    for finding, values in report.table.drop(columns="n_images").iterrows():
        metrics.update({mn.localisation(split, k, str(finding)): float(v) for k, v in values.items()})
    return {k: v for k, v in metrics.items() if np.isfinite(v)}


def images_of(data: PreparedData, dataset_cfg: DatasetConfig | None = None, **prepared) -> ImagesAt:
    """Rows of the cache at each member's input side: `data`'s own, or (an ensemble with members at other
    sizes) the dataset prepared at that size (`load_prepared(..., **prepared)`, rows aligned)."""
    caches = {data.image_size: data.images}

    def at(size: int, rows: np.ndarray) -> np.ndarray:
        if size not in caches:
            if dataset_cfg is None:
                raise CxrError(f"no {size}px cache to draw heatmaps from: pass the dataset config")
            cfg = OmegaConf.merge(dataset_cfg, {"image_size": size})
            caches[size] = load_prepared(cfg, warn=False, **prepared).images
        return np.asarray(caches[size][rows])

    return at


def localise_and_log(
    members: Sequence[keras.Model],
    weights: Sequence[float],
    images_at: ImagesAt,
    data: PreparedData,
    cfg: EvaluationConfig,
) -> dict[str, float]:
    """Score and log the model's localisation into the active run when `cfg` and the data call for it;
    returns its metrics (empty when it was not computed), to join the evaluation's."""
    if not wanted(cfg.localisation, data):
        return {}
    result = localise(members, weights, images_at, data, cfg)
    log_localisation(result, members, weights, images_at, data, cfg.localisation.gallery)
    return result.metrics


# ------------------------------------------------------------------ logging
def log_localisation(
    result: Localisation,
    members: Sequence[keras.Model],
    weights: Sequence[float],
    images_at: ImagesAt,
    data: PreparedData,
    gallery: bool,
) -> None:
    """Metrics, the per-finding and per-image tables, the method tag and (with `gallery`) the gallery."""
    mlflow.set_tag(mn.LOCALISATION_METHOD_TAG, result.method)
    mlflow.log_text(result.report.table.to_csv(float_format="%.6g"), mn.localisation_table(result.split))
    per_image = result.pairs.to_csv(index=False, float_format="%.6g")
    mlflow.log_text(per_image, mn.localisation_table(result.split, "localisation_images"))
    if gallery:
        with tempfile.TemporaryDirectory() as folder:
            write_gallery(result, members, weights, images_at, data, Path(folder))
            mlflow.log_artifacts(folder, mn.LOCALISATION_GALLERY)
    mlflow.log_metrics(result.metrics)


def extremes(pairs: pd.DataFrame) -> pd.DataFrame:
    """Each finding's best and worst scored image (by mass in box, then pointing): `rank` best|worst."""
    ordered = pairs.sort_values(["finding", "mass_in_box", "pointing", "image_id"], kind="mergesort")
    best = ordered.groupby("finding", sort=False).tail(1).assign(rank="best")
    worst = ordered.groupby("finding", sort=False).head(1).assign(rank="worst")
    return pd.concat([best, worst]).sort_values(["finding", "rank"], kind="mergesort")


def write_gallery(
    result: Localisation,
    members: Sequence[keras.Model],
    weights: Sequence[float],
    images_at: ImagesAt,
    data: PreparedData,
    folder: Path,
) -> list[Path]:
    """`<Finding>_best.png`, `<Finding>_worst.png`: the image file at its own size, the heatmap over it and
    the expert's boxes outlined, titled with the scores."""
    written = []
    sizes = [int(m.input_shape[1]) for m in members]
    for _, pair in extremes(result.pairs).iterrows():
        row, finding = np.array([pair["row"]]), pair["finding"]
        k = data.pathologies.index(finding)
        batches = [images_at(size, row) for size in sizes]
        heatmap = ensemble_heatmaps(members, batches, k, (BOX_FRAME, BOX_FRAME), result.method, weights)[0]
        image = read_grey(data.table["path"].iloc[int(pair["row"])])
        found = data.boxes[(data.boxes["row"] == pair["row"]) & (data.boxes["finding"] == finding)]
        scale = np.array([image.shape[1], image.shape[0]] * 2) / BOX_FRAME
        hit = "hit" if pair["pointing"] else "miss"
        title = f"{finding} {pair['rank']}: {hit}, {pair['mass_in_box']:.0%} in box"
        target = folder / f"{finding}_{pair['rank']}.png"
        boxes = found[list(COORDINATES)].to_numpy() * scale
        written.append(overlay_png(image, heatmap_at(image.shape, heatmap), target, title=title, boxes=boxes))
    return written
