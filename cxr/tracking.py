"""MLflow plumbing: the store, one context manager per tracked run, per-epoch metrics, the logged model."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from cxr.errors import CxrError

_KERAS_RENAMES = {"loss": "train_loss", "learning_rate": "lr"}


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def _artifact_location(root: str, experiment_name: str, uri: str = "") -> str | None:
    """Where a new experiment keeps its artifacts. Against a tracking server (http[s]://) a local
    `artifact_root` is this machine's folder, which no other machine sees: the server's own default
    (its --artifacts-destination, served through it) applies instead; a URL root (s3://...) is kept."""
    leaf = re.sub(r"[^\w.-]+", "_", experiment_name)
    if uri.startswith(("http://", "https://")) and "://" not in root:
        return None
    if "://" in root:
        return f"{root.rstrip('/')}/{leaf}"
    return (Path(root).expanduser().resolve() / leaf).as_uri()


def configure(cfg) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    db = _sqlite_path(cfg.uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.uri)
    try:
        experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
        if experiment is None:
            experiment_id = mlflow.create_experiment(
                cfg.experiment_name,
                artifact_location=_artifact_location(cfg.artifact_root, cfg.experiment_name, cfg.uri),
            )
        else:
            experiment_id = experiment.experiment_id
    except mlflow.exceptions.MlflowException as err:
        raise CxrError(f"MLflow store {cfg.uri} is not usable: {err}") from None
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


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
    """The resolved config as flat MLflow params (`trainer.optimizer.learning_rate` ...)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("output_dir", None)
    return flatten(tree)


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
    tags = {"hydra.overrides": " ".join(overrides) if overrides else "(none)"}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


ERROR_TAG = "cxr.error"


def _ending(err: BaseException) -> tuple[str, str | None]:
    """(MLflow status, Optuna state tag) of a run that ended with `err`."""
    if type(err).__name__ == "TrialPruned":  # optuna.TrialPruned, without importing optuna for plain runs
        return "KILLED", "PRUNED"
    if isinstance(err, (KeyboardInterrupt, SystemExit)):
        return "KILLED", None
    return "FAILED", "FAIL"


@contextmanager
def tracked_run(
    cfg: DictConfig, overrides: list[str], reporter=None, run_name: str | None = None
) -> Iterator[str]:
    """One MLflow run for `cfg`, yielding its id; it owns the run's name, parent, tags, params and
    resolved config, and its final state whatever happens inside:

    finished -> FINISHED; an exception -> FAILED with tag `cxr.error`; optuna.TrialPruned -> KILLED;
    Ctrl-C -> KILLED. For a sweep trial (`reporter`, the job's Optuna trial) the run is a child of the
    sweep's parent run and carries `optuna.state` (COMPLETE, PRUNED or FAIL).
    """
    from cxr.sweep.reporter import STATE_TAG

    configure(cfg.tracking)
    options: dict[str, Any] = {"run_name": cfg.tracking.run_name or run_name}
    if reporter is not None:
        options = {
            "run_name": cfg.tracking.run_name or f"{reporter.study_name}-trial-{reporter.number}",
            "parent_run_id": reporter.parent_run_id,
            "tags": {"optuna.study_name": reporter.study_name, "optuna.trial_number": str(reporter.number)},
        }
    run = mlflow.start_run(**options)
    try:
        if reporter is not None:
            reporter.record_run(run.info.run_id)
        mlflow.set_tags(run_tags(overrides))
        mlflow.log_params(config_params(cfg))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield run.info.run_id
    except BaseException as err:
        status, state = _ending(err)
        if status == "FAILED":
            mlflow.set_tag(ERROR_TAG, f"{type(err).__name__}: {err}"[:5000])
        if reporter is not None and state is not None:
            mlflow.set_tag(STATE_TAG, state)
        mlflow.end_run(status)
        raise
    if reporter is not None:
        mlflow.set_tag(STATE_TAG, "COMPLETE")
    mlflow.end_run("FINISHED")


@contextmanager
def timed(phase: str) -> Iterator[None]:
    """Log the wall time of the block as the metric `time_<phase>_s` of the active run (when it ends
    without an exception): where a run's time went, beside its epochs (`bench/trial_overhead.py`)."""
    start = time.perf_counter()
    yield
    mlflow.log_metric(f"time_{phase}_s", time.perf_counter() - start)


def keras_metric_name(name: str) -> str:
    if name in _KERAS_RENAMES:
        return _KERAS_RENAMES[name]
    return name if name.startswith("val_") else f"train_{name}"


def epoch_logger():
    """A Keras callback that logs every epoch's training and validation metrics and its duration
    (`time_epoch_s`) to the active run."""
    import keras

    class MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            metrics = {keras_metric_name(k): float(v) for k, v in (logs or {}).items()}
            metrics["time_epoch_s"] = time.perf_counter() - self.started  # the first one traces the graphs
            if metrics:
                mlflow.log_metrics(metrics, step=epoch)

    return MlflowEpochLogger()


def logged_run_inputs(run_id: str) -> tuple[DictConfig, Any]:
    """A cxr run's resolved config and its split (image_id, patient_id, split), as it logged them."""
    import tempfile

    from cxr.data.splits import read_split_csv

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
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"
