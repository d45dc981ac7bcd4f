"""`python -m cxr.train`: one training run from the composed config, tracked in MLflow.

Returns the configured `optimized_metric` (default val/auc_mean), the value sweeps optimise.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cxr import interrupt
from cxr import metric_names as mn
from cxr.config import CONF_DIR, check_training, register_configs
from cxr.console import announce, fit_verbosity, log
from cxr.errors import CxrError, exit_on_user_error, run_command

register_configs()

MODEL_SKIPPED_TAG = "cxr.model_skipped"  # why a sweep trial's run has no logged model


def check_optimized_metric(name: str) -> None:
    """Anything chosen (a sweep's best trial, an ensemble's members) is chosen on validation only."""
    mn.check_validation(
        name, "optimized_metric", "selecting on test results would leak the test set into the choice"
    )


def _fail_on_nan_loss(history) -> None:
    losses = history.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise CxrError(
            f"the training loss became {losses[-1]} in epoch {len(losses)}; lower "
            "trainer.optimizer.learning_rate or check the loss settings"
        )


def _stop_if_pruned(reporter) -> None:
    if reporter is not None and reporter.pruned_at is not None:
        import mlflow
        import optuna

        mlflow.log_metric(mn.PRUNED_AT_EPOCH, reporter.pruned_at)
        raise optuna.TrialPruned(f"trial {reporter.number} pruned after epoch {reporter.pruned_at + 1}")


def _objective(evaluation, name: str) -> float:
    if name not in evaluation.metrics:
        prefix = mn.split_metric(mn.VAL, "")
        known = sorted(k for k in evaluation.metrics if k.startswith(prefix) and k.count(mn.SEP) == 1)
        raise CxrError(
            f"optimized_metric={name!r} is not among the run's metrics; choose one of {', '.join(known)} "
            f"or a per-disease one such as {mn.per_disease(mn.VAL, 'auc', '<pathology>')}"
        )
    return evaluation.metrics[name]


def log_counts(data, min_positives: int) -> None:
    """Per-split, per-finding counts as an artifact of the active run; findings with too few positives
    in a split as a warning on stderr and the run tag `cxr.few_positives`."""
    import mlflow

    from cxr.counts import count_table, scarce, scarcity_note, scarcity_warning
    from cxr.metric_names import COUNTS_ARTIFACT, FEW_POSITIVES_TAG

    counts = count_table(data.labels, data.patients, data.rows, data.pathologies)
    mlflow.log_text(counts.to_csv(), COUNTS_ARTIFACT)
    few = scarce(counts, min_positives)
    if len(few):
        mlflow.set_tag(FEW_POSITIVES_TAG, scarcity_note(few))
        log.warning(f"cxr: warning: {scarcity_warning(few, min_positives)}")


def fit(cfg: DictConfig, data, reporter=None):
    """Build, compile and fit the configured model on `data`'s train split; returns (model, history).

    trainer.distribution=data_parallel: on every local device, each taking trainer.batch_size images."""
    from cxr import backend

    with backend.distribution(cfg.trainer.distribution) as replicas:
        model, history = _fit(cfg, data, reporter, replicas)
    return backend.local_model(model), history


def _fit(cfg: DictConfig, data, reporter, replicas: int):
    import keras

    from cxr import backend, tracking
    from cxr.callbacks import build_callbacks, monitored
    from cxr.data.pipeline import make_dataset
    from cxr.losses import build_loss, loss_callbacks
    from cxr.metrics import epoch_metrics
    from cxr.models import build_model
    from cxr.optimizers import build_optimizer

    t = cfg.trainer  # checked by train() before any work (check_training)
    if t.deterministic:
        backend.enable_determinism()
    keras.utils.set_random_seed(cfg.seed)
    n_classes = len(data.pathologies)
    with backend.dtype_policy(t.precision):  # layers keep it; the sigmoid outputs are float32 in any case
        model = build_model(cfg.model, data.image_size, n_classes, augment=cfg.dataset.augment)
    loss = build_loss(cfg.loss, data.labels[data.rows["train"]])  # weights from training labels only
    backend.check_loss(loss)
    model.compile(
        optimizer=build_optimizer(t.optimizer),
        loss=loss,
        metrics=epoch_metrics(n_classes, cfg.evaluation.threshold),
        **backend.compile_options(t),  # mixed_float16: Keras wraps the optimizer in a LossScaleOptimizer
    )
    callbacks = [
        interrupt.callback(),
        *build_callbacks(cfg.callbacks, Path(cfg.output_dir)),
        *loss_callbacks(loss),
        keras.callbacks.TerminateOnNaN(),
        *(
            [tracking.epoch_logger()] if backend.is_chief(t.distribution) else []
        ),  # a worker has no run to log to
        *([reporter.callback()] if reporter is not None else []),
    ]
    print(f"cxr: {monitored(cfg.callbacks, reporter.monitor if reporter is not None else None)}", flush=True)
    history = model.fit(
        make_dataset(
            data.images,
            data.labels,
            data.rows["train"],
            batch_size=t.batch_size * replicas,
            training=True,
            seed=cfg.seed,
            multiple_of=backend.batch_multiple(replicas),
        ),
        validation_data=make_dataset(  # JAX data_parallel: the validation loss leaves out < replicas rows
            data.images,
            data.labels,
            data.rows["val"],
            batch_size=t.batch_size * replicas,
            multiple_of=backend.batch_multiple(replicas),
        ),
        epochs=t.epochs,
        shuffle=False,  # the dataset shuffles rows each epoch; Keras would only reorder whole batches
        callbacks=callbacks,
        verbose=fit_verbosity(t.verbose),
    )
    return model, history


def log_model(cfg: DictConfig, model, data, evaluation, run_id: str, reporter=None) -> None:
    """Log the trained model as cxr's pyfunc and, when a name is configured, register a version
    tagged with what ranking, ensembling and prediction need."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from cxr import model_registry, pyfunc
    from cxr.data.splits import split_digest

    spec = pyfunc.ModelSpec(
        pathologies=list(data.pathologies),
        thresholds=evaluation.thresholds["thresholds"],
        image_sizes=[data.image_size],
        weights=[1.0],
        members=[{"run_id": run_id}],
        imports=sorted(
            {node._target_.rsplit(".", 1)[0] for node in (cfg.model, cfg.loss) if "_target_" in node}
        ),
    )
    name = cfg.tracking.registered_model_name
    info = pyfunc.log_model([model], spec, registered_model_name=name)
    log.info(
        f"model: runs:/{run_id}/{info.name}"
        + (f", models:/{name}/{info.registered_model_version}" if name else "")
    )
    if name:
        tags = model_registry.version_tags(
            evaluation.metrics,
            run_id,
            spec,
            split_digest(data.table),
            cfg.tracking.experiment_name,
            study=reporter.study_name if reporter is not None else None,
            trial=reporter.number if reporter is not None else None,
            run_name=mlflow.active_run().info.run_name,
        )
        client = MlflowClient(cfg.tracking.uri)
        model_registry.tag_version(client, name, str(info.registered_model_version), tags)


