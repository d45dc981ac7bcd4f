"""Dataset registry: each entry turns its config into one table of images with labels and split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cxr.data import nih, splits, synthetic
from cxr.runtime.builders import Builders
from cxr.runtime.errors import CxrError

if TYPE_CHECKING:  # types only: config sits above data
    from cxr.config import DatasetConfig, NihDatasetConfig, SyntheticDatasetConfig

DATASETS: Builders = Builders("dataset")


@dataclass(frozen=True)
class DatasetTable:
    """One row per image (image_id, patient_id, one 0/1 column per pathology, path, split, ...) and
    the dataset's own pathology list, in the order of the model's outputs."""

    table: pd.DataFrame
    pathologies: tuple[str, ...]
    boxes: pd.DataFrame | None = None  # the release's expert boxes (nih.read_bboxes), when it has them


def _from_release(release: nih.NihRelease, cfg: DatasetConfig) -> DatasetTable:
    meta = release.metadata.copy()
    meta["split"] = splits.assign(meta, release.pathologies, release.train_val, release.test, cfg)
    table = meta.dropna(subset=["split"]).reset_index(drop=True)
    return DatasetTable(table, release.pathologies, release.bounding_boxes())


@DATASETS.register("synthetic")
def synthetic_dataset(cfg: SyntheticDatasetConfig) -> DatasetTable:
    folder = synthetic.ensure_dataset(cfg.generator, cfg.root)
    return _from_release(nih.load_release(folder, cfg.allow_missing_images), cfg)


@DATASETS.register("nih")
def nih_dataset(cfg: NihDatasetConfig) -> DatasetTable:
    if not cfg.root:
        raise CxrError("dataset.root is not set: pass dataset.root=/path/to/ChestX-ray14 or set CXR_NIH_ROOT")
    return _from_release(nih.load_release(Path(cfg.root), cfg.allow_missing_images), cfg)


def load_table(cfg: DatasetConfig) -> DatasetTable:
    """The configured dataset (`cfg` is the `dataset` config group) with its split assigned."""
    return DATASETS.get(cfg.name)(cfg)
