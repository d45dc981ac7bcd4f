"""The MLflow parent run of a study: one per study, shared by every worker, the trials its children.

It holds the search space and the sweeper settings as params, the trial counts and the best trial as
they come in, and at the end the `summary_by` table.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pandas as pd
from omegaconf import OmegaConf

from cxr.config import TrackingConfig
from cxr.runtime.errors import shorten
from cxr.runtime.masking import mask
from cxr.sweep.settings import CxrOptunaSweeperConf
from cxr.sweep.study import PARENT_ATTR, RUN_ID_ATTR
from cxr.tracking import names as metric_names

if TYPE_CHECKING:  # Hydra's plugin scan imports this module at start-up; both are imported on use
    import optuna
    from mlflow.tracking import MlflowClient

WAIT_S = 30.0  # a worker that joins a study created a moment ago waits this long for its parent run


def connect(tracking_cfg: TrackingConfig, create: bool) -> tuple[MlflowClient, str | None]:
    """The sweep's one use of the job config's `tracking` node: a client on the trials' MLflow store;
    with `create`, MLflow pointed at that store and experiment (both made if new) and the experiment id.

    Only the worker that created the study creates: workers opening a new SQLite store together race
    in its schema migrations, so the others touch MLflow once the parent run exists.
    """
    from mlflow.tracking import MlflowClient  # heavy: MLflow (Hydra's plugin scan imports this module)

    from cxr.tracking import runs as tracking  # heavy: MLflow

    experiment_id = tracking.configure(tracking_cfg) if create else None
    return MlflowClient(tracking_cfg.uri), experiment_id


class ParentRun:
    """A study's parent run, through an MLflow client on the trials' store."""

    def __init__(self, client: MlflowClient, run_id: str, tracking_uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri

    @classmethod
    def create(cls, tracking_cfg: TrackingConfig, name: str, tags: dict[str, str]) -> ParentRun:
        """A new parent run in the configured store and experiment (both made if new)."""
        client, experiment_id = connect(tracking_cfg, create=True)
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        return cls(client, run.info.run_id, tracking_cfg.uri)

    @classmethod
    def open(
        cls,
        tracking_cfg: TrackingConfig,
        study: optuna.Study,
        created: bool,
        searched: dict,
        settings: CxrOptunaSweeperConf,
        url: str,
    ) -> ParentRun:
        """The process that created the study creates its parent run, so concurrent workers share
        one; the others wait for it and mark it running again (a resumed sweep's too)."""
        run_id = None if created else _wait_for(study)
        client, experiment_id = connect(tracking_cfg, create=run_id is None)
        if run_id is None:
            run_id = _create(client, experiment_id, searched, settings, url)
            study.set_user_attr(PARENT_ATTR, run_id)
        else:
            client.update_run(run_id, status="RUNNING")
        return cls(client, run_id, tracking_cfg.uri)

    def log_progress(self, study: optuna.Study) -> None:
        """Trial counts by state, and the best trial so far: its value, number, run and parameters."""
        from optuna.trial import TrialState  # heavy: optuna (Hydra's plugin scan imports this module)

        trials = study.get_trials(deepcopy=False)
        step = len(trials)
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            count = sum(t.state == state for t in trials)
            self.client.log_metric(self.run_id, metric_names.trials(state.name.lower()), count, step=step)
        if not any(t.state == TrialState.COMPLETE for t in trials):
            return
        best = study.best_trial
        self.client.log_metric(self.run_id, metric_names.BEST_VALUE, best.value, step=step)
        self.set_tags(
            {
                metric_names.BEST_TRIAL_TAG: best.number,
                metric_names.BEST_RUN_TAG: best.user_attrs.get(RUN_ID_ATTR),
                **{metric_names.BEST_PARAM_PREFIX + key: value for key, value in best.params.items()},
            }
        )

    def set_tags(self, tags: dict[str, object]) -> None:
        """Set tags on the parent run in one batch. Workers share the run and may set the same new tag
        at the same moment: MLflow's `set_tag` then fails on the tag's unique key, its batch retries."""
        from mlflow.entities import RunTag  # heavy: MLflow (Hydra's plugin scan imports this module)

        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def finish(self, summary: pd.DataFrame | None = None) -> None:
        """Log the summary table (if any) as `summary.csv` and end the run FINISHED."""
        if summary is not None:
            self.client.log_text(self.run_id, summary.to_csv(), metric_names.SUMMARY_ARTIFACT)
        self.client.set_terminated(self.run_id, "FINISHED")

    def reap_children(self, grace_s: float) -> list[str]:
        """End KILLED the study's RUNNING trial runs whose process is gone (`tracking.reap_orphans`)."""
        from cxr.tracking import runs as tracking  # heavy: MLflow (Hydra's plugin scan imports this module)

        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        where = f"tags.mlflow.parentRunId = '{self.run_id}'"
        return tracking.reap_orphans(self.client, [experiment_id], grace_s, where)

    def end_killed(self, run_id: str, reason: str) -> None:
        """End a trial's run KILLED with `reason`, unless it has ended already."""
        from cxr.tracking import runs as tracking  # heavy: MLflow (Hydra's plugin scan imports this module)

        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_tag(run_id, metric_names.STATE_TAG, "FAIL")
            tracking.end_killed(self.client, run_id, reason)

    def ui_command(self) -> str:
        from cxr.tracking import runs as tracking  # heavy: MLflow (Hydra's plugin scan imports this module)

        return tracking.ui_command(self.tracking_uri)


def summary_table(study: optuna.Study, by: list[str], direction: str) -> pd.DataFrame | None:
    """Mean, standard deviation and count of the value per group of completed trials, best first:
    seed noise next to differences. None when no completed trial has any of the `by` parameters."""
    frame = study.trials_dataframe(attrs=("number", "value", "params", "state"))
    # a named objective (study.set_metric_names) is the column value_<name>
    frame = frame.rename(columns={f"value_{n}": "value" for n in study.metric_names or []})
    if frame.empty:
        return None
    frame = frame[frame["state"] == "COMPLETE"]
    columns = [f"params_{k}" for k in by if f"params_{k}" in frame]
    if frame.empty or not columns:
        return None
    return mean_std_count(frame, columns, direction)


def mean_std_count(frame: pd.DataFrame, by: list[str], direction: str) -> pd.DataFrame:
    """Mean, standard deviation and count of `frame["value"]` per group of the `by` columns, best first."""
    table = frame.groupby(by)["value"].agg(["mean", "std", "count"])
    return table.sort_values("mean", ascending=direction == "minimize")


def _wait_for(study: optuna.Study) -> str | None:
    """The parent run of a study another process has just created (and is about to record)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        run_id = study.user_attrs.get(PARENT_ATTR)
        if run_id or study.trials or time.monotonic() >= deadline:
            return run_id
        time.sleep(0.5)  # user_attrs and trials are read from the storage on each access


def _create(
    client: MlflowClient, experiment_id: str, searched: dict, settings: CxrOptunaSweeperConf, url: str
) -> str:
    """A new parent run holding the search space and the sweeper settings (less the storage URL)."""
    from cxr.tracking import runs as tracking  # heavy: MLflow (Hydra's plugin scan imports this module)

    run = client.create_run(
        experiment_id,
        run_name=f"sweep-{settings.study_name}",
        tags={
            metric_names.SWEEP_TAG: "true",
            metric_names.STUDY_TAG: settings.study_name,
            metric_names.STORAGE_TAG: mask(url),
        },
    )
    run_id = run.info.run_id
    params = {f"space.{k}": repr(v) for k, v in searched.items()}
    params.update({f"sweeper.{k}": v for k, v in tracking.flatten(OmegaConf.to_container(settings)).items()})
    params.pop("sweeper.storage", None)
    for key, value in params.items():
        client.log_param(run_id, key, shorten(mask(str(value)), 6000))  # MLflow caps a param at 6,000
    return run_id
