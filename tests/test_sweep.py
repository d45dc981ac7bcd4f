"""`python -m cxr.train -m +sweep=...` on our Optuna sweeper: real subprocesses, a real SQLite Optuna
storage and a real SQLite MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from cxr.runtime.errors import CxrError
from cxr.tracking import names as mn
from tests.conftest import REPO, TINY, hydra_compose, run_cli, store_overrides

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


REGISTER = ["tracking.log_model=true", "tracking.registered_model_name=swept"]


def registered_runs(tmp) -> list[str]:
    """The runs behind the versions of the `swept` model (none when nothing was registered)."""
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    return [v.run_id for v in client.search_model_versions("name = 'swept'")]


def load(tmp, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp}/optuna.db")


def runs(tmp):
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("cxr")
    everything = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in everything if r.data.tags.get("cxr.sweep") == "true"]
    children = [r for r in everything if "mlflow.parentRunId" in r.data.tags]
    return parents, children


@pytest.mark.slow
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
        assert child.data.metrics[mn.OPTIMIZED] == pytest.approx(trial.value)
        assert "test/auc/Hernia" in child.data.metrics and "val/loss" in child.data.metrics
    assert parent.data.metrics[mn.BEST_VALUE] == pytest.approx(study.best_value)
    assert parent.data.tags["best_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    assert parent.info.status == "FINISHED"
    assert f"best trial {study.best_trial.number}: value {study.best_value:.4f}" in first.stdout
    assert "optuna-dashboard sqlite:///" in first.stdout and "mlflow ui --backend-store-uri" in first.stdout
    top = sorted(children, key=lambda c: c.data.metrics[mn.OPTIMIZED], reverse=True)[:2]
    (a, a_low, a_high), (b, b_low, b_high) = [
        [c.data.metrics[k] for k in (mn.OPTIMIZED, *mn.interval(mn.OPTIMIZED))] for c in top
    ]
    assert f"{a:.4f} [{a_low:.4f}, {a_high:.4f}]" in first.stdout and f"{b:.4f} [{b_low:.4f}," in first.stdout
    overlap = a_low <= b_high and b_low <= a_high
    assert ("selection is within noise" in first.stdout) == overlap
    assert parent.data.tags["cxr.selection_within_noise"] == str(overlap).lower()

    again = run_cli("cxr.train", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [t.number for t in load(tmp_path, "core").trials] == list(range(8))
    (same_parent,), children = runs(tmp_path)
    assert same_parent.info.run_id == parent.info.run_id and len(children) == 8
    assert same_parent.data.metrics[mn.trials("complete")] == 8 and same_parent.info.status == "FINISHED"


@pytest.mark.slow
def test_trials_skip_intervals_and_plots_and_the_best_trial_gets_them_at_the_end(tmp_path, data_root):
    """The sweeper's default trial evaluation: point values only; the best trial is re-evaluated."""
    args = [
        a for a in sweep_args(tmp_path, data_root, "cheap", "+sweep=core", "model=small_cnn") if a not in FAST
    ]
    one = "hydra.sweeper.trial_evaluation.best_trials=1"
    out = run_cli("cxr.train", *args, "hydra.sweeper.n_trials=2", one, *REGISTER)
    assert out.returncode == 0, out.stderr[-3000:]
    study = load(tmp_path, "cheap")
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    _, children = runs(tmp_path)
    assert len(children) == 2
    for child in children:
        metrics, run_id = child.data.metrics, child.info.run_id
        assert metrics[mn.OPTIMIZED] == pytest.approx(
            study.trials[int(child.data.tags["optuna.trial_number"])].value
        )
        assert {mn.timing("fit"), mn.timing("evaluate"), mn.timing("log_model")} <= set(metrics)
        plots = [a.path for a in client.list_artifacts(run_id, "plots")]
        if run_id == best_run:
            assert "val/auc_mean_ci_low" in metrics and "test/auc_mean_ci_high" in metrics
            assert "plots/roc_val.png" in plots and child.data.tags["cxr.reevaluated_with"]
            # the re-evaluation at the end of the sweep leaves the trial's end time (its duration) alone
            reevaluated = client.get_metric_history(run_id, "val/auc_mean_ci_low")[-1].timestamp
            assert child.info.status == "FINISHED" and child.info.end_time < reevaluated
        else:
            assert "val/auc_mean_ci_low" not in metrics and plots == []
    assert sorted(registered_runs(tmp_path)) == sorted(c.info.run_id for c in children)
    (version,) = client.search_model_versions(f"name = 'swept' and run_id = '{best_run}'")
    assert float(version.tags[mn.RANK]) == pytest.approx(study.best_value)
    assert mn.interval(mn.RANK)[0] in version.tags
    assert f"trial {study.best_trial.number}, one of the best: intervals and plots" in out.stdout


