"""MLflow plumbing: the store, one context manager per tracked run, per-epoch metrics, the logged model."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from cxr.data.splits import read_split_csv
from cxr.runtime import heartbeat, interrupt
from cxr.runtime.errors import CxrError, shorten
from cxr.runtime.locks import locked, sqlite_file
from cxr.runtime.masking import mask, mask_values
from cxr.tracking import names as metric_names
from cxr.tracking import naming
from cxr.tracking.names import (
    CONFIG_ARTIFACT,
    ERROR_TAG,
    GIT_COMMIT_TAG,
    HOST_TAG,
    KILLED_TAG,
    PID_TAG,
    SEEN_TAG,
    STATE_TAG,
    STUDY_TAG,
    TRIAL_TAG,
)

if TYPE_CHECKING:
    from cxr.config import TrackingConfig  # a type only: config sits above tracking


def artifact_root(cfg: TrackingConfig) -> str | None:
    """`tracking.artifact_root`, or by default the `artifacts` folder beside a SQLite database, found
    where the database is (not the working directory); None leaves a server's default to the server."""
    if cfg.artifact_root:
        return cfg.artifact_root
    db = sqlite_file(cfg.uri)
    return str(db.parent / "artifacts") if db is not None else None


def _artifact_location(root: str | None, experiment_name: str, uri: str = "") -> str | None:
    """Where a new experiment keeps its artifacts. Against a tracking server (http[s]://) a local
    `artifact_root` is this machine's folder, which no other machine sees: the server's own default
    (its --artifacts-destination, served through it) applies instead; a URL root (s3://...) is kept."""
    if root is None:
        return None
    leaf = re.sub(r"[^\w.-]+", "_", experiment_name)
    if uri.startswith(("http://", "https://")) and "://" not in root:
        return None
    if "://" in root:
        return f"{root.rstrip('/')}/{leaf}"
    return (Path(root).expanduser().resolve() / leaf).as_uri()


def _check_writable(folder: Path, what: str, setting: str) -> None:
    """Fail at once, naming the folder, where SQLite would retry a read-only store for half a minute."""
    existing = folder  # the folder, or the nearest parent that exists, where the folder would be made
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CxrError(
            f"{what} folder {folder} is read-only ({setting}); make it writable or point {setting} "
            "at a writable folder"
        )


def _check_local_store(cfg: TrackingConfig, db: Path) -> None:
    _check_writable(db.parent, "the MLflow store's", "tracking.uri")
    if db.exists() and not os.access(db, os.W_OK):
        raise CxrError(f"the MLflow store {db} is read-only (tracking.uri); make it writable")
    root = artifact_root(cfg)
    if root is not None and "://" not in root:
        _check_writable(Path(root).expanduser(), "the MLflow artifact", "tracking.artifact_root")


def check_store(cfg: TrackingConfig) -> None:
    """A local store that cannot be written is an error naming its folder, before a command spends time
    on data or models (a server or another URI is checked when it is first used)."""
    db = sqlite_file(cfg.uri)
    if db is not None:
        _check_local_store(cfg, db)