def train(cfg: DictConfig, overrides: list[str] | None = None, parent_run_id: str | None = None) -> float:
    """Data -> model -> fit -> evaluation, all logged to one MLflow run; returns cfg.optimized_metric.

    As a sweep trial (`cfg.optuna`, set by the sweeper) the run is a child of the sweep's parent run,
    reports each epoch to its Optuna trial, and raises optuna.TrialPruned when the pruner stops it.
    In a grid multirun the run is a child of the grid's parent run (`parent_run_id`).
    """
    from cxr import backend, tracking
    from cxr.data.prepared import load_prepared
    from cxr.data.splits import write_split_csv
    from cxr.sweep.reporter import open_reporter

    check_training(cfg)  # every value, before any data is read or model built
    tracking.check_store(cfg.tracking)  # a read-only store fails now, not after the data is prepared
    check_optimized_metric(cfg.optimized_metric)
    started = time.perf_counter()
    reporter = open_reporter(cfg.optuna)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data = load_prepared(cfg.dataset)
    load_seconds = time.perf_counter() - started
    if not backend.is_chief(cfg.trainer.distribution):
        return _train_as_worker(cfg, data)

    import mlflow

    from cxr.dataset_inputs import log_dataset_inputs
    from cxr.predict import predict_splits
    from cxr.reporting import evaluate_predictions, log_evaluation

    with tracking.tracked_run(cfg, overrides or [], reporter, parent_run_id=parent_run_id) as run_id:
        mlflow.log_artifact(str(write_split_csv(data.table, output_dir / "split.csv")))
        log_dataset_inputs(data, cfg.dataset.name)
        mlflow.log_params({f"data.n_{s}_images": len(r) for s, r in data.rows.items()})  # constant: no chart
        log_counts(data, cfg.dataset.min_positives)
        with tracking.timed("fit"):
            model, history = fit(cfg, data, reporter)
        mlflow.log_metric(mn.EPOCHS_TRAINED, len(history.epoch))
        _fail_on_nan_loss(history)
        _stop_if_pruned(reporter)
        with tracking.timed("predict"):
            predictions = predict_splits(model, data, ["val", "test"], cfg.evaluation.batch_size)
        with tracking.timed("evaluate"):
            evaluation = evaluate_predictions(predictions, cfg.evaluation, data.pathologies)
        with tracking.timed("log_evaluation"):
            log_evaluation(
                evaluation, cfg.evaluation.plots, pd.DataFrame(history.history).assign(epoch=history.epoch)
            )
        if (output_dir / "history.csv").is_file():
            mlflow.log_artifact(str(output_dir / "history.csv"))
        objective = _objective(evaluation, cfg.optimized_metric)
        if cfg.tracking.log_model and (reporter is None or reporter.keeps_model(objective)):
            with tracking.timed("log_model"):
                log_model(cfg, model, data, evaluation, run_id, reporter)
        elif cfg.tracking.log_model:
            mlflow.set_tag(MODEL_SKIPPED_TAG, f"ranked below the study's best {reporter.keep_models} trials")
        # timings last: the UI's parallel-coordinates view opens on a run's first-logged metric (val/auc)
        mlflow.log_metrics(
            {mn.timing("load_data"): load_seconds, mn.timing("run"): time.perf_counter() - started}
        )
    _print_summary(cfg, run_id, evaluation.metrics)
    return objective