def test_trial_evaluation_overrides_leave_keys_given_on_the_command_line_alone():
    from cxr.sweep import best
    from cxr.sweep.settings import TrialEvaluationConf

    cheap = OmegaConf.structured(TrialEvaluationConf)
    full = OmegaConf.create(
        {"bootstrap": {"resamples": 1000}, "plots": True, "localisation": {"enabled": False}}
    )
    assert best.trial_overrides(cheap, set()) == [
        "evaluation.bootstrap.resamples=0",
        "evaluation.plots=false",
        "optuna.keep_models=10",
        "evaluation.localisation.enabled=false",
    ]
    assert best.trial_overrides(
        cheap, {"evaluation.plots", "optuna.keep_models", "evaluation.localisation.enabled"}
    ) == ["evaluation.bootstrap.resamples=0"]
    assert best.trials_lack_full_evaluation(cheap, full, set())
    given = {"evaluation.plots", "evaluation.bootstrap.resamples"}
    assert not best.trials_lack_full_evaluation(cheap, full, given)
    # localisation (a test measure) is left to the best trials' re-evaluation at the end
    full.localisation.enabled = "auto"
    assert best.trials_lack_full_evaluation(cheap, full, given)
    assert not best.trials_lack_full_evaluation(cheap, full, {*given, "evaluation.localisation.enabled"})
    for keep, best_trials in [(0, 0), (2, 3)]:
        with pytest.raises(CxrError, match="keep_models"):
            best.check_trial_evaluation(OmegaConf.create({"keep_models": keep, "best_trials": best_trials}))
    best.check_trial_evaluation(OmegaConf.create({"keep_models": None, "best_trials": 3}))


@pytest.mark.slow
def test_a_trial_logs_its_model_only_while_it_ranks_among_the_best_kept(tmp_path, data_root):
    """keep_models=1: a trial registers its model only if no earlier completed trial beat it."""
    args = sweep_args(
        tmp_path, data_root, "keep", "+sweep=core", "model=small_cnn", "hydra.sweeper.n_trials=4"
    )
    args = [a for a in args if a != "tracking.log_model=false"]
    keep = ["hydra.sweeper.trial_evaluation.keep_models=1", "hydra.sweeper.trial_evaluation.best_trials=1"]
    out = run_cli("cxr.train", *args, *REGISTER, *keep)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = load(tmp_path, "keep").trials
    kept = {
        t.user_attrs["mlflow_run_id"]
        for i, t in enumerate(trials)
        if all(earlier.value <= t.value for earlier in trials[:i])
    }
    assert sorted(registered_runs(tmp_path)) == sorted(kept)
    assert trials[0].user_attrs["mlflow_run_id"] in kept
    _, children = runs(tmp_path)
    for child in children:
        skipped = child.data.tags.get("cxr.model_skipped")
        assert (skipped is None) == (child.info.run_id in kept)
        if skipped:
            assert skipped == "ranked below the study's best 1 trials"


