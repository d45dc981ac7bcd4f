"""Batched inference: a model's probabilities over the splits of a prepared dataset or over image files.

Nothing here logs or evaluates; `cxr.evaluation.report` turns predictions into numbers and artifacts.
Every cxr model takes raw grey uint8 images of its input size, so files only need reading and
resizing the way the cache does it (`cxr.data.images`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from cxr.data.pipeline import CacheBatches
from cxr.data.prepared import PreparedData, load_prepared
from cxr.data.tta import NO_VIEWS, Views
from cxr.data.untrusted_images import MAX_IMAGE_PIXELS
from cxr.runtime import interrupt
from cxr.runtime.errors import CxrError
from cxr.serving.forward import forward_views
from cxr.serving.image_files import read_regular_file

if TYPE_CHECKING:
    from cxr.config import DatasetConfig  # a type only: config sits above serving
    from cxr.serving.pyfunc import CxrModel


@dataclass(frozen=True)
class Predictions:
    """One split's ground truth, model probabilities and patient ids (for the patient-level bootstrap)."""

    labels: np.ndarray  # (N, pathologies) 0/1
    scores: np.ndarray  # (N, pathologies) probabilities
    patients: np.ndarray  # (N,)
    # (N rows) image_id and what subgroups are cut by (sex, age, view, follow_up) where the dataset has them
    metadata: pd.DataFrame | None = None

    def take(self, keep: np.ndarray) -> Predictions:
        """These rows only (a boolean mask or indices), in that order."""
        meta = None if self.metadata is None else self.metadata[keep].reset_index(drop=True)
        return Predictions(self.labels[keep], self.scores[keep], self.patients[keep], meta)


@dataclass(frozen=True)
class FilePredictions:
    """Probabilities for the files that could be read, and why the others could not."""

    paths: list[str]  # the readable files, in the order given
    scores: np.ndarray  # (len(paths), pathologies)
    failures: dict[str, str]  # path -> reason


def predict_splits(
    model: keras.Model,
    data: PreparedData,
    splits: Iterable[str],
    batch_size: int,
    views: Views = NO_VIEWS,
    only: Collection[str] | None = None,
) -> dict[str, Predictions]:
    """Score the given splits of `data` in a fixed order, without training's random augmentation, with the
    model's one compiled inference (`cxr.serving.forward`: no retracing for the short last batch); with
    test-time `views`, each image's probabilities are their mean over its views. `only`: the image ids
    to score (the rest stay NaN), for a member whose scores on other images would be thrown away."""
    out = {}
    for split in dict.fromkeys(splits):
        rows = data.rows[split]
        scored = np.ones(len(rows), bool)
        if only is not None:
            scored = data.table["image_id"].iloc[rows].isin(only).to_numpy()
        batches = CacheBatches(data.images, data.labels, rows[scored], batch_size=batch_size)
        parts = [np.empty((0, model.outputs[0].shape[-1]), np.float32)]
        for index in range(len(batches)):
            parts.append(forward_views(model, batches[index][0], views))
            interrupt.raise_pending()
        scores = np.full((len(rows), parts[0].shape[1]), np.nan, np.float32)
        scores[scored] = np.concatenate(parts)
        out[split] = Predictions(data.labels[rows], scores, data.patients[rows], split_metadata(data, rows))
    return out


METADATA_COLUMNS = ("image_id", "sex", "age", "view", "follow_up")


def split_metadata(data: PreparedData, rows: np.ndarray) -> pd.DataFrame:
    """The rows' image ids and subgroup columns (those the dataset has), in the rows' order."""
    columns = [c for c in METADATA_COLUMNS if c in data.table.columns]
    return data.table.iloc[rows][columns].reset_index(drop=True)


def predict_members(
    model: CxrModel,
    dataset_cfg: DatasetConfig,
    splits: Iterable[str],
    batch_size: int,
    logged_split: pd.DataFrame | None = None,
    split_source: str = "",
    only: Sequence[Collection[str] | None] | None = None,
) -> tuple[list[dict[str, np.ndarray]], PreparedData]:
    """Each member of a cxr model (`cxr.serving.pyfunc.CxrModel`) scored on a dataset's splits.

    Each member reads the dataset's cache at its own input size (built on first use), so an ensemble
    of members trained at 224 and 320 px sees what each was trained on; every member is scored over the
    model's test-time views (`CxrModel.views`, from its spec); `only[i]`: the image ids member i scores
    (NaN elsewhere; None: all). Returns one {split: scores} per member and the data at the first member's
    size (rows align across sizes).
    """
    splits = list(dict.fromkeys(splits))
    first_size = model.spec.image_sizes[0]
    by_size: dict[int, PreparedData] = {}  # members at one size share the table and the cache
    per_member = []
    only = only or [None] * len(model.members)
    for member, size, ids in zip(model.members, model.spec.image_sizes, only, strict=True):
        if size not in by_size:
            cfg = OmegaConf.merge(dataset_cfg, {"image_size": size})
            by_size[size] = data = load_prepared(cfg, logged_split, split_source, warn=not by_size)
            if any(not np.array_equal(by_size[first_size].rows[s], data.rows[s]) for s in splits):
                raise CxrError(f"the {size}px cache has other readable images than the first member's")
        scores = predict_splits(member, by_size[size], splits, batch_size, model.views, ids)
        per_member.append({s: p.scores for s, p in scores.items()})
    return per_member, by_size[first_size]


def combined(
    model: CxrModel, member_scores: list[dict[str, np.ndarray]], data: PreparedData
) -> dict[str, Predictions]:
    """The model's predictions per split from its members' scores (their weighted mean)."""
    return {
        s: Predictions(
            data.labels[data.rows[s]],
            model.combine([m[s] for m in member_scores]),
            data.patients[data.rows[s]],
            split_metadata(data, data.rows[s]),
        )
        for s in member_scores[0]
    }


def predict_model_splits(
    model: CxrModel,
    dataset_cfg: DatasetConfig,
    splits: Iterable[str],
    batch_size: int,
    logged_split: pd.DataFrame | None = None,
    split_source: str = "",
) -> tuple[dict[str, Predictions], PreparedData]:
    """A cxr model (one member or several) scored on a dataset's splits: predict_members, combined."""
    member_scores, data = predict_members(model, dataset_cfg, splits, batch_size, logged_split, split_source)
    return combined(model, member_scores, data), data


def predict_files(
    model: CxrModel, paths: Sequence[str], batch_size: int = 32, max_pixels: int = MAX_IMAGE_PIXELS
) -> FilePredictions:
    """Score image files (PNG/JPEG of any size; 8/16-bit grey, RGB, RGBA) with a cxr model, in batches.

    `model` is a `cxr.serving.pyfunc.CxrModel`: each file is checked and decoded as a served request's
    rows are (`CxrModel.decoded`, at most `max_pixels` an image) and kept only at the members' sizes. A
    file that cannot be read is named in `failures` with the reason, and the others are still scored.
    """
    readable: list[str] = []
    inputs: list[dict[int, np.ndarray]] = []
    failures: dict[str, str] = {}
    for path in map(str, paths):
        try:
            inputs.append(model.decoded(read_regular_file(path), path, max_pixels))
            readable.append(path)
        except CxrError as err:
            failures[path] = str(err)
    return FilePredictions(readable, model.score(inputs, batch_size), failures)