def _train_as_worker(cfg: DictConfig, data) -> float:
    """A non-chief worker of a multi-worker training (TF_CONFIG): it trains its share of every batch and
    logs nothing, so the store holds one run, the chief's; returns NaN (it has no evaluation)."""
    log.info("cxr: a non-chief worker (TF_CONFIG): training only; the chief logs the MLflow run and model")
    fit(cfg, data)
    log.info("cxr: worker done; the run, its metrics and the model are the chief's (TF_CONFIG task 0)")
    return float("nan")


def _print_summary(cfg: DictConfig, run_id: str, metrics: dict[str, float]) -> None:
    from cxr import tracking
    from cxr.console import dataset_words
    from cxr.masking import mask
    from cxr.reporting import validation_and_test_line

    experiment, data = cfg.tracking.experiment_name, dataset_words(cfg.dataset)
    log.info(f"MLflow run {run_id} (experiment {experiment!r}, store {mask(cfg.tracking.uri)}), on {data}")
    log.info(validation_and_test_line(metrics, cfg.evaluation.bootstrap.confidence))
    log.info(f"Compare runs: {tracking.ui_command(cfg.tracking.uri)}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    announce("train", cfg)
    overrides = list(HydraConfig.get().overrides.task)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        from cxr.sweep.grid import parent_run_id

        parent = parent_run_id(HydraConfig.get().sweep.dir)  # a grid's; an Optuna trial's is cfg.optuna's
        return train(cfg, overrides, parent)  # errors go to the sweeper, which records the job as failed
    return exit_on_user_error(train)(cfg, overrides)


if __name__ == "__main__":
    run_command(main)