# one trial against a median pruner that judges from the first step (`pruned_at_first_step`)
PRUNE_FIRST = [
    "hydra/sweeper=cxr_optuna",
    "model.dropout=interval(0.1,0.3)",
    "hydra.sweeper.n_trials=1",
    "hydra.sweeper.pruner.n_startup_trials=1",
    "hydra.sweeper.pruner.n_warmup_steps=0",
]


def pruned_at_first_step(tmp, data, name: str, *extra: str) -> str:
    """One trial swept (`extra` added) in a study whose finished trial reported a perfect AUC at steps 0
    and 1, so the new one trails its median: asserts the trial was PRUNED after step 0; the stdout."""
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp}/optuna.db", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={0: 1.0, 1: 1.0}))
    out = run_cli("cxr.train", *sweep_args(tmp, data, name, *PRUNE_FIRST, *extra))
    assert out.returncode == 0, out.stderr[-3000:]
    trial = load(tmp, name).trials[1]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    return out.stdout


@pytest.mark.slow
@pytest.mark.backend
def test_a_trial_the_pruner_stops_is_pruned_in_optuna_and_mlflow(tmp_path, data_root):
    stdout = pruned_at_first_step(tmp_path, data_root, "prune", *REGISTER)
    _, (child,) = runs(tmp_path)
    assert child.data.tags["optuna.state"] == "PRUNED" and child.info.status == "KILLED"
    assert child.data.metrics[mn.EPOCHS_TRAINED] == 1 and "test/auc_mean" not in child.data.metrics
    assert child.data.metrics[mn.PRUNED_AT_EPOCH] == 0
    assert "trial 1 pruned" in stdout
    assert registered_runs(tmp_path) == []  # a pruned trial never becomes a model version


@pytest.mark.slow
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
        "hydra.sweeper.summary_by=[trainer.optimizer.name]",
        *REGISTER,
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
    assert "trainer.optimizer.name='nosuch': choose one of adam, adamw, sgd" in out.stderr
    assert "loss became nan" in out.stderr
    _, children = runs(tmp_path)
    by_state = {}
    for child in children:
        by_state.setdefault(child.data.tags["optuna.state"], []).append(child)
    assert len(by_state["COMPLETE"]) == 1 and by_state["COMPLETE"][0].info.status == "FINISHED"
    # nosuch is refused before any work, so before a run starts: only the NaN trial has a FAILED run
    (failed,) = by_state["FAIL"]
    assert failed.info.status == "FAILED" and "loss became nan" in failed.data.tags["cxr.error"]
    assert registered_runs(tmp_path) == [by_state["COMPLETE"][0].info.run_id]  # failed trials: no version
    # the summary counts completed trials only: sgd's one, and no row for nosuch
    (parent,), _ = runs(tmp_path)
    assert "value by trainer.optimizer.name (completed trials)" in out.stdout
    summary = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").download_artifacts(
        parent.info.run_id, "summary.csv", str(tmp_path)
    )
    table = pd.read_csv(summary)
    assert table["params_trainer.optimizer.name"].tolist() == ["sgd"] and table["count"].tolist() == [1]


def prepare(data, tmp) -> None:
    """The dataset and cache `sweep_args` name, made before several processes would all make them."""
    prepared = run_cli(
        "cxr.prepare",
        *TINY[:4],
        f"dataset.root={data}/synthetic",
        f"dataset.cache_dir={data}/prepared",
        f"hydra.run.dir={tmp}/prepare",
    )
    assert prepared.returncode == 0, prepared.stderr[-2000:]


