"""The data a run used, as MLflow dataset inputs: the run page's "Datasets" and the runs table's
dataset filter show which images (and which patient split) each run trained, validated and tested on;
and how many positives each finding has in each split (an artifact, and a tag for the scarce ones).
"""

from __future__ import annotations

import os
import warnings

import mlflow
import pandas as pd

from cxr.data.counts import count_table, scarce, scarcity_note, scarcity_warning
from cxr.data.prepared import PreparedData
from cxr.data.splits import SPLIT_TITLES, split_digest
from cxr.runtime.console import log
from cxr.tracking.names import COUNTS_ARTIFACT, FEW_POSITIVES_TAG, IMAGE_SIZE_TAG, SPLIT_DIGEST_TAG


def split_frame(data: PreparedData, split: str) -> pd.DataFrame:
    """One split's rows as logged: ids, patient and labels (no local paths, so the digest MLflow
    computes is the same on every machine)."""
    columns = ["image_id", "patient_id", *data.pathologies, "split"]
    return data.table.iloc[data.rows[split]][columns].reset_index(drop=True)


def log_dataset_inputs(data: PreparedData, dataset_name: str) -> None:
    """Log each split of `data` as a dataset input `<dataset>-<split>` of the active run, its source the
    images' folder, tagged with the split fingerprint and the image size."""
    source = os.path.commonpath(data.table["path"].tolist())
    tags = {SPLIT_DIGEST_TAG: split_digest(data.table), IMAGE_SIZE_TAG: str(data.image_size)}
    for split, context in SPLIT_TITLES.items():  # MLflow's input context: training, validation, test
        if split not in data.rows:
            continue
        name = f"{dataset_name}-{split}"
        with warnings.catch_warnings():  # MLflow's hints on a path source and integer label columns
            warnings.simplefilter("ignore", UserWarning)
            frame = mlflow.data.from_pandas(split_frame(data, split), source, name=name)
            mlflow.log_input(frame, context, tags)


def log_counts(data: PreparedData, min_positives: int) -> None:
    """Per-split, per-finding counts as an artifact of the active run; findings with too few positives
    in a split as a warning on stderr and the run tag `cxr.few_positives`."""
    counts = count_table(data.labels, data.patients, data.rows, data.pathologies)
    mlflow.log_text(counts.to_csv(), COUNTS_ARTIFACT)
    few = scarce(counts, min_positives)
    if len(few):
        mlflow.set_tag(FEW_POSITIVES_TAG, scarcity_note(few))
        log.warning(f"cxr: warning: {scarcity_warning(few, min_positives, COUNTS_ARTIFACT)}")
