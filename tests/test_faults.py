"""Faults and concurrency, reproduced for real: processes SIGKILLed and interrupted mid-work, stores created
by several processes released together by a barrier, read-only folders, config typos. Nothing is mocked:
real subprocesses and signals, a real SQLite MLflow store and Optuna storage."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from cxr.config import TrackingConfig
from cxr.tracking import names as mn
from cxr.tracking import runs as tracking
from tests.conftest import REPO, TINY, run_cli, store_overrides
from tests.test_sweep import FAST, load, sweep_args

COMMANDS = [
    "cxr.train",
    "cxr.evaluate",
    "cxr.ensemble",
    "cxr.promote",
    "cxr.prepare",
    "cxr.predict",
    "cxr.report",
]


def wait_for(probe, timeout: float = 180.0, every: float = 0.2):
    """The first true value `probe()` returns (exceptions count as not yet: a store being created)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {probe.__doc__ or probe}")


def tracking_cfg(tmp: Path, **extra):
    return OmegaConf.merge(
        OmegaConf.structured(TrackingConfig),
        {"uri": f"sqlite:///{tmp}/mlruns/mlflow.db", "artifact_root": f"{tmp}/mlruns/artifacts", **extra},
    )


def client(tmp: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")


def train_process(tmp: Path, *extra: str) -> subprocess.Popen:
    """`python -m cxr.train` on the tiny setup, started and left running."""
    args = [*TINY, *FAST, *store_overrides(tmp), *extra, f"hydra.run.dir={tmp}/hydra"]
    return subprocess.Popen(
        [sys.executable, "-m", "cxr.train", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# A run that outlasts any signal the test sends: without early stopping, the tiny model on JAX stopped after
# a dozen epochs of two seconds, and a SIGINT sent as the run ended was lost in interpreter shutdown (exit 0).
LONG_FIT = ("trainer.epochs=500", "callbacks.early_stopping.enabled=false")


def running_run(tmp: Path):
    """The RUNNING run of the store once it has logged an epoch (mid-fit)."""
    (run,) = client(tmp).search_runs(["1"], "attributes.status = 'RUNNING'")
    return run if mn.timing("epoch") in run.data.metrics else None


# ---------------------------------------------------------------- 1. dead trials
@pytest.mark.slow
def test_a_sigkilled_sweep_worker_s_grid_point_becomes_fail_and_is_run_again_by_the_next_sweep(tmp_path):
    data = tmp_path / "data"
    args = sweep_args(
        tmp_path,
        data,
        "loss_screen",
        "+sweep=loss_screen",
        "loss=choice(bce,weighted_bce)",
        "seed=0",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3",
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "cxr.train", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )

    def killed_trial_run():
        """the first trial's MLflow run"""
        return load(tmp_path, "loss_screen").trials[0].user_attrs.get("mlflow_run_id")

    try:
        run_id = wait_for(killed_trial_run)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    killed = load(tmp_path, "loss_screen").trials[0]
    assert killed.state == TrialState.RUNNING  # the fault: nothing else would ever end it
    time.sleep(4)  # past the grace period

    again = run_cli("cxr.train", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = load(tmp_path, "loss_screen").trials
    assert trials[0].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert {t.params["loss"] for t in trials if t.state == TrialState.COMPLETE} == {"bce", "weighted_bce"}
    (summary,) = [line for line in again.stdout.splitlines() if "study 'loss_screen':" in line]
    assert "trial 0 stopped beating" in again.stderr and "running" not in summary
    run = client(tmp_path).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "FAIL"
    assert (
        "no heartbeat" in run.data.tags["cxr.killed_reason"] or "gone" in run.data.tags["cxr.killed_reason"]
    )


# ---------------------------------------------------------------- 2. orphaned runs, 3. Ctrl-C
@pytest.mark.slow
def test_a_sigkilled_training_run_is_ended_killed_by_the_next_cxr_train(tmp_path):
    victim = train_process(tmp_path, *LONG_FIT)
    try:
        run = wait_for(lambda: running_run(tmp_path))
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert run.data.tags["cxr.host"] == socket.gethostname() and run.data.tags["cxr.pid"] == str(victim.pid)
    assert client(tmp_path).get_run(run.info.run_id).info.status == "RUNNING"  # the fault

    after = run_cli("cxr.train", *TINY, *FAST, *store_overrides(tmp_path), "trainer.epochs=1")
    assert after.returncode == 0, after.stderr[-3000:]
    orphan = client(tmp_path).get_run(run.info.run_id)
    assert orphan.info.status == "KILLED"
    assert f"process {victim.pid} on {socket.gethostname()} is gone" in orphan.data.tags["cxr.killed_reason"]


@pytest.mark.slow
@pytest.mark.backend  # SIGINT lands in the backend's fit loop
def test_ctrl_c_mid_fit_ends_the_run_killed_with_one_line_and_exit_130(tmp_path):
    job = train_process(tmp_path, *LONG_FIT)
    try:
        run = wait_for(lambda: running_run(tmp_path))
        job.send_signal(signal.SIGINT)
        out, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "cxr: interrupted (Ctrl-C)"
    ended = client(tmp_path).get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and "KeyboardInterrupt" in ended.data.tags["cxr.killed_reason"]


@pytest.mark.backend
def test_a_ctrl_c_swallowed_mid_batch_is_raised_again_at_the_next_batch():
    """As jaxlib's array-to-NumPy conversion swallows it inside Keras' JAX fit loop: here a handler that
    catches the KeyboardInterrupt stands in for the C extension, around a real SIGINT."""
    import keras
    import numpy as np

    from cxr.runtime import interrupt

    class SwallowsCtrlC(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(1)  # the handler runs here and raises
                except KeyboardInterrupt:
                    pass  # swallowed

    class Counts(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            Counts.batches += 1

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((64, 2), "float32")
    before = signal.getsignal(signal.SIGINT)
    interrupt.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            model.fit(x, x[:, :1], batch_size=4, epochs=3, verbose=0,
                      callbacks=[SwallowsCtrlC(), Counts(), interrupt.callback()])  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, before)
    assert Counts.batches == 2  # stopped after the batch the interrupt was swallowed in, of 48
    interrupt.raise_pending()  # raised once, not again


def test_runs_of_other_hosts_are_ended_killed_only_once_silent_past_the_grace_period(tmp_path):
    experiment_id = tracking.configure(tracking_cfg(tmp_path))
    store = client(tmp_path)
    now = time.time()

    def run(host: str, pid: int, seen: float) -> str:
        tags = {"cxr.host": host, "cxr.pid": str(pid), "cxr.last_seen": str(int(seen))}
        return store.create_run(experiment_id, tags=tags).info.run_id

    gone = subprocess.Popen(["true"])
    gone.wait()
    silent = run("elsewhere", 1, now - 120)
    beating = run("elsewhere", 1, now - 5)
    dead_here = run(socket.gethostname(), gone.pid, now)  # this host: its process is gone, however recent
    alive_here = run(socket.gethostname(), os.getpid(), now - 5)
    foreign = store.create_run(experiment_id).info.run_id  # no owner tags: not cxr.train's, never judged

    assert sorted(tracking.reap_orphans(store, [experiment_id], grace_s=60)) == sorted([silent, dead_here])
    states = {r: store.get_run(r).info.status for r in (silent, beating, dead_here, alive_here, foreign)}
    assert states == {
        silent: "KILLED", beating: "RUNNING", dead_here: "KILLED", alive_here: "RUNNING", foreign: "RUNNING"
    }  # fmt: skip
    assert "on elsewhere was last seen 12" in store.get_run(silent).data.tags["cxr.killed_reason"]
    assert "(grace 60 s)" in store.get_run(silent).data.tags["cxr.killed_reason"]
    assert f"process {gone.pid} on" in store.get_run(dead_here).data.tags["cxr.killed_reason"]


# ---------------------------------------------------------------- 4. store start-up
def _create_store(barrier, cfg_yaml: str, optuna_url: str) -> str:
    from cxr.sweep.study import rdb_storage

    cfg = OmegaConf.create(cfg_yaml)
    barrier.wait()  # all released together: the race is hit every time
    experiment_id = tracking.configure(cfg)
    MlflowClient(cfg.uri).create_run(experiment_id)
    optuna.create_study(storage=rdb_storage(optuna_url), study_name=f"s{os.getpid()}")
    return "ok"


def test_four_processes_creating_one_fresh_mlflow_store_and_optuna_storage_at_once_all_succeed(tmp_path):
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Manager().Barrier(4)
    cfg = OmegaConf.to_yaml(tracking_cfg(tmp_path))
    with spawn.Pool(4) as pool:
        results = pool.starmap(_create_store, [(barrier, cfg, f"sqlite:///{tmp_path}/optuna.db")] * 4)
    assert results == ["ok"] * 4
    assert len(client(tmp_path).search_runs(["1"])) == 4
    assert len(optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")) == 4


# ---------------------------------------------------------------- 5. one-line errors
@pytest.mark.parametrize("command", COMMANDS)
def test_hydra_composition_errors_are_one_line_and_exit_2_for_every_command(command):
    for typo, named in [("nosuchkey=1", "nosuchkey"), ("+tracking=nosuch", "tracking/nosuch")]:
        out = run_cli(command, typo)
        assert out.returncode == 2, out.stderr[-3000:]
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith("cxr: error: ") and named in line


def test_an_unknown_group_option_names_the_options_there():
    out = run_cli("cxr.train", "model=nosuch")
    assert out.returncode == 2
    assert "Could not find 'model/nosuch'" in out.stderr and "small_cnn" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


@contextmanager
def read_only(folder: Path):
    """`folder` read-only: by its mode, or for root (who writes anywhere) a read-only bind mount."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", folder, folder], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root and cannot bind-mount {folder} read-only: {mounted.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", folder], check=True)
        yield
    finally:
        subprocess.run(["umount", folder], check=True)


def test_a_read_only_store_folder_is_one_line_naming_it_at_once(tmp_path):
    store = tmp_path / "mlruns"
    store.mkdir()
    with read_only(store):
        started = time.monotonic()
        out = run_cli("cxr.train", f"tracking.uri=sqlite:///{store}/mlflow.db", f"output_dir={tmp_path}/o")
        took = time.monotonic() - started
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()
    assert f"folder {store} is read-only" in line and "tracking.uri" in line
    assert took < 20  # SQLite alone retried for half a minute before failing


def test_an_optuna_storage_in_a_read_only_folder_is_a_user_error_naming_it(tmp_path):
    from cxr.runtime.errors import CxrError
    from cxr.sweep.study import rdb_storage

    folder = tmp_path / "mlruns"
    folder.mkdir()
    with read_only(folder), pytest.raises(CxrError, match=f"folder {folder} must be writable"):
        rdb_storage(f"sqlite:///{folder}/optuna.db")


@pytest.mark.slow  # imports Keras and logs a model
@pytest.mark.backend
def test_a_model_with_a_lambda_layer_is_refused_in_one_line_saying_why_and_what_to_do(tmp_path):
    import keras
    import mlflow
    from PIL import Image

    from cxr.serving.pyfunc import ModelSpec, log_model

    inputs = keras.Input((32, 32, 1))
    outputs = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2)))(inputs)
    spec = ModelSpec(["Mass"], {"Mass": 0.5}, [32], [1.0])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    mlflow.set_experiment("lambda")  # this store's, whatever experiment an earlier test made active
    with mlflow.start_run() as run:
        log_model([keras.Model(inputs, outputs)], spec)
    Image.new("L", (32, 32)).save(tmp_path / "x.png")
    out = run_cli(
        "cxr.predict",
        f"model=runs:/{run.info.run_id}",
        f"images={tmp_path}/x.png",
        f"output_dir={tmp_path}/out",
        f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db",
    )
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("cxr: error:")]
    assert "member_0.keras was refused by Keras's safe mode" in line and "Lambda" in line
    assert "Traceback" not in out.stderr


JOB = """
import sys, time
from omegaconf import OmegaConf
from cxr.config import OptunaJobConfig
from cxr.sweep.reporter import open_reporter
url, trial_id = sys.argv[1], int(sys.argv[2])
job = OptunaJobConfig(storage=url, study_name="beat", trial_id=trial_id, trial_number=0)
with open_reporter(OmegaConf.structured(job)).heartbeat():
    print("beating", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow  # waits out a grace period twice
def test_a_trial_beats_from_the_process_that_runs_it_and_once_that_dies_is_failed_and_queued_again(tmp_path):
    """The job's side alone, in its own process as a joblib worker runs it: no sweeper beats for it."""
    from optuna.distributions import FloatDistribution

    from cxr.sweep.settings import CxrOptunaSweeperConf
    from cxr.sweep.study import create_or_join

    url = f"sqlite:///{tmp_path}/optuna.db"
    settings = OmegaConf.structured(
        CxrOptunaSweeperConf(study_name="beat", heartbeat_interval=1, grace_period=4)  # slack for a busy CI
    )
    searched = {"x": FloatDistribution(0.0, 1.0)}
    study, _ = create_or_join(settings, url, searched)
    trial = study.ask(searched)
    job = subprocess.Popen(
        [sys.executable, "-c", JOB, url, str(trial._trial_id)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert job.stdout.readline().strip() == "beating"
        time.sleep(5)  # past the grace period, but the job beats
        optuna.storages.fail_stale_trials(study)
        assert study.trials[0].state == TrialState.RUNNING
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    time.sleep(5)
    optuna.storages.fail_stale_trials(study)
    first, again = study.trials
    assert first.state == TrialState.FAIL
    assert again.state == TrialState.WAITING and again.params == first.params
    assert again.system_attrs["failed_trial"] == 0


def test_of_two_workers_recovering_one_dead_trial_exactly_one_is_told_to_end_its_run(tmp_path):
    """Both joined the study while the trial beat; its beat stopped; both recover at once. The storage
    lets one of them fail it, and only that one may end the trial's MLflow run (two ending it collided)."""
    from optuna.distributions import FloatDistribution

    from cxr.sweep.settings import CxrOptunaSweeperConf
    from cxr.sweep.study import create_or_join, stale_trials_failed_here

    url = f"sqlite:///{tmp_path}/optuna.db"
    settings = OmegaConf.structured(
        CxrOptunaSweeperConf(study_name="race", heartbeat_interval=1, grace_period=1)
    )
    searched = {"x": FloatDistribution(0.0, 1.0)}
    first, _ = create_or_join(settings, url, searched)
    second, created = create_or_join(settings, url, searched)  # another worker: its own storage object
    assert not created
    trial = first.ask(searched)
    first._storage.record_heartbeat(trial._trial_id)  # it began beating, then its worker died
    time.sleep(2.5)
    told = [stale_trials_failed_here(second), stale_trials_failed_here(first)]
    assert sorted(len(t) for t in told) == [0, 1]
    (dead,) = told[0] + told[1]
    assert dead.number == trial.number and dead.state == TrialState.FAIL
    assert stale_trials_failed_here(first) == [] and stale_trials_failed_here(second) == []
    states = [t.state for t in first.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]  # queued again once, not twice