def start_workers(n: int, args: list[str], tmp) -> list[subprocess.Popen]:
    """`n` copies of one sweep command (as on `n` machines), each with a sweep folder of its own."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", "cxr.train", *args, f"hydra.sweep.dir={tmp}/multirun{i}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


@pytest.mark.slow
def test_two_processes_on_one_sqlite_study_run_distinct_trials(tmp_path, data_root):
    prepare(data_root, tmp_path)
    args = sweep_args(
        tmp_path, data_root, "shared", "+sweep=core", "model=small_cnn", "hydra.sweeper.n_trials=2"
    )
    for worker in start_workers(2, args, tmp_path):
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    trials = load(tmp_path, "shared").trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["mlflow_run_id"] for t in trials}) == 4
    (parent,), children = runs(tmp_path)
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == [0, 1, 2, 3]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}


@pytest.mark.slow
def test_bad_search_space_is_one_line_and_exit_2(tmp_path, data_root):
    out = run_cli(
        "cxr.train",
        *sweep_args(
            tmp_path, data_root, "bad", "hydra/sweeper=cxr_optuna", "hydra.sweeper.sampler.name=grid"
        ),
        "model.dropout=interval(0.1,0.3)",
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert (
        out.stderr.strip().splitlines()[-1].startswith("cxr: error: sampler grid needs choice() or range()")
    )


def test_hydra_sweep_syntax_becomes_optuna_distributions():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from cxr.sweep.space import grid, split

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


def _values(distribution) -> list:
    """Every choice of a categorical parameter, the ends of a numeric one."""
    if hasattr(distribution, "choices"):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml")))
def test_each_shipped_sweep_selects_our_sweeper_and_every_value_it_searches_composes(name):
    """A sweep file whose space does not parse, whose sampler cannot take that space, whose summary
    groups by an unsearched key, or whose values do not compose into a job config fails here, before
    any trial trains."""
    from hydra import compose

    from cxr.sweep import space
    from cxr.sweep.study import build_pruner, build_sampler

    base = ["experiment=demo", f"+sweep={name}"]
    with hydra_compose():
        sweeper = compose("config", overrides=base, return_hydra_config=True).hydra.sweeper
        assert sweeper._target_ == "hydra_plugins.cxr_optuna_sweeper.plugin.CxrOptunaSweeper"
        assert sweeper.study_name == name
        searched, fixed = space.parse(None, sweeper.params, [])
        build_sampler(sweeper.sampler, searched)
        build_pruner(sweeper.pruner)
        assert set(sweeper.summary_by) <= set(searched)
        fixed_args = [f"{k}={v}" for k, v in fixed.items()]
        for key, distribution in searched.items():
            for value in _values(distribution):
                job = compose("config", overrides=[*base, *fixed_args, f"{key}={space.format_value(value)}"])
                chosen = OmegaConf.select(job, key)
                assert (chosen.name if isinstance(chosen, DictConfig) else chosen) == value, key


def test_the_summary_groups_completed_trials_best_first_with_mean_std_and_count():
    from cxr.sweep.parent_run import summary_table

    space = {"loss": optuna.distributions.CategoricalDistribution(["a", "b"])}
    study = optuna.create_study(direction="maximize")
    study.set_metric_names([mn.OPTIMIZED])  # as sweeps name it
    for loss, value, state in [
        ("a", 0.6, TrialState.COMPLETE),
        ("a", 0.8, TrialState.COMPLETE),
        ("b", 0.9, TrialState.COMPLETE),
        ("b", None, TrialState.FAIL),
        ("b", None, TrialState.PRUNED),
    ]:
        trial = optuna.trial.create_trial(
            params={"loss": loss}, distributions=space, value=value, state=state
        )
        study.add_trial(trial)
    table = summary_table(study, ["loss", "not_searched"], "maximize")
    assert table.index.tolist() == ["b", "a"] and table["count"].tolist() == [1, 2]
    assert table["mean"].tolist() == pytest.approx([0.9, 0.7]) and table.loc["a", "std"] == pytest.approx(
        0.1414, abs=1e-4
    )
    assert summary_table(study, ["loss"], "minimize").index.tolist() == ["a", "b"]
    assert summary_table(study, ["not_searched"], "maximize") is None


def test_pruners_are_built_from_their_settings():
    from cxr.sweep.settings import PrunerConf
    from cxr.sweep.study import build_pruner

    def settings(name):
        return {**PrunerConf(name=name).__dict__}

    # every setting reaches the pruner (Optuna keeps them in private attributes)
    median = build_pruner(
        {**settings("median"), "n_startup_trials": 3, "n_warmup_steps": 4, "interval_steps": 2}
    )
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps, median._interval_steps) == (3, 4, 2)
    hyperband = build_pruner(
        {**settings("hyperband"), "min_resource": 2, "max_resource": 9, "reduction_factor": 4}
    )
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert (hyperband._min_resource, hyperband._max_resource, hyperband._reduction_factor) == (2, 9, 4)
    assert build_pruner(settings("hyperband"))._max_resource == "auto"  # null: learnt from the first trial
    assert isinstance(build_pruner(settings("none")), optuna.pruners.NopPruner)
    with pytest.raises(CxrError, match="choose median, hyperband or none"):
        build_pruner(settings("asha"))


@pytest.mark.slow
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
    # launched together, not one after the other: each run starts before the other ends
    assert max(c.info.start_time for c in children) < min(c.info.end_time for c in children)


def _open_storage(url: str) -> str:
    from cxr.sweep.study import rdb_storage

    rdb_storage(url)
    return "ok"


@pytest.mark.slow
def test_workers_creating_a_new_storage_together_all_succeed(tmp_path):
    """Optuna's first connection creates the tables; simultaneous workers race on that (seen in CI)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        for attempt in range(3):
            url = f"sqlite:///{tmp_path}/race{attempt}.db"
            assert pool.map(_open_storage, [url] * 4) == ["ok"] * 4


