"""The job's side of an Optuna sweep: find the trial in the storage, report each epoch, prune.

The sweeper stores what a job needs (the pruner's settings and the metric to report) in the study's
user attributes, so a job on any machine rebuilds the same pruner from the storage URL alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from cxr.errors import CxrError

STATE_TAG = "optuna.state"
PRUNER_ATTR = "cxr.pruner"
MONITOR_ATTR = "cxr.monitor"
RUN_ID_ATTR = "mlflow_run_id"


def rdb_storage(url: str, attempts: int = 5):
    """An Optuna storage; SQLite waits for a lock instead of failing when several workers write.

    Workers that start together on a new database race to create its tables; the loser's insert
    fails, and a moment later the tables are there, so creation is retried a few times.
    """
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as err:  # SQLAlchemy raises many types for a bad URL or an unreachable server
            if (
                attempt + 1 == attempts
                or "UNIQUE constraint" not in str(err)
                and "already exists" not in str(err)
            ):
                raise CxrError(f"Optuna storage {url!r} is not usable: {err}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def build_pruner(settings: Mapping[str, Any]):
    """median, hyperband or none, from the sweeper's `pruner` settings."""
    import optuna

    name = settings.get("name", "median")
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=settings["n_startup_trials"],
            n_warmup_steps=settings["n_warmup_steps"],
            interval_steps=settings["interval_steps"],
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=settings["min_resource"],
            max_resource=settings["max_resource"] if settings["max_resource"] is not None else "auto",
            reduction_factor=settings["reduction_factor"],
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise CxrError(f"hydra.sweeper.pruner.name={name!r}: choose median, hyperband or none")


class SweepTrial:
    """One trial of a stored study, opened by a training job."""

    def __init__(self, cfg) -> None:
        import optuna

        storage = rdb_storage(cfg.storage)
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(cfg.study_name))
        self.study = optuna.load_study(
            study_name=cfg.study_name, storage=storage, pruner=build_pruner(attrs.get(PRUNER_ATTR, {}))
        )
        self.trial = optuna.trial.Trial(self.study, cfg.trial_id)
        self.monitor: str = attrs.get(MONITOR_ATTR, "val_auc")
        self.number: int = cfg.number
        self.study_name: str = cfg.study_name
        self.parent_run_id: str | None = cfg.parent_run_id
        self.pruned_at: int | None = None

    def callback(self):
        """A Keras callback: report the monitored metric each epoch; stop training when pruned."""
        import keras

        owner = self

        class OptunaPruning(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                logs = logs or {}
                if owner.monitor not in logs:
                    raise CxrError(
                        f"hydra.sweeper.monitor={owner.monitor!r} is not logged each epoch; "
                        f"choose one of {', '.join(sorted(logs))}"
                    )
                value = float(logs[owner.monitor])
                if math.isfinite(value):
                    owner.trial.report(value, step=epoch)
                if owner.trial.should_prune():
                    owner.pruned_at = epoch
                    self.model.stop_training = True

        return OptunaPruning()

    def record_run(self, run_id: str) -> None:
        self.trial.set_user_attr(RUN_ID_ATTR, run_id)


def open_trial(cfg) -> SweepTrial | None:
    """The trial this job belongs to, or None for a plain training run."""
    if cfg.trial_id is None:
        return None
    if not cfg.storage or not cfg.study_name:
        raise CxrError("trial.trial_id is set but trial.storage or trial.study_name is not")
    return SweepTrial(cfg)