def _experiment_id(cfg: TrackingConfig) -> str:
    try:
        experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        return mlflow.create_experiment(
            cfg.experiment_name,
            artifact_location=_artifact_location(artifact_root(cfg), cfg.experiment_name, cfg.uri),
        )
    except mlflow.exceptions.MlflowException as err:
        raise CxrError(f"MLflow store {mask(cfg.uri)} is not usable: {err}") from None


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id.

    A local SQLite store is created (schema migrations, the experiment) under a lock beside it: processes
    creating one store together (a joblib multirun on a fresh clone) otherwise race in the migrations."""
    db = sqlite_file(cfg.uri)
    mlflow.set_tracking_uri(cfg.uri)
    if mask(cfg.uri) != cfg.uri:  # MLflow prints "View run at <uri>" itself, password and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    if db is None:
        experiment_id = _experiment_id(cfg)
    else:
        _check_local_store(cfg, db)
        db.parent.mkdir(parents=True, exist_ok=True)
        with locked(db):
            experiment_id = _experiment_id(cfg)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextmanager
def reopened(run_id: str) -> Iterator[mlflow.ActiveRun]:
    """A finished run made active again to log more into it (a re-evaluation), its status and end time
    left as they were: MLflow's `start_run(run_id=...)` marks it FINISHED at the moment it closes, so a
    1.5-minute trial re-evaluated at the end of its sweep showed 15 minutes in the MLflow UI."""
    client = MlflowClient()
    before = client.get_run(run_id).info
    try:
        with mlflow.start_run(run_id=run_id) as run:
            yield run
    finally:
        if before.end_time is not None:
            client.set_terminated(run_id, status=before.status, end_time=before.end_time)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as flat MLflow params (`trainer.optimizer.learning_rate` ...), URL passwords
    masked. Any command's config (a training run's `Config`, the ensemble's), hence `DictConfig`."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("output_dir", None)
    return mask_values(flatten(tree))


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def run_tags(overrides: list[str]) -> dict[str, str]:
    tags = {"hydra.overrides": mask(" ".join(overrides)) if overrides else "(none)"}
    commit = git_commit()
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    return tags


# Who owns a RUNNING run, and when it was last seen (Unix seconds): what finds the runs whose process died.


def _ending(err: BaseException) -> tuple[str, str | None]:
    """(MLflow status, Optuna state tag) of a run that ended with `err`."""
    if type(err).__name__ == "TrialPruned":  # optuna.TrialPruned, without importing optuna for plain runs
        return "KILLED", "PRUNED"
    if isinstance(err, (KeyboardInterrupt, SystemExit)):
        return "KILLED", None
    return "FAILED", "FAIL"


def _owner_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), SEEN_TAG: str(int(time.time()))}


def _process_gone(pid: int) -> bool:
    """Whether no process `pid` runs on this machine (a killed child its parent has not reaped is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state == "Z"


def orphan_reason(tags: Mapping[str, str], grace_s: float, now: float | None = None) -> str | None:
    """Why a RUNNING run with these tags has no live owner, or None while it may have one: on this host its
    process is gone; on any host it was last seen more than `grace_s` ago. Runs cxr.train did not start
    (no owner tags: a sweep's parent run, another tool's) are never judged."""
    if HOST_TAG not in tags or PID_TAG not in tags:
        return None
    host, pid = tags[HOST_TAG], int(tags[PID_TAG])
    age = (now or time.time()) - float(tags.get(SEEN_TAG, 0))
    if host == socket.gethostname() and _process_gone(pid):
        return f"its process {pid} on {host} is gone (last seen {age:.0f} s ago)"
    if age > grace_s:
        return f"its process {pid} on {host} was last seen {age:.0f} s ago (grace {grace_s:g} s)"
    return None


def end_killed(client, run_id: str, reason: str) -> None:
    """End a run KILLED with the reason as the tag `cxr.killed_reason`."""
    client.set_tag(run_id, KILLED_TAG, shorten(reason, 5000))
    client.set_terminated(run_id, "KILLED")


def reap_orphans(client, experiment_ids: list[str], grace_s: float, where: str = "") -> list[str]:
    """Mark KILLED every RUNNING run of the experiments (matching the MLflow filter `where`) whose owner is
    gone (`orphan_reason`); returns their ids. Called at every cxr.train start and by a resumed sweep."""
    query = " and ".join(filter(None, ["attributes.status = 'RUNNING'", where]))
    reaped, token = [], None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=500, page_token=token)
        for run in page:
            reason = orphan_reason(run.data.tags, grace_s)
            if reason:
                if TRIAL_TAG in run.data.tags:  # a sweep trial's run: its Optuna trial fails the same way
                    client.set_tag(run.info.run_id, STATE_TAG, "FAIL")
                end_killed(client, run.info.run_id, f"orphaned: {reason}")
                reaped.append(run.info.run_id)
        token = page.token
        if not token:
            return reaped


