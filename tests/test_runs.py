"""`tracking.tracked_run` owns a run's identity and its final state, whatever ends it (real SQLite store)."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient

from cxr.tracking import runs as tracking
from tests.conftest import store_overrides


@pytest.fixture
def cfg(compose_cfg, tmp_path):
    return compose_cfg(["loss=dynamic_bce", *store_overrides(tmp_path)])


def only_run(cfg):
    client = MlflowClient(cfg.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment_name).experiment_id])
    return run


def test_a_run_that_finishes_holds_params_tags_and_config(cfg):
    with tracking.tracked_run(cfg, ["loss=dynamic_bce"]) as run_id:
        pass
    run = only_run(cfg)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["loss.smoothing_factor"] == "0.1"
    assert run.data.tags["hydra.overrides"] == "loss=dynamic_bce"
    assert "git_commit" not in run.data.tags  # MLflow's own mlflow.source.git.commit says it
    assert "cxr.error" not in run.data.tags


@pytest.mark.parametrize(
    "raised, status",
    [(ValueError("bad value"), "FAILED"), (KeyboardInterrupt(), "KILLED"), (optuna.TrialPruned(), "KILLED")],
)
def test_every_ending_leaves_a_final_state(cfg, raised, status):
    with pytest.raises(type(raised)), tracking.tracked_run(cfg, []):
        raise raised
    run = only_run(cfg)
    assert run.info.status == status
    assert ("cxr.error" in run.data.tags) == (status == "FAILED")
    if status == "FAILED":
        assert run.data.tags["cxr.error"] == "ValueError: bad value"
    import mlflow

    assert mlflow.active_run() is None  # nothing left open for the next run in this process


def run_names(cfg) -> list[str]:
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    return sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id]))


def test_two_runs_of_one_config_get_different_names_that_say_what_they_are(cfg):
    import random

    for _ in range(2):
        random.seed(cfg.seed)  # what training's seeding does; MLflow's own generator would repeat itself
        with tracking.tracked_run(cfg, ["loss=dynamic_bce", "trainer.optimizer.learning_rate=0.001"]):
            pass
    first, second = run_names(cfg)
    assert first != second
    for name in (first, second):
        assert name.startswith("small_cnn-dynamic_bce-lr=0.001-s42-"), name


def test_run_name_is_settable(compose_cfg, tmp_path):
    cfg = compose_cfg(["tracking.run_name=baseline", *store_overrides(tmp_path)])
    with tracking.tracked_run(cfg, []):
        pass
    assert run_names(cfg) == ["baseline"]


def test_artifacts_go_beside_the_sqlite_database_not_under_the_working_directory(
    compose_cfg, tmp_path, monkeypatch
):
    """MLFLOW_TRACKING_URI moves the database; the default artifact root moves with it."""
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    cfg = compose_cfg(["output_dir=out"])
    assert cfg.tracking.uri == f"sqlite:///{store}/mlflow.db" and cfg.tracking.artifact_root is None
    with tracking.tracked_run(cfg, []) as run_id:
        pass
    artifacts = store / "artifacts" / cfg.tracking.experiment_name / run_id / "artifacts"
    assert (artifacts / "config.yaml").is_file()
    assert list(elsewhere.iterdir()) == []


def test_a_relative_sqlite_uri_keeps_its_artifacts_beside_it(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(
        ["tracking.uri=sqlite:///runs/here.db", "tracking.experiment_name=rel", "output_dir=out"]
    )
    with tracking.tracked_run(cfg, []) as run_id:
        pass
    assert (tmp_path / "runs" / "artifacts" / "rel" / run_id / "artifacts" / "config.yaml").is_file()
    assert (
        tracking.artifact_root(compose_cfg(["tracking.uri=http://server:5000", "output_dir=o"]).tracking)
        is None
    )


@pytest.mark.slow
def test_a_real_run_started_elsewhere_keeps_its_artifacts_with_the_tracking_uri(real_run):
    """`python -m cxr.train` from another folder with MLFLOW_TRACKING_URI set (tests/conftest.py): the
    model and every other artifact land beside that database, nothing in the working directory's mlruns/."""
    assert real_run.out.returncode == 0, real_run.out.stderr[-3000:]
    client = MlflowClient(real_run.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cxr").experiment_id])
    store = real_run.store
    assert run.info.artifact_uri.startswith((store / "artifacts" / "cxr").as_uri())
    assert list((store / "artifacts").rglob("config.yaml")) and list((store / "artifacts").rglob("MLmodel"))
    assert not (real_run.elsewhere / "mlruns").exists()
