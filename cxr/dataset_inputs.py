"""The data a run used, as MLflow dataset inputs: the run page's "Datasets" and the runs table's
dataset filter show which images (and which patient split) each run trained, validated and tested on.
"""

from __future__ import annotations

import os
import warnings

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # split -> MLflow's input context
SPLIT_DIGEST_TAG = "split_digest"  # the fingerprint of who is in which split, as registered versions carry


def split_frame(data, split: str):
    """One split's rows as logged: ids, patient and labels (no local paths, so the digest MLflow
    computes is the same on every machine)."""
    columns = ["image_id", "patient_id", *data.pathologies, "split"]
    return data.table.iloc[data.rows[split]][columns].reset_index(drop=True)


def log_dataset_inputs(data, dataset_name: str) -> None:
    """Log each split of `data` (a PreparedData) as a dataset input `<dataset>-<split>` of the active
    run, its source the images' folder, tagged with the split fingerprint and the image size."""
    import mlflow

    from cxr.data.splits import split_digest

    source = os.path.commonpath(data.table["path"].tolist())
    tags = {SPLIT_DIGEST_TAG: split_digest(data.table), "image_size": str(data.image_size)}
    for split, context in CONTEXTS.items():
        if split not in data.rows:
            continue
        name = f"{dataset_name}-{split}"
        with warnings.catch_warnings():  # MLflow's hints on a path source and integer label columns
            warnings.simplefilter("ignore", UserWarning)
            frame = mlflow.data.from_pandas(split_frame(data, split), source, name=name)
            mlflow.log_input(frame, context, tags)
