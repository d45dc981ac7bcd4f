"""The stored Optuna study a sweep asks and tells: storage, sampler, pruner, created or joined.

The sweeper stores what a job needs (the pruner's settings and the metric to report) in the study's
user attributes, so a job on any machine rebuilds the same pruner from the storage URL alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from cxr.runtime.errors import CxrError
from cxr.runtime.locks import locked, sqlite_file
from cxr.runtime.masking import mask
from cxr.sweep import space
from cxr.sweep.settings import CxrOptunaSweeperConf

if TYPE_CHECKING:  # Hydra's plugin scan imports this module at start-up; optuna is imported on use
    import optuna

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
# user attributes of the study ...
PRUNER_ATTR = "cxr.pruner"  # the pruner's settings, for each job to rebuild it
MONITOR_ATTR = "cxr.monitor"  # the metric each trial reports every epoch
HEARTBEAT_ATTR = "cxr.heartbeat"  # heartbeat_interval, grace_period, max_retry: for each job to beat
PARENT_ATTR = "mlflow_parent_run_id"  # the study's MLflow parent run
# ... and of each trial
RUN_ID_ATTR = "mlflow_run_id"  # the trial's MLflow run


def storage_url(setting: str | None) -> str:
    """`hydra.sweeper.storage`, or the default SQLite file next to the local MLflow store."""
    return setting or DEFAULT_STORAGE


def heartbeat_settings(settings: CxrOptunaSweeperConf) -> dict[str, Any]:
    """The sweeper's heartbeat settings, as the study stores them for its jobs."""
    return {k: settings[k] for k in ("heartbeat_interval", "grace_period", "max_retry")}


class RetryAndRecord:
    """Optuna's RetryHeartbeatStaleTrialCallback that also keeps the trials it was called for.

    `optuna.storages.fail_stale_trials` calls it only for the trials whose FAIL this process wrote (the
    storage lets one process fail a trial), so of several workers recovering together exactly one
    ends each dead trial's run (`stale_trials_failed_here`).
    """

    def __init__(self, max_retry: int | None):
        import optuna  # heavy: optuna, on use (Hydra's plugin scan imports this module)

        self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.failed: list[optuna.trial.FrozenTrial] = []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._retry(study, trial)
        self.failed.append(trial)


def stale_trials_failed_here(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Fail the study's trials whose heartbeat stopped (queued again up to `max_retry`), and return those
    this call failed: none that another worker failed first, or that had failed before. `study` is one
    `create_or_join` opened (its storage carries cxr's heartbeat settings, so a RetryAndRecord)."""
    import optuna  # heavy: optuna, on use (Hydra's plugin scan imports this module)

    callback: RetryAndRecord = study._storage.get_heartbeat_stale_trial_callback()
    start = len(callback.failed)
    optuna.storages.fail_stale_trials(study)
    return callback.failed[start:]


def rdb_storage(
    url: str, heartbeat: Mapping[str, Any] | None = None, attempts: int = 5
) -> optuna.storages.RDBStorage:
    """An Optuna storage; SQLite waits for a lock instead of failing when several workers write.

    With `heartbeat` (`heartbeat_settings`), the storage keeps each trial's heartbeat, and
    `optuna.storages.fail_stale_trials` fails a RUNNING trial whose heartbeat is older than the grace
    period and queues it again (WAITING, same parameters) up to `max_retry` times: one mechanism for every
    Optuna storage with heartbeats, SQLite on one machine as PostgreSQL for many.

    Workers that start together on a new database race to create its tables: a new SQLite file is
    created under a lock beside it; a database server's loser is retried a few times.
    """
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat is not None:
        kwargs.update(
            heartbeat_interval=heartbeat["heartbeat_interval"],
            grace_period=heartbeat["grace_period"],
            heartbeat_stale_trial_callback=RetryAndRecord(heartbeat["max_retry"]),
        )
    db = sqlite_file(url)
    if db is None:
        return _open(url, kwargs, attempts)
    db.parent.mkdir(parents=True, exist_ok=True)
    with locked(db):
        return _open(url, kwargs, 1)


def _open(url: str, kwargs: dict[str, Any], attempts: int) -> optuna.storages.RDBStorage:
    import optuna  # heavy: optuna, on use (Hydra's plugin scan imports this module)

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as err:  # SQLAlchemy raises many types for a bad URL or an unreachable server
            if (
                attempt + 1 == attempts
                or "UNIQUE constraint" not in str(err)
                and "already exists" not in str(err)
            ):
                raise CxrError(mask(f"Optuna storage {url!r} is not usable: {err}")) from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def build_pruner(settings: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """median, hyperband or none, from the sweeper's `pruner` settings."""
    import optuna  # heavy: optuna, on use (Hydra's plugin scan imports this module)

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


def build_sampler(
    settings: Mapping[str, Any], searched: dict, joined: bool = False
) -> optuna.samplers.BaseSampler:
    """tpe, random or grid, from the sweeper's `sampler` settings; grid needs a finite search space.

    `joined`: for a worker joining a study that exists (another worker's, or a resumed sweep), seeded
    afresh: with the study's seed it would propose the very parameters the first worker did."""
    import optuna  # heavy: optuna, on use (Hydra's plugin scan imports this module)

    name = settings["name"]
    settings = {**settings, "seed": None if joined else settings["seed"]}
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=settings["seed"], n_startup_trials=settings["n_startup_trials"]
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=settings["seed"])
    if name == "grid":
        try:
            return optuna.samplers.GridSampler(space.grid(searched), seed=settings["seed"])
        except space.SearchSpaceError as err:
            raise CxrError(str(err)) from None
    raise CxrError(f"hydra.sweeper.sampler.name={name!r}: choose tpe, random or grid")


def create_or_join(
    settings: CxrOptunaSweeperConf, url: str, searched: dict, metric_name: str | None = None
) -> tuple[optuna.Study, bool]:
    """The study `settings.study_name` in the storage at `url`, and whether this call created it.

    Creating a study is atomic in the storage, so of several workers starting together exactly one
    gets True. Either way the study records the pruner's settings and the monitored metric for jobs,
    and `metric_name` (what the trials return) names the objective for optuna-dashboard.
    """
    import optuna  # heavy: optuna, on use (Hydra's plugin scan imports this module)

    storage = rdb_storage(url, heartbeat_settings(settings))
    sampler = build_sampler(settings.sampler, searched)
    pruner = build_pruner(settings.pruner)
    if settings.direction not in ("maximize", "minimize"):
        raise CxrError(f"hydra.sweeper.direction={settings.direction!r}: choose maximize or minimize")
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=settings.study_name,
            sampler=sampler,
            pruner=pruner,
            direction=settings.direction,
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        sampler = build_sampler(settings.sampler, searched, joined=True)
        study = optuna.load_study(
            study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner
        )
        created = False
        if study.direction.name.lower() != settings.direction:
            raise CxrError(
                f"study {settings.study_name!r} exists with direction {study.direction.name.lower()}; "
                "choose another hydra.sweeper.study_name"
            ) from None
    study.set_user_attr(PRUNER_ATTR, OmegaConf.to_container(settings.pruner))
    study.set_user_attr(MONITOR_ATTR, settings.monitor)
    study.set_user_attr(HEARTBEAT_ATTR, heartbeat_settings(settings))
    if metric_name:
        study.set_metric_names([metric_name])
    return study, created
