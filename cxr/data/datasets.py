"""Dataset registry: each entry turns its config into one table of images with labels and split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.data import nih, splits, synthetic
from cxr.errors import CxrError
from cxr.registry import Registry

DATASETS: Registry = Registry("dataset")


def _from_release(release: nih.NihRelease, cfg) -> pd.DataFrame:
    meta = release.metadata.copy()
    meta["split"] = splits.assign(meta, release.train_val, release.test, cfg)
    return meta.dropna(subset=["split"]).reset_index(drop=True)


@DATASETS.register("synthetic")
def synthetic_dataset(cfg) -> pd.DataFrame:
    folder = synthetic.ensure_dataset(cfg.generator, cfg.root)
    return _from_release(nih.load_release(folder, cfg.allow_missing_images), cfg)


@DATASETS.register("nih")
def nih_dataset(cfg) -> pd.DataFrame:
    if not cfg.root:
        raise CxrError("dataset.root is not set: pass dataset.root=/path/to/ChestX-ray14 or set CXR_NIH_ROOT")
    return _from_release(nih.load_release(Path(cfg.root), cfg.allow_missing_images), cfg)


def load_table(cfg) -> pd.DataFrame:
    """Image Index, Patient ID, the 14 labels, demographics, path and split: one row per image."""
    return DATASETS.get(cfg.name)(cfg)
