"""Beyond one machine on existing engines: one Optuna study on PostgreSQL shared by several worker
processes, an `mlflow server` as the tracking store, Hydra's submitit launcher."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from .conftest import TINY, run_cli
from .services import new_database, postgres  # noqa: F401 (a fixture)
from .test_sweep import prepare, runs, start_workers, sweep_args

pytestmark = pytest.mark.slow  # every test here starts servers and trains


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One generated dataset and image cache, prepared before workers start together."""
    root = tmp_path_factory.mktemp("scale-data")
    prepare(root, root)
    return root


def on_storage(args: list[str], url: str) -> list[str]:
    return [a for a in args if not a.startswith("hydra.sweeper.storage=")] + [f"hydra.sweeper.storage={url}"]


def test_three_workers_on_postgresql_share_one_study_and_one_parent_run(postgres, data_root, tmp_path):  # noqa: F811
    url = new_database(postgres, "study")
    args = on_storage(
        sweep_args(
            tmp_path, data_root, "shared", "+sweep=core", "model=small_cnn", "hydra.sweeper.n_trials=3"
        ),
        url,
    )
    for worker in start_workers(3, args, tmp_path):
        _, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="shared", storage=url).trials
    assert sorted(t.number for t in trials) == list(range(9))
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 9  # no trial run twice
    (parent,), children = runs(tmp_path)
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == list(range(9))
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):  # noqa: F811
    """`mlflow server` on 127.0.0.1 with a PostgreSQL backend store and artifacts served from a folder."""
    import os
    import signal

    from .services import mlflow_server

    folder = tmp_path_factory.mktemp("server")
    database = new_database(postgres, "mlflow")
    server, url = mlflow_server(database, folder / "artifacts", folder)
    try:
        yield url, folder / "artifacts", database
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_training_registration_ensemble_and_prediction_go_through_a_tracking_server(
    tracking_server, data_root, tmp_path
):
    import mlflow
    from mlflow.tracking import MlflowClient

    url, artifacts, database = tracking_server
    data = [f"dataset.root={data_root}/synthetic", f"dataset.cache_dir={data_root}/prepared"]
    # credentials in the URL (a proxy's basic auth): the server ignores them, cxr must never record them
    secret_url = url.replace("http://", f"http://team:{SECRET}@")
    store = [f"tracking.uri={secret_url}", "tracking.registered_model_name=team"]
    cheap = ["evaluation.bootstrap.resamples=0", "evaluation.plots=false"]
    for seed in (1, 2):
        trained = run_cli(
            "cxr.train", *TINY, *data, *store, *cheap, f"seed={seed}", f"hydra.run.dir={tmp_path}/t{seed}"
        )
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert SECRET not in trained.stdout + trained.stderr and "team:***@" in trained.stdout
    ensembled = run_cli(
        "cxr.ensemble", "model_name=team", "top_k=2", *store[:1], *cheap, f"hydra.run.dir={tmp_path}/ensemble"
    )
    assert ensembled.returncode == 0, ensembled.stderr[-3000:]
    client = MlflowClient(url)
    versions = {v.version: v for v in client.search_model_versions("name = 'team'")}
    assert sorted(versions, key=int) == ["1", "2", "3"]
    assert versions["3"].tags["cxr.kind"] == "ensemble"
    images = sorted((data_root / "synthetic").rglob("*.png"))[:2]
    predicted = run_cli(
        "cxr.predict",
        "model=models:/team/3",
        f"images=[{','.join(map(str, images))}]",
        *store[:1],
        f"hydra.run.dir={tmp_path}/predict",
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    mlflow.set_tracking_uri(url)
    from cxr.serving import pyfunc

    (member, _) = pyfunc.load("models:/team/3").members
    assert member.input_shape[1:] == (32, 32, 1)
    # artifacts live in the server's folder, uploaded through it; nothing was written next to the clients
    assert len(list(artifacts.rglob("MLmodel"))) == 3
    run = client.get_run(versions["1"].run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    assert not any(tmp_path.rglob("MLmodel"))
    assert SECRET not in ensembled.stdout + ensembled.stderr + predicted.stdout + predicted.stderr
    assert not [f for f in artifacts.rglob("*") if f.is_file() and SECRET.encode() in f.read_bytes()]
    assert SECRET not in database_text(database) and "team:***@" in database_text(database)


SECRET = "s3cretXYZ"


def database_text(url: str) -> str:
    """Every row of every table of the server's backend store, as text."""
    import psycopg

    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return "\n".join(str(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"'))


def test_a_sweep_through_the_submitit_launcher_completes_its_trials(data_root, tmp_path):
    """submitit_local stands in for submitit_slurm: each trial is a job that submitit starts and watches."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='pip install -e ".[slurm]"')
    args = sweep_args(
        tmp_path, data_root, "jobs", "+sweep=core", "model=small_cnn", "hydra.sweeper.n_trials=2"
    )
    done = run_cli("cxr.train", *args, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=15")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="jobs", storage=f"sqlite:///{tmp_path}/optuna.db").trials
    assert sorted(t.number for t in trials) == [0, 1]
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert list((tmp_path / "multirun" / ".submitit").iterdir())  # the jobs went through submitit
    (parent,), children = runs(tmp_path)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}


def test_a_sigkilled_worker_s_trial_on_postgresql_is_failed_and_retried_by_another_worker(
    postgres,  # noqa: F811
    data_root,
    tmp_path,
):
    """Workers in several processes (as on several machines): the one killed mid-trial stops beating, a
    live worker fails its trial after the grace period, runs it again, and every grid point completes."""
    import signal
    import time

    from mlflow.tracking import MlflowClient

    url = new_database(postgres, "faults")
    args = on_storage(
        sweep_args(
            tmp_path,
            data_root,
            "loss_screen",
            "+sweep=loss_screen",
            "loss=choice(bce,weighted_bce)",  # x seeds 0, 1, 2: 6 grid points
            "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=3",
        ),
        url,
    )
    (victim,) = start_workers(1, args, tmp_path)
    deadline = time.monotonic() + 300
    while True:  # trial 0 is the victim's until it has begun training (its MLflow run exists)
        try:
            trials = optuna.load_study(study_name="loss_screen", storage=url).trials
        except KeyError:  # the study is not there yet
            trials = []
        if trials and "mlflow_run_id" in trials[0].user_attrs:
            break
        assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read()[-3000:]
        time.sleep(0.2)
    killed = trials[0]
    others = start_workers(2, args, tmp_path / "others")
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    for worker in others:
        _, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="loss_screen", storage=url).trials
    assert trials[0].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted((t.params["loss"], t.params["seed"]) for t in done) == sorted(
        (loss, seed) for loss in ("bce", "weighted_bce") for seed in (0, 1, 2)
    )
    run = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "FAIL"
