"""Batched inference: a model's probabilities over the splits of a prepared dataset or over image files.

Nothing here logs or evaluates; `cxr.reporting` turns predictions into numbers and artifacts.
Every cxr model takes raw grey uint8 images of its input size, so files only need reading and
resizing the way the cache does it (`cxr.data.cache.load_resized`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cxr.data.cache import read_image
from cxr.data.prepared import PreparedData


@dataclass(frozen=True)
class Predictions:
    """One split's ground truth, model probabilities and patient ids (for the patient-level bootstrap)."""

    labels: np.ndarray  # (N, pathologies) 0/1
    scores: np.ndarray  # (N, pathologies) probabilities
    patients: np.ndarray  # (N,)


@dataclass(frozen=True)
class FilePredictions:
    """Probabilities for the files that could be read, and why the others could not."""

    paths: list[str]  # the readable files, in the order given
    scores: np.ndarray  # (len(paths), pathologies)
    failures: dict[str, str]  # path -> reason


def input_size(model) -> int:
    """The square side a model's `image` input takes."""
    shape = model.input_shape
    return int(shape[1])


def predict_splits(
    model, data: PreparedData, splits: Iterable[str], batch_size: int
) -> dict[str, Predictions]:
    """Score the given splits of `data` in a fixed order, without augmentation."""
    from cxr.data.pipeline import make_dataset

    out = {}
    for split in dict.fromkeys(splits):
        rows = data.rows[split]
        batches = make_dataset(data.images, data.labels, rows, batch_size=batch_size)
        scores = model.predict(batches, verbose=0)
        out[split] = Predictions(data.labels[rows], scores, data.patients[rows])
    return out


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(model, paths: Sequence[str], batch_size: int = 32) -> FilePredictions:
    """Read, resize and score image files (PNG/JPEG, 8/16-bit grey, RGB, RGBA) in batches.

    A file that cannot be read is named in `failures` and the others are still scored.
    """
    size = input_size(model)
    images: list[np.ndarray] = []
    readable: list[str] = []
    failures: dict[str, str] = {}
    for path in paths:
        pixels, reason = read_image(str(path), size)
        if pixels is None:
            failures[str(path)] = reason
        else:
            images.append(pixels)
            readable.append(str(path))
    scores = [
        np.asarray(model.predict_on_batch(np.stack(chunk)[..., None]))
        for chunk in _batches(images, batch_size)
    ]
    width = int(model.output_shape[-1])
    return FilePredictions(
        readable, np.concatenate(scores) if scores else np.empty((0, width), np.float32), failures
    )
