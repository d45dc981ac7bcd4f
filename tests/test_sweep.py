"""`python -m cxr.train -m +sweep=...` on our Optuna sweeper: real subprocesses, a real SQLite Optuna
storage and a real SQLite MLflow store."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.conftest import REPO, TINY, run_cli, store_overrides

FAST = ["evaluation.plots=false", "evaluation.bootstrap.resamples=20", "tracking.log_model=false"]
SMALL = [o for o in TINY if not o.startswith("trainer.batch_size")]  # core searches the batch size


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One generated dataset and image cache for every sweep here."""
    return tmp_path_factory.mktemp("sweep-data")


def sweep_args(tmp, data, study: str, *extra: str) -> list[str]:
    stores = [o for o in store_overrides(tmp) if not o.startswith(("dataset.root", "dataset.cache_dir"))]
    return [
        "-m",
        *SMALL,
        *FAST,
        *stores,
        f"dataset.root={data}/synthetic",
        f"dataset.cache_dir={data}/prepared",
        f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweep.dir={tmp}/multirun",
        *extra,
    ]


def load(tmp, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp}/optuna.db")


def runs(tmp):
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("cxr")
    everything = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in everything if r.data.tags.get("cxr.sweep") == "true"]
    children = [r for r in everything if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_core_sweep_runs_four_trials_then_resumes_with_four_more(tmp_path, data_root):
    args = sweep_args(
        tmp_path, data_root, "core", "+sweep=core", "model=small_cnn", "hydra.sweeper.n_trials=4"
    )
    first = run_cli("cxr.train", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    study = load(tmp_path, "core")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert set(study.trials[0].params) == {
        "loss.smoothing_factor", "trainer.batch_size", "model.dropout", "trainer.optimizer.learning_rate"
    }  # fmt: skip
    (parent,), children = runs(tmp_path)
    assert len(children) == 4 and {c.data.tags["mlflow.parentRunId"] for c in children} == {
        parent.info.run_id
    }
    for child in children:
        number = int(child.data.tags["optuna.trial_number"])
        trial = study.trials[number]
        assert child.data.tags["optuna.state"] == "COMPLETE" and child.info.status == "FINISHED"
        assert trial.user_attrs["mlflow_run_id"] == child.info.run_id
        assert child.data.params["loss.smoothing_factor"] == str(trial.params["loss.smoothing_factor"])
        assert child.data.metrics["val_auc_mean"] == pytest.approx(trial.value)
        assert "test_auc_Hernia" in child.data.metrics and "val_loss" in child.data.metrics
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    assert parent.info.status == "FINISHED"
    assert f"best trial {study.best_trial.number}: value {study.best_value:.4f}" in first.stdout
    assert "optuna-dashboard sqlite:///" in first.stdout and "mlflow ui --backend-store-uri" in first.stdout

    again = run_cli("cxr.train", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [t.number for t in load(tmp_path, "core").trials] == list(range(8))
    (same_parent,), children = runs(tmp_path)
    assert same_parent.info.run_id == parent.info.run_id and len(children) == 8


def test_a_trial_the_pruner_stops_is_pruned_in_optuna_and_mlflow(tmp_path, data_root):
    """A finished trial that reported a perfect AUC every epoch: any real trial trails its median."""
    study = optuna.create_study(
        study_name="prune", storage=f"sqlite:///{tmp_path}/optuna.db", direction="maximize"
    )
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={0: 1.0, 1: 1.0}))
    args = sweep_args(
        tmp_path,
        data_root,
        "prune",
        "hydra/sweeper=cxr_optuna",
        "model.dropout=interval(0.1,0.3)",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=0",
    )
    out = run_cli("cxr.train", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    trial = load(tmp_path, "prune").trials[1]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    _, (child,) = runs(tmp_path)
    assert child.data.tags["optuna.state"] == "PRUNED" and child.info.status == "KILLED"
    assert child.data.metrics["epochs_trained"] == 1 and "test_auc_mean" not in child.data.metrics
    assert "trial 1 pruned" in out.stdout


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path, data_root):
    args = sweep_args(
        tmp_path,
        data_root,
        "fail",
        "hydra/sweeper=cxr_optuna",
        "hydra.sweeper.sampler.name=grid",
        "trainer.optimizer.name=choice(sgd,nosuch)",
        "trainer.optimizer.learning_rate=choice(0.001,1e30)",  # at 1e30 the loss becomes NaN
        "hydra.sweeper.n_trials=6",
    )
    out = run_cli("cxr.train", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "all 4 grid points have a trial" in out.stdout
    trials = load(tmp_path, "fail").trials
    states = {
        (t.params["trainer.optimizer.name"], t.params["trainer.optimizer.learning_rate"]): t.state
        for t in trials
    }
    assert states == {
        ("sgd", 0.001): TrialState.COMPLETE,
        ("sgd", 1e30): TrialState.FAIL,
        ("nosuch", 0.001): TrialState.FAIL,
        ("nosuch", 1e30): TrialState.FAIL,
    }
    assert "unknown optimizer 'nosuch'" in out.stderr and "loss became nan" in out.stderr
    _, children = runs(tmp_path)
    by_state = {}
    for child in children:
        by_state.setdefault(child.data.tags["optuna.state"], []).append(child)
    assert len(by_state["COMPLETE"]) == 1 and by_state["COMPLETE"][0].info.status == "FINISHED"
    assert len(by_state["FAIL"]) == 3 and all(c.info.status == "FAILED" for c in by_state["FAIL"])
    assert sum("loss became nan" in c.data.tags["cxr.error"] for c in by_state["FAIL"]) == 1


def test_two_processes_on_one_sqlite_study_run_distinct_trials(tmp_path, data_root):
    # the dataset and cache exist before two processes would both create them
    prepared = run_cli(
        "cxr.prepare",
        *TINY[:4],
        f"dataset.root={data_root}/synthetic",
        f"dataset.cache_dir={data_root}/prepared",
        f"hydra.run.dir={tmp_path}/prepare",
    )
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    args = sweep_args(
        tmp_path, data_root, "shared", "+sweep=core", "model=small_cnn", "hydra.sweeper.n_trials=2"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "cxr.train", *args, f"hydra.sweep.dir={tmp_path}/multirun{i}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    trials = load(tmp_path, "shared").trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["mlflow_run_id"] for t in trials}) == 4
    (parent,), children = runs(tmp_path)
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == [0, 1, 2, 3]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}


def test_bad_search_space_is_one_line_and_exit_2(tmp_path, data_root):
    out = run_cli(
        "cxr.train",
        *sweep_args(
            tmp_path, data_root, "bad", "hydra/sweeper=cxr_optuna", "hydra.sweeper.sampler.name=grid"
        ),
        "model.dropout=interval(0.1,0.3)",
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip().splitlines()[-1].startswith("cxr: error: sampler grid needs choice() or range()")
    )


def test_hydra_sweep_syntax_becomes_optuna_distributions():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.cxr_optuna_sweeper.search_space import grid, split

    lines = [
        "model.dropout=interval(0.2, 0.6)",
        "trainer.optimizer.learning_rate=tag(log, interval(1e-5, 1e-2))",
        "trainer.epochs=int(interval(5, 20))",
        "trainer.batch_size=range(8, 64, 8)",
        "loss=choice(bce, dynamic_bce)",
        "seed=3",
        "model.dropout=interval(0.1, 0.3)",  # a later override of a key wins
    ]
    space, fixed = split(OverridesParser.create().parse_overrides(lines))
    assert space == {
        "model.dropout": FloatDistribution(0.1, 0.3),
        "trainer.optimizer.learning_rate": FloatDistribution(1e-5, 1e-2, log=True),
        "trainer.epochs": IntDistribution(5, 20),
        "trainer.batch_size": IntDistribution(8, 56, step=8),
        "loss": CategoricalDistribution(["bce", "dynamic_bce"]),
    }
    assert fixed == {"seed": "3"}
    assert grid({k: space[k] for k in ("trainer.batch_size", "loss")}) == {
        "trainer.batch_size": [8, 16, 24, 32, 40, 48, 56],
        "loss": ["bce", "dynamic_bce"],
    }


def test_shipped_sweeps_compose_as_sweep_options(compose_cfg):
    from cxr.config import CONF_DIR

    assert {"core.yaml", "loss_screen.yaml"} <= {p.name for p in (CONF_DIR / "sweep").glob("*.yaml")}
    cfg = compose_cfg(["+sweep=loss_screen", "experiment=demo"])
    assert cfg.model.name == "small_cnn"


def test_pruners_are_built_from_their_settings():
    from cxr.errors import CxrError
    from cxr.trial import build_pruner
    from hydra_plugins.cxr_optuna_sweeper.config import PrunerConf

    def settings(name):
        return {**PrunerConf(name=name).__dict__}

    assert isinstance(build_pruner(settings("median")), optuna.pruners.MedianPruner)
    assert isinstance(build_pruner(settings("hyperband")), optuna.pruners.HyperbandPruner)
    assert isinstance(build_pruner(settings("none")), optuna.pruners.NopPruner)
    with pytest.raises(CxrError, match="choose median, hyperband or none"):
        build_pruner(settings("asha"))


def test_n_jobs_trials_run_in_parallel_processes_with_the_joblib_launcher(tmp_path, data_root):
    args = sweep_args(
        tmp_path,
        data_root,
        "joblib",
        "+sweep=core",
        "model=small_cnn",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )
    out = run_cli("cxr.train", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = load(tmp_path, "joblib").trials
    assert sorted(t.number for t in trials) == [0, 1] and all(t.state == TrialState.COMPLETE for t in trials)
    (parent,), children = runs(tmp_path)
    assert len(children) == 2 and {c.data.tags["mlflow.parentRunId"] for c in children} == {
        parent.info.run_id
    }


def _open_storage(url: str) -> str:
    from cxr.trial import rdb_storage

    rdb_storage(url)
    return "ok"


def test_workers_creating_a_new_storage_together_all_succeed(tmp_path):
    """Optuna's first connection creates the tables; simultaneous workers race on that (seen in CI)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        for attempt in range(3):
            url = f"sqlite:///{tmp_path}/race{attempt}.db"
            assert pool.map(_open_storage, [url] * 4) == ["ok"] * 4
