"""The one way every command gets its data: table, split, cached images, labels, usable rows.

`cxr.train`, `cxr.evaluate`, `cxr.prepare` (and prediction over a split) all call `load_prepared`,
so reading the dataset, assigning or restoring the split, building the image cache and leaving out
unreadable images happen in one place, in one order.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr.data.boxes import place_boxes
from cxr.data.cache import PreparedImages, prepare_images
from cxr.data.datasets import load_table
from cxr.data.splits import SPLIT_NAMES, apply_split
from cxr.runtime.errors import CxrError

if TYPE_CHECKING:
    from cxr.config import DatasetConfig  # a type only: config sits above data


@dataclass(frozen=True)
class PreparedData:
    """A dataset ready for training or evaluation; arrays are aligned with `table`'s rows."""

    table: pd.DataFrame  # image_id, patient_id, the pathologies, path, split, ...
    pathologies: tuple[str, ...]  # the label columns, in the order of the model's outputs
    images: np.ndarray  # (N, size, size) uint8, memory-mapped
    labels: np.ndarray  # (N, len(pathologies)) float32
    patients: np.ndarray  # (N,) patient ids, for the patient-level bootstrap
    rows: dict[str, np.ndarray]  # split -> row indices of its readable images
    cache: PreparedImages
    # expert boxes on this table's images (cxr.data.boxes.place_boxes); None: the dataset has no box file
    boxes: pd.DataFrame | None = None

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])


def usable_rows(
    table: pd.DataFrame, failures: dict[int, str], may_lack: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Row indices of each split without the images the cache could not read; no split may end empty,
    except those in `may_lack` that had no image to begin with."""
    keep = np.ones(len(table), dtype=bool)
    keep[list(failures)] = False
    split = table["split"].to_numpy()
    rows = {s: np.flatnonzero((split == s) & keep) for s in SPLIT_NAMES}
    empty = [s for s, r in rows.items() if len(r) == 0 and not (s in may_lack and not (split == s).any())]
    if empty:
        raise CxrError(f"no readable images left in the {', '.join(empty)} split(s)")
    return rows


def relocated(
    dataset_cfg: DatasetConfig, root: str | None = None, cache_dir: str | None = None
) -> DatasetConfig:
    """A logged run's dataset config, pointed at where its images and cache are now (if they moved)."""
    if root:
        dataset_cfg.root = root
    if cache_dir:
        dataset_cfg.cache_dir = cache_dir
    return dataset_cfg


def load_prepared(
    cfg: DatasetConfig,
    logged_split: pd.DataFrame | None = None,
    split_source: str = "",
    warn: bool = True,
) -> PreparedData:
    """The dataset `cfg` (the `dataset` config group) describes, with its cache built on first use.

    `logged_split` (image_id, split; from a run's split.csv) replaces the configured split, so a
    logged model is always scored on the patients it was not trained on; `split_source` names it in
    errors. A logged split may have no train images: a fold ensemble validates out of fold on all of
    train_val (`cxr.evaluation.fold_ensemble`). With `warn`, unreadable images are named on stderr
    (they are always left out).
    """
    data = load_table(cfg)
    table = data.table
    if logged_split is not None:
        table = apply_split(table, logged_split, split_source or "the logged split")
    cache = prepare_images(table["path"].tolist(), cfg.image_size, cfg.cache_dir)
    if warn and cache.failures:
        print(f"cxr: warning: {cache.failure_report(limit=10)}\nThey are left out.", file=sys.stderr)
    upscaled = cache.upscale_warning() if warn else None
    if upscaled:
        print(f"cxr: warning: {upscaled}", file=sys.stderr)
    return PreparedData(
        table=table,
        pathologies=data.pathologies,
        images=cache.images,
        labels=table[list(data.pathologies)].to_numpy(dtype=np.float32),
        patients=table["patient_id"].to_numpy(),
        rows=usable_rows(table, cache.failures, ("train",) if logged_split is not None else ()),
        cache=cache,
        boxes=place_boxes(data.boxes, table, data.pathologies, cfg.image_size),
    )
