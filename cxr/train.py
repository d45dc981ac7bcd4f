"""`python -m cxr.train`: one training run from the composed config, tracked in MLflow.

Returns the configured `optimized_metric` (default val/auc_mean), the value sweeps optimise.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from cxr.config import CONF_DIR, Config, check_training, register_configs
from cxr.data.prepared import PreparedData, load_prepared
from cxr.data.splits import write_split_csv
from cxr.data.tta import Views
from cxr.runtime.console import announce, dataset_words, log
from cxr.runtime.errors import CxrError, exit_on_user_error, run_command
from cxr.runtime.masking import mask
from cxr.sweep.grid import parent_run_id
from cxr.tracking import names as mn
from cxr.training import backend

if TYPE_CHECKING:
    from cxr.evaluation.report import Evaluation
    from cxr.sweep.reporter import TrialReporter

register_configs()


def check_optimized_metric(name: str) -> None:
    """Anything chosen (a sweep's best trial, an ensemble's members) is chosen on validation only."""
    mn.check_validation(
        name, "optimized_metric", "selecting on test results would leak the test set into the choice"
    )


def _stop_if_pruned(reporter: TrialReporter | None) -> None:
    if reporter is not None and reporter.pruned_at is not None:
        import mlflow  # heavy: loaded with the rest of the run, after the config's checks
        import optuna  # heavy: only a sweep's trial is pruned

        mlflow.log_metric(mn.PRUNED_AT_EPOCH, reporter.pruned_at)
        raise optuna.TrialPruned(f"trial {reporter.number} pruned after epoch {reporter.pruned_at + 1}")


def _objective(evaluation: Evaluation, name: str) -> float:
    if name not in evaluation.metrics:
        prefix = mn.split_metric(mn.VAL, "")
        known = sorted(k for k in evaluation.metrics if k.startswith(prefix) and k.count(mn.SEP) == 1)
        raise CxrError(
            f"optimized_metric={name!r} is not among the run's metrics; choose one of {', '.join(known)} "
            f"or a per-disease one such as {mn.per_disease(mn.VAL, 'auc', '<pathology>')}"
        )
    return evaluation.metrics[name]


def train(cfg: Config, overrides: list[str] | None = None, parent_run_id: str | None = None) -> float:
    """Data -> model -> fit -> evaluation, all logged to one MLflow run; returns cfg.optimized_metric.

    As a sweep trial (`cfg.optuna`, set by the sweeper) the run is a child of the sweep's parent run,
    reports each epoch to its Optuna trial, and raises optuna.TrialPruned when the pruner stops it.
    In a grid multirun the run is a child of the grid's parent run (`parent_run_id`). With
    `optuna.cv_folds=K`, one run per fold under one run of the job's, returning the folds' mean.
    """
    check_training(cfg)  # every value, before any data is read or model built
    check_optimized_metric(cfg.optimized_metric)
    if cfg.optuna.cv_folds:
        return _cross_validate(cfg, overrides or [], parent_run_id)
    return _train_one(cfg, overrides, parent_run_id)


def _cross_validate(cfg: Config, overrides: list[str], parent_run_id: str | None) -> float:
    """One model per fold (`cxr.sweep.cross_validation`), each run a child of the job's own run, which
    logs each fold's value (`cv/<metric>`, step: the fold) and their mean as `optimized_metric`; a trial's
    pruner sees the running mean after each fold. Returns the mean."""
    from cxr.sweep.cross_validation import fold_config, open_run, report_fold
    from cxr.sweep.reporter import open_reporter

    reporter = open_reporter(cfg.optuna)
    run = open_run(cfg, overrides, parent_run_id)
    values: list[float] = []
    try:
        for fold in range(cfg.optuna.cv_folds):
            fold_cfg = fold_config(cfg, fold, run.run_id)
            values.append(_train_one(fold_cfg, [*overrides, f"dataset.fold={fold}"], run.run_id))
            mean = report_fold(run, reporter, cfg.optimized_metric, values)
    except BaseException as err:  # a fold's own run has ended already; the job's ends the same way
        if run.client.get_run(run.run_id).info.status == "RUNNING":
            run.client.set_terminated(
                run.run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            )
        raise
    finally:
        if reporter is not None:  # the trial names this run, not its last fold's
            reporter.record_run(run.run_id)
    run.client.log_metric(run.run_id, cfg.optimized_metric, mean)
    if reporter is not None:
        run.client.set_tag(run.run_id, mn.STATE_TAG, "COMPLETE")
    run.finish()
    folds = ", ".join(f"{v:.4f}" for v in values)
    log.info(
        f"{cfg.optimized_metric}: mean {mean:.4f} over {len(values)} folds ({folds}); MLflow run {run.run_id}"
    )
    return mean


def _train_one(cfg: Config, overrides: list[str] | None, parent_run_id: str | None) -> float:
    """One model: `train` without the checks and the cross-validation."""
    from cxr.tracking import runs as tracking  # MLflow: the store's check before the heavy imports

    tracking.check_store(cfg.tracking)  # a read-only store fails now, not after the data is prepared
    # heavy (Keras and its backend, MLflow, matplotlib), each of the imports below: imported once the
    # config has passed, so --help, --cfg and a bad value answer at once
    import mlflow

    from cxr.evaluation.box_localisation import images_of, localise_and_log
    from cxr.evaluation.report import evaluate_calibrated, log_evaluation, write_card
    from cxr.serving.inference import predict_splits
    from cxr.serving.registration import log_trained_model
    from cxr.sweep.reporter import open_reporter
    from cxr.tracking.dataset_inputs import log_counts, log_dataset_inputs
    from cxr.training.fit import fail_on_nan_loss, fit

    started = time.perf_counter()
    reporter = open_reporter(cfg.optuna)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data = load_prepared(cfg.dataset)
    load_seconds = time.perf_counter() - started
    if not backend.is_chief(cfg.trainer.distribution):
        return _train_as_worker(cfg, data)

    with tracking.tracked_run(cfg, overrides or [], reporter, parent_run_id=parent_run_id) as run_id:
        mlflow.log_artifact(str(write_split_csv(data.table, output_dir / mn.SPLIT_ARTIFACT)))
        log_dataset_inputs(data, cfg.dataset.name)
        mlflow.log_params({f"data.n_{s}_images": len(r) for s, r in data.rows.items()})  # constant: no chart
        log_counts(data, cfg.dataset.min_positives)
        with tracking.timed("fit"):
            model, history = fit(cfg, data, reporter)
        mlflow.log_metric(mn.EPOCHS_TRAINED, len(history.epoch))
        fail_on_nan_loss(history)
        _stop_if_pruned(reporter)
        views = Views.of(cfg.evaluation.tta)  # validation too: thresholds and calibrator see what test sees
        mlflow.log_param(mn.TTA_VIEWS_PARAM, views.count)
        mlflow.set_tag(mn.TTA_TAG, views.describe())
        with tracking.timed("predict"):
            predictions = predict_splits(model, data, ["val", "test"], cfg.evaluation.batch_size, views)
        with tracking.timed("evaluate"):
            evaluation, calibration = evaluate_calibrated(predictions, cfg.evaluation, data.pathologies)
        with tracking.timed("log_evaluation"):
            log_evaluation(
                evaluation, cfg.evaluation.plots, pd.DataFrame(history.history).assign(epoch=history.epoch)
            )
        with tracking.timed("localisation"):
            located = localise_and_log([model], [1.0], images_of(data), data, cfg.evaluation)
        evaluation = replace(evaluation, metrics={**evaluation.metrics, **located})
        if located:  # the card again, with the localisation scores (and below, once more with its version)
            write_card(evaluation)
        if (output_dir / mn.HISTORY_ARTIFACT).is_file():
            mlflow.log_artifact(str(output_dir / mn.HISTORY_ARTIFACT))
        objective = _objective(evaluation, cfg.optimized_metric)
        if cfg.tracking.log_model and (reporter is None or reporter.keeps_model(objective)):
            with tracking.timed("log_model"):
                info = log_trained_model(cfg, model, data, evaluation, run_id, reporter, calibration)
            if info.registered_model_version:  # the report card names the version it describes
                version = f"models:/{cfg.tracking.registered_model_name}/{info.registered_model_version}"
                write_card(evaluation, {"version": version})
        elif cfg.tracking.log_model:
            mlflow.set_tag(
                mn.MODEL_SKIPPED_TAG, f"ranked below the study's best {reporter.keep_models} trials"
            )
        # timings last: the UI's parallel-coordinates view opens on a run's first-logged metric (val/auc)
        mlflow.log_metrics(
            {mn.timing("load_data"): load_seconds, mn.timing("run"): time.perf_counter() - started}
        )
    _print_summary(cfg, run_id, evaluation.metrics)
    return objective


def _train_as_worker(cfg: Config, data: PreparedData) -> float:
    """A non-chief worker of a multi-worker training (TF_CONFIG): it trains its share of every batch and
    logs nothing, so the store holds one run, the chief's; returns NaN (it has no evaluation)."""
    from cxr.training.fit import fit  # heavy: Keras and the backend

    log.info("cxr: a non-chief worker (TF_CONFIG): training only; the chief logs the MLflow run and model")
    fit(cfg, data)
    log.info("cxr: worker done; the run, its metrics and the model are the chief's (TF_CONFIG task 0)")
    return float("nan")


def _print_summary(cfg: Config, run_id: str, metrics: dict[str, float]) -> None:
    from cxr.evaluation.report import validation_and_test_line  # heavy: loaded after training anyway
    from cxr.tracking import runs as tracking  # heavy: MLflow, loaded after training anyway

    experiment, data = cfg.tracking.experiment_name, dataset_words(cfg.dataset)
    log.info(f"MLflow run {run_id} (experiment {experiment!r}, store {mask(cfg.tracking.uri)}), on {data}")
    log.info(validation_and_test_line(metrics, cfg.evaluation.bootstrap.confidence))
    log.info(f"Compare runs: {tracking.ui_command(cfg.tracking.uri)}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: Config) -> float:
    announce("train", cfg)
    overrides = list(HydraConfig.get().overrides.task)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        parent = parent_run_id(HydraConfig.get().sweep.dir)  # a grid's; an Optuna trial's is cfg.optuna's
        return train(cfg, overrides, parent)  # errors go to the sweeper, which records the job as failed
    return exit_on_user_error(train)(cfg, overrides)


if __name__ == "__main__":
    run_command(main)