def test_workers_setting_the_same_new_tags_on_the_parent_run_together_all_succeed(tmp_path):
    """Workers that finish trials at the same moment record the best trial on the one parent run; a
    plain `set_tag` of a tag another worker is inserting fails on its unique key (seen in CI)."""
    import threading

    from cxr.sweep.parent_run import ParentRun

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("race")).info.run_id
    start, errors = threading.Barrier(4), []

    def worker(number: int) -> None:
        parent = ParentRun(MlflowClient(uri), run_id, uri)
        for key in range(4):
            start.wait()
            try:
                parent.set_tags({f"best_{key}": number, "best_trial": number})
            except Exception as err:  # noqa: BLE001 - the test reports any failure
                errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    tags = client.get_run(run_id).data.tags
    assert {tags[f"best_{k}"] for k in range(4)} <= {"0", "1", "2", "3"} and tags["best_trial"] in "0123"


@pytest.mark.slow  # imports Keras
def test_a_job_reopens_its_trial_from_the_storage_with_the_sweeps_pruner_and_is_pruned(tmp_path):
    """What a job knows is its `optuna` config node; pruner and monitored metric come from the storage."""
    from cxr.config import OptunaJobConfig
    from cxr.sweep.reporter import open_reporter
    from cxr.sweep.settings import CxrOptunaSweeperConf
    from cxr.sweep.study import create_or_join

    url = f"sqlite:///{tmp_path}/optuna.db"
    settings = OmegaConf.structured(CxrOptunaSweeperConf(study_name="job", monitor="val/x"))
    settings.pruner.n_startup_trials, settings.pruner.n_warmup_steps = 1, 0
    searched = {"x": FloatDistribution(0.0, 1.0)}
    study, created = create_or_join(settings, url, searched)
    assert created and create_or_join(settings, url, searched)[1] is False  # a second worker joins
    study.add_trial(
        optuna.trial.create_trial(
            value=1.0, params={"x": 0.5}, distributions=searched, intermediate_values={0: 1.0, 1: 1.0}
        )
    )
    trial = study.ask(searched)
    job = OptunaJobConfig(
        storage=url, study_name="job", trial_id=trial._trial_id, trial_number=trial.number, parent_run_id="p"
    )
    reporter = open_reporter(OmegaConf.structured(job))
    assert (reporter.number, reporter.study_name, reporter.parent_run_id, reporter.pruned_at) == (
        1,
        "job",
        "p",
        None,
    )
    reporter.record_run("run-1")
    callback, model = reporter.callback(), types.SimpleNamespace(stop_training=False)
    callback.set_model(model)
    with pytest.raises(CxrError, match="hydra.sweeper.monitor='val/x' is not logged each epoch"):
        callback.on_epoch_end(0, {"val_auc": 0.5})
    callback.on_epoch_end(0, {"val_x": 0.5})  # Keras's key of val/x; trails the finished 1.0: pruned
    assert reporter.pruned_at == 0 and model.stop_training
    stored = load(tmp_path, "job").trials[1]
    assert stored.intermediate_values == {0: 0.5} and stored.user_attrs["mlflow_run_id"] == "run-1"


