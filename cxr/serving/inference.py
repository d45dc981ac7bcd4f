"""Batched inference: a model's probabilities over the splits of a prepared dataset or over image files.

Nothing here logs or evaluates; `cxr.evaluation.report` turns predictions into numbers and artifacts.
Every cxr model takes raw grey uint8 images of its input size, so files only need reading and
resizing the way the cache does it (`cxr.data.images`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from cxr.data.images import IMAGE_ERRORS, read_grey
from cxr.data.pipeline import CacheBatches
from cxr.data.prepared import PreparedData, load_prepared
from cxr.runtime import interrupt
from cxr.runtime.errors import CxrError

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


@dataclass(frozen=True)
class FilePredictions:
    """Probabilities for the files that could be read, and why the others could not."""

    paths: list[str]  # the readable files, in the order given
    scores: np.ndarray  # (len(paths), pathologies)
    failures: dict[str, str]  # path -> reason


def predict_splits(
    model: keras.Model, data: PreparedData, splits: Iterable[str], batch_size: int
) -> dict[str, Predictions]:
    """Score the given splits of `data` in a fixed order, without augmentation."""
    out = {}
    for split in dict.fromkeys(splits):
        rows = data.rows[split]
        batches = CacheBatches(data.images, data.labels, rows, batch_size=batch_size)
        scores = model.predict(batches, verbose=0, callbacks=[interrupt.callback()])
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
) -> tuple[list[dict[str, np.ndarray]], PreparedData]:
    """Each member of a cxr model (`cxr.serving.pyfunc.CxrModel`) scored on a dataset's splits.

    Each member reads the dataset's cache at its own input size (built on first use), so an ensemble
    of members trained at 224 and 320 px sees what each was trained on. Returns one {split: scores}
    per member and the data at the first member's size (rows align across sizes).
    """
    splits = list(dict.fromkeys(splits))
    first_size = model.spec.image_sizes[0]
    by_size: dict[int, PreparedData] = {}  # members at one size share the table and the cache
    per_member = []
    for member, size in zip(model.members, model.spec.image_sizes, strict=True):
        if size not in by_size:
            cfg = OmegaConf.merge(dataset_cfg, {"image_size": size})
            by_size[size] = data = load_prepared(cfg, logged_split, split_source, warn=not by_size)
            if any(not np.array_equal(by_size[first_size].rows[s], data.rows[s]) for s in splits):
                raise CxrError(f"the {size}px cache has other readable images than the first member's")
        scores = predict_splits(member, by_size[size], splits, batch_size)
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


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(model: CxrModel, paths: Sequence[str], batch_size: int = 32) -> FilePredictions:
    """Score image files (PNG/JPEG of any size; 8/16-bit grey, RGB, RGBA) with a cxr model, in batches.

    `model` is a `cxr.serving.pyfunc.CxrModel`: each member sees the files resized to its own input size. A
    file that cannot be read is named in `failures` with the reason, and the others are still scored.
    """
    readable: list[str] = []
    scores: list[np.ndarray] = []
    failures: dict[str, str] = {}
    for chunk in _batches(list(paths), batch_size):
        images = []
        for path in chunk:
            try:
                images.append(read_grey(path))
                readable.append(str(path))
            except IMAGE_ERRORS as err:
                failures[str(path)] = f"{path}: not a readable image ({type(err).__name__}: {err})"
        if images:
            scores.append(model.probabilities(images, batch_size))
    width = len(model.pathologies)
    return FilePredictions(
        readable, np.concatenate(scores) if scores else np.empty((0, width), np.float32), failures
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def collect_images(images: str | Sequence[str]) -> tuple[list[str], dict[str, str], bool]:
    """(files to read, {path: why not}, whether a folder was given)."""
    entries = [images] if isinstance(images, str) else list(images)
    if not entries:
        raise CxrError("images= is empty: give a file, a folder or a list [a.png,b.png]")
    files, missing, folder = [], {}, False
    for entry in map(str, entries):
        path = Path(entry).expanduser()
        if path.is_dir():
            folder = True
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                missing[entry] = f"{entry}: no PNG or JPEG files in this folder"
            files += found
        elif path.is_file():
            files.append(str(path))
        else:
            missing[entry] = f"{entry}: no such file or folder"
    return files, missing, folder
