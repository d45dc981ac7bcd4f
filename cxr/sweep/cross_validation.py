"""`optuna.cv_folds=K`: one job, K fold models, one value: the mean of their validation metric.

A sweep trial that trains one model picks hyperparameters by one small validation set's noise; with
`cv_folds` the job trains one model per fold of the official train_val list (`dataset.split=kfold`),
each a child run of the job's own run, and returns the mean of the folds' `optimized_metric`. The
trial's pruner sees the running mean after each fold (step = fold), never the folds' epochs, whose
steps would repeat from fold to fold.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from cxr.runtime.masking import mask
from cxr.sweep.parent_run import ParentRun
from cxr.tracking import names as metric_names

if TYPE_CHECKING:
    from cxr.config import Config
    from cxr.sweep.reporter import TrialReporter


def fold_config(cfg: Config, fold: int, parent_run_id: str) -> DictConfig:
    """The job's config for one fold: kfold split, its own output folder and, in a sweep, its trial's
    run name with the fold and the cross-validation run as parent."""
    out = copy.deepcopy(cfg)  # keeps the typed schema the checks and train() read
    out.dataset.split, out.dataset.folds, out.dataset.fold = "kfold", cfg.optuna.cv_folds, fold
    out.output_dir = f"{cfg.output_dir}/fold{fold}"
    if cfg.optuna.trial_id is not None:
        out.optuna.parent_run_id = parent_run_id
    base = job_name(cfg)
    if base:  # a given name (a trial's, or tracking.run_name) would repeat: each fold gets its own
        out.tracking.run_name = f"{base}-fold{fold}"
    return out


def job_name(cfg: Config) -> str | None:
    """The name the job's runs start from: a trial's `<study>-trial-<n>`, else `tracking.run_name`."""
    if cfg.optuna.trial_id is not None:
        return f"{cfg.optuna.study_name}-trial-{cfg.optuna.trial_number}"
    return cfg.tracking.run_name or None


def open_run(cfg: Config, overrides: list[str], parent_run_id: str | None) -> ParentRun:
    """The job's own run (no model: its children are the folds), a child of the sweep's or the grid's."""
    parent = cfg.optuna.parent_run_id or parent_run_id
    trial = cfg.optuna.trial_id is not None
    tags = {
        metric_names.CV_FOLDS_TAG: str(cfg.optuna.cv_folds),
        metric_names.OVERRIDES_TAG: mask(" ".join(overrides)),
    }
    if parent:
        tags[metric_names.PARENT_RUN_TAG] = parent
    if trial:
        tags |= {
            metric_names.STUDY_TAG: str(cfg.optuna.study_name),
            metric_names.TRIAL_TAG: str(cfg.optuna.trial_number),
        }
    return ParentRun.create(cfg.tracking, name=f"{job_name(cfg) or 'cv'}-cv{cfg.optuna.cv_folds}", tags=tags)


def report_fold(run: ParentRun, reporter: TrialReporter | None, metric: str, values: list[float]) -> float:
    """Logs the latest fold's value and the running mean; reports the mean to the trial (step: the fold)
    and raises optuna.TrialPruned, the run ended KILLED, when its pruner says so. Returns the mean."""
    fold = len(values) - 1
    mean = float(np.mean(values))
    run.client.log_metric(run.run_id, metric_names.per_fold(metric), values[-1], step=fold)
    if reporter is None:
        return mean
    if math.isfinite(mean):
        reporter.trial.report(mean, step=fold)
    if reporter.trial.should_prune():
        import optuna  # heavy: only a sweep's trial is pruned

        run.client.set_tag(run.run_id, metric_names.STATE_TAG, "PRUNED")
        run.client.set_terminated(run.run_id, "KILLED")
        raise optuna.TrialPruned(
            f"trial {reporter.number} pruned after fold {fold} (running mean {mean:.4f})"
        )
    return mean
