"""`python -m cxr.train`: one training run from the composed config, tracked in MLflow.

Returns the mean validation AUC, the value that sweeps optimise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cxr.config import CONF_DIR, register_configs
from cxr.data.datasets import load_table
from cxr.data.prepare import PreparedImages, prepare
from cxr.data.splits import SPLIT_NAMES
from cxr.errors import CxrError, exit_on_user_error
from cxr.labels import DISEASES

register_configs()


def _save_split(table: pd.DataFrame, output_dir: Path) -> Path:
    path = output_dir / "split.csv"
    table[["Image Index", "Patient ID", "split"]].to_csv(path, index=False)
    return path


def usable_rows(table: pd.DataFrame, prepared: PreparedImages) -> dict[str, np.ndarray]:
    """Row indices of each split, leaving out (and naming) images the cache could not read."""
    if prepared.failures:
        print(f"cxr: warning: {prepared.failure_report(limit=10)}\nThey are left out.", file=sys.stderr)
    keep = np.ones(len(table), dtype=bool)
    keep[list(prepared.failures)] = False
    split = table["split"].to_numpy()
    rows = {s: np.flatnonzero((split == s) & keep) for s in SPLIT_NAMES}
    empty = [s for s, r in rows.items() if len(r) == 0]
    if empty:
        raise CxrError(f"no readable images left in the {', '.join(empty)} split(s)")
    return rows


def _fail_on_nan_loss(history) -> None:
    losses = history.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise CxrError(
            f"the training loss became {losses[-1]} in epoch {len(losses)}; lower "
            "trainer.optimizer.learning_rate or check the loss settings"
        )


def train(cfg: DictConfig, overrides: list[str] | None = None) -> float:
    """Data -> model -> fit -> evaluation, all logged to one MLflow run; returns val_auc_mean.

    As a sweep trial (cfg.trial set by the sweeper) the run is a child of the sweep's parent run,
    reports each epoch to its Optuna trial, and raises optuna.TrialPruned when the pruner stops it.
    """
    from cxr.trial import STATE_TAG, open_trial

    trial = open_trial(cfg.trial)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = load_table(cfg.dataset)
    prepared = prepare(table["path"].tolist(), cfg.dataset.image_size, cfg.dataset.cache_dir)
    images = prepared.images
    labels = table[list(DISEASES)].to_numpy(dtype=np.float32)
    rows = usable_rows(table, prepared)

    import keras
    import mlflow
    import tensorflow as tf

    from cxr import tracking
    from cxr.callbacks import build_callbacks
    from cxr.data.pipeline import make_dataset
    from cxr.losses import build_loss, loss_callbacks
    from cxr.metrics import epoch_metrics
    from cxr.models import build_model
    from cxr.optimizers import build_optimizer
    from cxr.reporting import evaluate_and_log, predict_splits, summary_line

    keras.utils.set_random_seed(cfg.seed)
    if cfg.trainer.deterministic:
        tf.config.experimental.enable_op_determinism()

    t = cfg.trainer

    def dataset(split: str, training: bool):
        return make_dataset(
            images,
            labels,
            rows[split],
            t.batch_size,
            training,
            cfg.seed,
            t.shuffle_buffer,
            t.deterministic or not training,
            cfg.dataset.augment if training else None,
        )

    tracking.configure(cfg.tracking)
    run_options: dict = {"run_name": cfg.tracking.run_name}
    if trial is not None:
        run_options = {
            "run_name": cfg.tracking.run_name or f"{cfg.trial.study_name}-trial-{trial.number}",
            "parent_run_id": cfg.trial.parent_run_id,
            "tags": {"optuna.study_name": cfg.trial.study_name, "optuna.trial_number": str(trial.number)},
        }
    with mlflow.start_run(**run_options) as run:
        try:
            if trial is not None:
                trial.record_run(run.info.run_id)
            mlflow.set_tags(tracking.run_tags(overrides or []))
            mlflow.log_params(tracking.config_params(cfg))
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            mlflow.log_artifact(str(_save_split(table, output_dir)))
            mlflow.log_metrics({f"n_{s}_images": float(len(r)) for s, r in rows.items()})

            model = build_model(cfg.model, cfg.dataset.image_size, len(DISEASES))
            loss = build_loss(cfg.loss, labels[rows["train"]])  # weights may come from training labels only
            model.compile(
                optimizer=build_optimizer(t.optimizer),
                loss=loss,
                metrics=epoch_metrics(len(DISEASES), cfg.evaluation.threshold),
            )
            callbacks = [
                *build_callbacks(cfg.callbacks, output_dir),
                *loss_callbacks(loss),
                keras.callbacks.TerminateOnNaN(),
                tracking.epoch_logger(),
            ]
            if trial is not None:
                callbacks.append(trial.callback())
            history = model.fit(
                dataset("train", training=True),
                validation_data=dataset("val", training=False),
                epochs=t.epochs,
                shuffle=False,  # the tf.data pipeline shuffles; Keras would only warn
                callbacks=callbacks,
                verbose=t.verbose,
            )
            mlflow.log_metric("epochs_trained", len(history.epoch))
            _fail_on_nan_loss(history)
            if trial is not None and trial.pruned_at is not None:
                import optuna

                mlflow.set_tag(STATE_TAG, "PRUNED")
                mlflow.log_metric("pruned_at_epoch", trial.pruned_at)
                mlflow.end_run("KILLED")
                raise optuna.TrialPruned(f"trial {trial.number} pruned after epoch {trial.pruned_at + 1}")

            patients = table["Patient ID"].to_numpy()
            evaluated = {split: rows[split] for split in ("val", "test")}
            predictions = predict_splits(
                model, images, labels, patients, evaluated, cfg.evaluation.batch_size
            )
            results = evaluate_and_log(
                predictions, cfg.evaluation, pd.DataFrame(history.history).assign(epoch=history.epoch)
            )
            if (output_dir / "history.csv").is_file():
                mlflow.log_artifact(str(output_dir / "history.csv"))
            if cfg.tracking.log_model:
                tracking.log_keras_model(model, cfg.dataset.image_size, cfg.tracking.registered_model_name)
            if trial is not None:
                mlflow.set_tag(STATE_TAG, "COMPLETE")
        except Exception as err:
            if trial is not None and mlflow.active_run() is not None:
                mlflow.set_tag(STATE_TAG, "FAIL")
                mlflow.set_tag("cxr.error", f"{type(err).__name__}: {err}"[:5000])
            raise

    experiment = cfg.tracking.experiment_name
    print(f"\nMLflow run {run.info.run_id} (experiment {experiment!r}, store {cfg.tracking.uri})")
    level = f"{cfg.evaluation.bootstrap.confidence:.0%}"
    print(
        f"mean AUC [{level} CI]: validation {summary_line(results, 'val')}, "
        f"test {summary_line(results, 'test')}"
    )
    print(f"Compare runs: {tracking.ui_command(cfg.tracking.uri)}", flush=True)
    return results["val_auc_mean"]


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    overrides = list(HydraConfig.get().overrides.task)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return train(cfg, overrides)  # errors go to the sweeper, which records the job as failed
    return exit_on_user_error(train)(cfg, overrides)


if __name__ == "__main__":
    sys.exit(main())
