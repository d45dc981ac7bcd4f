"""`python -m cxr.evaluate`: re-evaluate a logged model and log the results back to its run.

The model's run logged its resolved config and its patient split; evaluation reloads that dataset,
assigns the logged split (not a recomputed one), predicts validation (where thresholds are chosen)
and the requested split, and writes the same metrics, tables and plots `cxr.train` writes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from cxr.config import CONF_DIR, register_configs
from cxr.errors import CxrError, exit_on_user_error

register_configs()

SPLITS = ("train", "val", "test")


def resolve_model(client, run_id: str | None, model_uri: str | None) -> tuple[str, str]:
    """(run id, model URI) from either one; registry URIs are followed to the run that logged them."""
    from mlflow.exceptions import MlflowException

    if bool(run_id) == bool(model_uri):
        raise CxrError("give exactly one of run_id=<training run id> or model_uri=<MLflow model URI>")
    try:
        if run_id:
            client.get_run(run_id)
            return run_id, f"runs:/{run_id}/model"
        if model_uri.startswith("runs:/"):
            run_id = model_uri[len("runs:/") :].split("/")[0]
            client.get_run(run_id)
            return run_id, model_uri
        if model_uri.startswith("models:/"):
            ref = model_uri[len("models:/") :]
            if "@" in ref:
                name, alias = ref.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = ref.partition("/")
                version = client.get_model_version(name, number)
            return version.run_id, model_uri
    except MlflowException as err:
        raise CxrError(f"cannot find {run_id or model_uri!r} in the MLflow store: {err.message}") from None
    raise CxrError(
        f"model_uri={model_uri!r}: use runs:/<id>/model, models:/<name>/<version> or models:/<name>@<alias>"
    )


def logged_run_inputs(run_id: str, folder: Path) -> tuple[DictConfig, pd.DataFrame]:
    """The run's resolved config and its split.csv."""
    import mlflow

    try:
        config = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/config.yaml", dst_path=str(folder))
        split = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/split.csv", dst_path=str(folder))
    except Exception as err:  # MLflow raises several types for a missing artifact
        raise CxrError(
            f"run {run_id} has no config.yaml/split.csv artifacts; was it logged by cxr.train? ({err})"
        ) from None
    return OmegaConf.load(config), pd.read_csv(split, dtype={"Image Index": str})


def apply_logged_split(table: pd.DataFrame, logged: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Give each image the split it had in training, so no training image is ever scored as test."""
    split = logged.set_index("Image Index")["split"]
    absent = split.index.difference(table["Image Index"])
    if len(absent):
        raise CxrError(
            f"{len(absent)} images of run {run_id}'s split are not in the dataset (first: "
            f"{', '.join(absent[:3])}); point dataset_root= at the dataset the run used"
        )
    table = table[table["Image Index"].isin(split.index)].reset_index(drop=True)  # images added since
    return table.assign(split=table["Image Index"].map(split).to_numpy())


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in SPLITS:
        raise CxrError(f"split={cfg.split!r}: choose one of {', '.join(SPLITS)}")
    import mlflow
    from mlflow.tracking import MlflowClient

    from cxr import tracking
    from cxr.data.datasets import load_table
    from cxr.data.prepare import prepare
    from cxr.labels import DISEASES
    from cxr.reporting import evaluate_and_log, predict_splits, summary_line
    from cxr.train import usable_rows

    mlflow.set_tracking_uri(cfg.tracking.uri)
    run_id, model_uri = resolve_model(MlflowClient(cfg.tracking.uri), cfg.run_id, cfg.model_uri)
    with tempfile.TemporaryDirectory() as folder:
        run_cfg, logged_split = logged_run_inputs(run_id, Path(folder))
    dataset = run_cfg.dataset
    if cfg.dataset_root:
        dataset.root = cfg.dataset_root
    if cfg.cache_dir:
        dataset.cache_dir = cfg.cache_dir
    table = apply_logged_split(load_table(dataset), logged_split, run_id)
    prepared = prepare(table["path"].tolist(), dataset.image_size, dataset.cache_dir)
    rows = usable_rows(table, prepared)

    import cxr.losses  # noqa: F401  (registers the custom objects the saved model refers to)
    import cxr.metrics  # noqa: F401
    import cxr.models  # noqa: F401

    model = mlflow.keras.load_model(model_uri)
    labels = table[list(DISEASES)].to_numpy(dtype=np.float32)
    wanted = {split: rows[split] for split in dict.fromkeys(["val", cfg.split])}
    predictions = predict_splits(
        model, prepared.images, labels, table["Patient ID"].to_numpy(), wanted, cfg.evaluation.batch_size
    )
    with mlflow.start_run(run_id=run_id):
        results = evaluate_and_log(predictions, cfg.evaluation)
        mlflow.set_tag("cxr.reevaluated_with", model_uri)

    print(f"\nEvaluated {model_uri} on the {cfg.split} split ({len(rows[cfg.split])} images)")
    print(f"mean AUC [{cfg.evaluation.bootstrap.confidence:.0%} CI]: {summary_line(results, cfg.split)}")
    print(
        f"Logged to MLflow run {run_id} (store {cfg.tracking.uri}); {tracking.ui_command(cfg.tracking.uri)}"
    )
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    sys.exit(main())