def test_a_plain_run_has_no_reporter_and_a_half_set_optuna_node_is_an_error():
    from cxr.config import OptunaJobConfig
    from cxr.sweep.reporter import open_reporter

    assert open_reporter(OptunaJobConfig()) is None
    with pytest.raises(CxrError, match="optuna.trial_id is set but optuna.storage or optuna.study_name"):
        open_reporter(OptunaJobConfig(trial_id=3, storage="sqlite:///x.db"))


def test_hydra_finds_the_sweeper_without_importing_optuna_or_mlflow():
    """Hydra scans its plugins at every command's start-up; optuna and mlflow would add seconds to each.
    It also instantiates a plugin only from a class it found under hydra_plugins."""
    code = (
        "import sys\n"
        "from hydra.core.config_store import ConfigStore\n"
        "from hydra.core.plugins import Plugins\n"
        "found = Plugins.instance().class_name_to_class\n"
        "print(sorted(m for m in ('optuna', 'mlflow') if m in sys.modules))\n"
        "from cxr.sweep.sweeper import CxrOptunaSweeper\n"
        "plugin = found['hydra_plugins.cxr_optuna_sweeper.plugin.CxrOptunaSweeper']\n"
        "print(issubclass(plugin, CxrOptunaSweeper))\n"
        "print('cxr_optuna.yaml' in ConfigStore.instance().list('hydra/sweeper'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["[]", "True", "True"]


def test_the_study_names_its_objective_for_optuna_dashboard(tmp_path):
    from cxr.sweep.settings import CxrOptunaSweeperConf
    from cxr.sweep.study import create_or_join

    url = f"sqlite:///{tmp_path}/optuna.db"
    settings = OmegaConf.structured(CxrOptunaSweeperConf(study_name="named"))
    create_or_join(settings, url, {"x": FloatDistribution(0.0, 1.0)}, mn.OPTIMIZED)
    assert load(tmp_path, "named").metric_names == ["val/auc_mean"]  # not "Objective 0"


SECRET = "s3cretXYZ"


@pytest.mark.slow
def test_a_storage_password_is_found_nowhere_in_mlflow_the_artifacts_or_the_console(tmp_path, data_root):
    """SQLite takes (and ignores) unknown URI parameters, so a real sweep runs on a URL with a password;
    the tracking server (a real one on 127.0.0.1) ignores a URL's user and password. Hydra re-writes the
    job's `tracking.uri` override escaped (`http\\://bob\\:...@`), the spelling issue 24 found leaking."""
    import signal
    import sqlite3

    from tests.services import mlflow_server

    url = f"sqlite:///file:{tmp_path}/optuna.db?uri=true&password={SECRET}"
    (tmp_path / "server").mkdir()
    backend = f"sqlite:///{tmp_path}/server/mlflow.db"
    server, address = mlflow_server(backend, tmp_path / "server/art", tmp_path)
    tracking = address.replace("http://", f"http://bob:{SECRET}@")
    args = [
        a
        for a in sweep_args(tmp_path, data_root, "masked")
        if not a.startswith(("hydra.sweeper.storage", "tracking.uri", "tracking.artifact_root"))
    ]
    try:
        out = run_cli(
            "cxr.train",
            *args,
            f"tracking.uri={tracking}",
            f"hydra.sweeper.storage='{url}'",
            "hydra/sweeper=cxr_optuna",
            "hydra.sweeper.n_trials=2",
            "seed=choice(1,2)",
            "hydra.sweeper.trial_evaluation.best_trials=0",
            *REGISTER,
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(load(tmp_path, "masked").trials) == 2
    store = sqlite3.connect(tmp_path / "server" / "mlflow.db")
    dump = "\n".join(store.iterdump())
    assert "password=***" in dump and "bob:***@" in dump  # storage and store are logged, masked
    assert "bob\\:***@" in dump  # the child runs' hydra.overrides tag, in Hydra's escaped spelling
    assert SECRET not in dump
    artifacts = [p for p in (tmp_path / "server" / "art").rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in artifacts)
    assert not [p for p in artifacts if SECRET.encode() in p.read_bytes()]
    records = list((tmp_path / "multirun").rglob("*.yaml"))  # Hydra's own: multirun.yaml, .hydra/*.yaml
    assert {"multirun.yaml", "overrides.yaml", "config.yaml", "hydra.yaml"} <= {p.name for p in records}
    assert not [p for p in records if SECRET in p.read_text()]
    assert "Launching 1 jobs locally" in out.stdout and "password=***" in out.stdout
    assert "#0 : " in out.stdout and "bob\\:***@" in out.stdout  # Hydra's line of each job's overrides
    assert SECRET not in out.stdout + out.stderr
    assert "Warning" not in out.stderr  # Optuna's experimental-feature warnings are cxr's to silence
    assert "trial 1/2 done (number 0): 0." in out.stdout and "trial 2/2 done (number 1): " in out.stdout
    assert ", best so far 0." in out.stdout


@pytest.mark.parametrize(
    "text",
    [
        "tracking.uri=http://bob:{}@127.0.0.1:5612",
        "tracking.uri='http://bob:{}@127.0.0.1:5612'",  # quoted
        "tracking.uri=http\\://bob\\:{}@127.0.0.1\\:5612",  # Hydra's escaped job override
        "['tracking.uri=http\\\\://bob\\\\:{}@h']",  # ... in a Python list's repr
        "http\\://a\\:{}\\ x@h1\\,http\\://c\\:{}@h2",  # an escaped space; a sweep of two
        "next=http%3A%2F%2Fbob%3A{}%40host%2Fdb",  # percent-encoded
        "next=http%3a%2f%2fbob%3a{}%2540%40host",  # ... lower case, an encoded '%' in the password
        "postgresql://u:{}@@db/x",  # an unencoded '@' in the password
        "sqlite\\:///f?uri\\=true&password\\={}&x\\=1",  # a parameter, escaped
        "x%3Fpassword%3D{}%26y%3D1",  # a parameter, percent-encoded
    ],
)
def test_every_spelling_of_a_url_password_is_masked(text):
    from cxr.runtime.masking import mask

    masked = mask(text.format(SECRET, SECRET))
    assert SECRET not in masked and "***" in masked
    assert mask("http://host:5000/a?b=c@d") == "http://host:5000/a?b=c@d"  # no password, unchanged


def test_hydra_s_record_is_masked_in_place_and_an_unreadable_file_only_warns(tmp_path, caplog):
    from cxr.runtime.hydra_record import mask_files

    secret = tmp_path / "overrides.yaml"
    secret.write_text(f"- hydra.sweeper.storage=postgresql://me:{SECRET}@db/optuna\n- seed=1\n")
    plain = tmp_path / "config.yaml"
    plain.write_text("seed: 1\n")
    broken = tmp_path / "hydra.yaml"
    broken.write_bytes(b"\xff\xfe not utf-8")
    assert mask_files([secret, plain, broken]) == [secret]
    assert secret.read_text() == "- hydra.sweeper.storage=postgresql://me:***@db/optuna\n- seed=1\n"
    assert plain.read_text() == "seed: 1\n" and broken.read_bytes() == b"\xff\xfe not utf-8"
    assert "could not mask the passwords in" in caplog.text and "hydra.yaml" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]


def test_a_failed_jobs_overrides_and_a_cxr_error_are_masked_where_hydra_prints_them():
    """Hydra writes "Error executing job with overrides: [...]" to stderr itself, and a failed multirun
    job's exception with its traceback; the URL in both is Hydra's escaped spelling."""
    from hydra.core.utils import JobReturn

    from cxr.runtime.hydra_record import MaskHydraRecord

    job = JobReturn(overrides=[f"tracking.uri=http\\://bob\\:{SECRET}@127.0.0.1\\:5612", "seed=1"])
    MaskHydraRecord().on_job_end(OmegaConf.create({}), job)
    assert job.overrides == ["tracking.uri=http\\://bob\\:***@127.0.0.1\\:5612", "seed=1"]
    err = CxrError(f"MLflow store is not usable: API request to http://bob:{SECRET}@127.0.0.1:1/api failed")
    assert SECRET not in str(err) and "http://bob:***@127.0.0.1:1/api" in str(err)


def test_config_params_mask_passwords_in_any_url(compose_cfg, tmp_path):
    from cxr.tracking import runs as tracking

    cfg = compose_cfg(["tracking.uri=http://user:s3cret@mlflow.example:5000", f"output_dir={tmp_path}"])
    params = tracking.config_params(cfg)
    assert params["tracking.uri"] == "http://user:***@mlflow.example:5000"
    assert tracking.run_tags(["optuna.storage='postgresql://u:s3cret@db/x'"])["hydra.overrides"] == (
        "optuna.storage='postgresql://u:***@db/x'"
    )


def test_an_unknown_pruner_monitor_stops_the_sweep_before_any_trial(tmp_path, data_root):
    bad = "hydra.sweeper.monitor=val/x"
    args = sweep_args(tmp_path, data_root, "mon", "+sweep=core", "model=small_cnn", bad)
    out = run_cli("cxr.train", *args)
    assert out.returncode == 2
    assert "cxr: error: hydra.sweeper.monitor='val/x': choose one of train/loss, train/auc," in out.stderr
    assert not (tmp_path / "optuna.db").exists()


def test_selection_is_within_noise_when_best_and_runner_up_intervals_overlap():
    from cxr.sweep.best import Selection

    close = Selection("val/auc_mean", [(3, 0.71, 0.65, 0.77), (5, 0.70, 0.64, 0.76), (1, 0.6, 0.5, 0.7)])
    assert close.within_noise is True
    lines = close.lines(0.95)
    assert lines[0] == "[cxr sweep] validation val/auc_mean [95% CI] of the best trials:"
    assert lines[1] == "  trial 3: 0.7100 [0.6500, 0.7700]" and "selection is within noise" in lines[-1]
    clear = Selection("val/auc_mean", [(3, 0.9, 0.85, 0.95), (5, 0.7, 0.64, 0.76)])
    assert clear.within_noise is False and "clear of the runner-up" in clear.lines(0.95)[-1]
    alone = Selection("val/auc_mean", [(3, 0.9, 0.85, 0.95), (5, 0.7, None, None)])
    assert alone.within_noise is None and "best_trials=2" in alone.lines(0.95)[-1]
    assert "  trial 5: 0.7000 (no interval)" in alone.lines(0.95)
    single = Selection("val/auc_mean", [(0, 0.9, 0.85, 0.95)])
    assert single.within_noise is None and "no runner-up" in single.lines(0.95)[-1]
