"""The job's side of a sweep: reopen its Optuna trial from the storage, report each epoch, prune.

The sweeper sets the job's `optuna` config node (storage, study name, trial id and number, parent
run); the pruner's settings and the metric to report come from the study's user attributes, so a
job on any machine rebuilds the same pruner from the storage URL alone.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import keras

from cxr.config import OptunaJobConfig
from cxr.runtime import heartbeat
from cxr.runtime.errors import CxrError
from cxr.sweep.study import HEARTBEAT_ATTR, MONITOR_ATTR, PRUNER_ATTR, RUN_ID_ATTR, build_pruner, rdb_storage
from cxr.tracking import names as metric_names


class TrialReporter:
    """Reports one training job to its trial of a stored study."""

    def __init__(self, cfg_optuna: OptunaJobConfig) -> None:
        import optuna  # heavy: only a sweep's trial needs it; every cxr.train imports this module

        storage = rdb_storage(cfg_optuna.storage)
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(cfg_optuna.study_name))
        study = optuna.load_study(
            study_name=cfg_optuna.study_name,
            storage=storage,
            pruner=build_pruner(attrs.get(PRUNER_ATTR, {})),
        )
        self.trial = optuna.trial.Trial(study, cfg_optuna.trial_id)
        self.storage = storage
        self.heartbeat_interval: int | None = attrs.get(HEARTBEAT_ATTR, {}).get("heartbeat_interval")
        self.monitor: str = attrs.get(MONITOR_ATTR, metric_names.MONITOR)
        self.number: int = cfg_optuna.trial_number
        self.study_name: str = cfg_optuna.study_name
        self.parent_run_id: str | None = cfg_optuna.parent_run_id
        self.keep_models: int | None = cfg_optuna.keep_models
        self.pruned_at: int | None = None  # the epoch after which the pruner stopped training
        # a cross-validated job reports the running mean after each fold instead (cxr.sweep.cross_validation)
        self.per_epoch: bool = not cfg_optuna.cv_folds

    def callback(self) -> keras.callbacks.Callback:
        """A Keras callback: report the monitored metric each epoch; stop training when pruned."""
        owner = self

        class OptunaPruning(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                if not owner.per_epoch:
                    return
                logs = logs or {}
                key = metric_names.to_keras(owner.monitor)  # Keras's log key of e.g. val/auc
                if key not in logs:
                    raise CxrError(
                        f"hydra.sweeper.monitor={owner.monitor!r} is not logged each epoch; "
                        f"choose one of {', '.join(sorted(map(metric_names.from_keras, logs)))}"
                    )
                value = float(logs[key])
                if math.isfinite(value):
                    owner.trial.report(value, step=epoch)
                if owner.trial.should_prune():
                    owner.pruned_at = epoch
                    self.model.stop_training = True

        return OptunaPruning()

    def keeps_model(self, value: float) -> bool:
        """Whether a trial ending with `value` ranks among the best `keep_models` completed trials so far.

        Later trials can only push a trial down, so one outside them now is never among the best N at
        the end (what the ensemble's top K and the sweep's best-trial re-evaluation read).
        """
        from optuna.study import StudyDirection  # heavy: optuna, only a sweep's trial (as above)
        from optuna.trial import TrialState  # heavy: optuna, as above

        if self.keep_models is None:
            return True
        if not math.isfinite(value):
            return False
        maximize = self.trial.study.direction == StudyDirection.MAXIMIZE
        done = self.trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        values = [t.value for t in done if t.value is not None]
        better = sum(1 for v in values if (v > value if maximize else v < value))
        return better < self.keep_models

    def heartbeat(self) -> AbstractContextManager:
        """Renew the trial's Optuna heartbeat from this process (the one that runs the trial, wherever the
        launcher put it) while the block runs; when the process dies, the sweep fails and reruns the trial."""
        if not self.heartbeat_interval:
            return nullcontext()
        trial_id = self.trial._trial_id
        return heartbeat.beating(lambda: self.storage.record_heartbeat(trial_id), self.heartbeat_interval)

    def record_run(self, run_id: str) -> None:
        """Store the job's MLflow run id on its trial (the sweep's summary names the best trial's run)."""
        self.trial.set_user_attr(RUN_ID_ATTR, run_id)


def open_reporter(cfg_optuna: OptunaJobConfig) -> TrialReporter | None:
    """The reporter of the trial this job belongs to, or None for a plain training run."""
    if cfg_optuna.trial_id is None:
        return None
    if not cfg_optuna.storage or not cfg_optuna.study_name:
        raise CxrError("optuna.trial_id is set but optuna.storage or optuna.study_name is not")
    return TrialReporter(cfg_optuna)