@contextmanager
def tracked_run(
    cfg: DictConfig,  # a training run's Config, or another command's config with a `tracking` node
    overrides: list[str],
    reporter=None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """One MLflow run for `cfg`, yielding its id; it owns the run's name, parent, tags, params and
    resolved config, and its final state whatever happens inside:

    finished -> FINISHED; an exception -> FAILED with tag `cxr.error`; optuna.TrialPruned -> KILLED;
    Ctrl-C -> KILLED with tag `cxr.killed_reason`. For a sweep trial (`reporter`, the job's Optuna trial)
    the run is a child of the sweep's parent run and carries `optuna.state` (COMPLETE, PRUNED or FAIL);
    a grid multirun's job is a child of `parent_run_id`.

    The name: `tracking.run_name` if set; a trial's `<study>-trial-<n>`; else `run_name` (or one
    `cxr.tracking.naming` makes from the config and overrides) with a unique suffix.

    While it runs, the run's last-seen tag (and a trial's Optuna heartbeat) is renewed by a background
    thread, and before it starts, the experiment's runs whose process died are marked KILLED.
    """
    interrupt.install()  # also where no command installed it: a joblib or submitit worker's job
    t = cfg.tracking
    experiment_id = configure(t)
    client = MlflowClient(t.uri)
    reap_orphans(client, [experiment_id], t.orphan_grace_s)
    given = t.run_name
    options: dict[str, Any] = {
        "run_name": given or (naming.unique(run_name) if run_name else naming.run_name(cfg, overrides)),
        "parent_run_id": parent_run_id,
        "tags": _owner_tags(),
    }
    if reporter is not None:
        options = {
            "run_name": given or f"{reporter.study_name}-trial-{reporter.number}",
            "parent_run_id": reporter.parent_run_id,
            "tags": {
                **options["tags"],
                STUDY_TAG: reporter.study_name,
                TRIAL_TAG: str(reporter.number),
            },
        }
    run = mlflow.start_run(**options)
    run_id = run.info.run_id
    with ExitStack() as alive:
        alive.enter_context(
            heartbeat.beating(
                lambda: client.set_tag(run_id, SEEN_TAG, str(int(time.time()))), t.heartbeat_interval_s
            )
        )
        if reporter is not None:
            alive.enter_context(reporter.heartbeat())
        try:
            if reporter is not None:
                reporter.record_run(run_id)
            mlflow.set_tags(run_tags(overrides))
            mlflow.log_params(config_params(cfg))
            mlflow.log_text(mask(OmegaConf.to_yaml(cfg, resolve=True)), CONFIG_ARTIFACT)
            yield run_id
            interrupt.raise_pending()  # a Ctrl-C swallowed after the last batch still ends it KILLED
        except BaseException as err:
            status, state = _ending(err)
            if status == "FAILED":
                mlflow.set_tag(ERROR_TAG, shorten(mask(f"{type(err).__name__}: {err}"), 5000))
            elif state is None:
                mlflow.set_tag(KILLED_TAG, f"interrupted ({type(err).__name__})")
            if reporter is not None and state is not None:
                mlflow.set_tag(STATE_TAG, state)
            mlflow.end_run(status)
            raise
    if reporter is not None:
        mlflow.set_tag(STATE_TAG, "COMPLETE")
    mlflow.end_run("FINISHED")


@contextmanager
def timed(phase: str) -> Iterator[None]:
    """Log the wall time of the block as the metric `time/<phase>_s` of the active run (when it ends
    without an exception): where a run's time went, beside its epochs (`bench/trial_overhead.py`)."""
    start = time.perf_counter()
    yield
    mlflow.log_metric(metric_names.timing(phase), time.perf_counter() - start)


def epoch_logger():
    """A Keras callback that logs every epoch's training and validation metrics and its duration
    (`time/epoch_s`) to the active run, under `train/` and `val/` names."""
    import keras  # heavy: only a training logs epochs (the sweeper and registry commands use this module)

    class MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            metrics = {metric_names.from_keras(k): float(v) for k, v in (logs or {}).items()}
            # val/auc first: the UI's parallel-coordinates view opens on a run's first-logged metric
            metrics = dict(sorted(metrics.items(), key=lambda item: item[0] != metric_names.MONITOR))
            # the first epoch's time includes tracing the graphs
            metrics[metric_names.timing("epoch")] = time.perf_counter() - self.started
            if metrics:
                mlflow.log_metrics(metrics, step=epoch)

    return MlflowEpochLogger()


def logged_run_inputs(run_id: str) -> tuple[DictConfig, Any]:
    """A cxr run's resolved config and its split (image_id, patient_id, split), as it logged them."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            config = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/config.yaml", dst_path=folder)
            split = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/split.csv", dst_path=folder)
        except Exception as err:  # MLflow raises several types for a missing artifact
            raise CxrError(
                f"run {run_id} has no config.yaml/split.csv artifacts; was it logged by cxr.train? ({err})"
            ) from None
        return OmegaConf.load(config), read_split_csv(split)


def ui_command(uri: str) -> str:
    """How to look at the runs: a local store needs `mlflow ui`, a server is already one."""
    if uri.startswith(("http://", "https://")):
        return f"open {mask(uri)}"
    return f"mlflow ui --backend-store-uri {mask(uri)}"
