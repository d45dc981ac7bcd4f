"""Multi-machine data-parallel training as far as one machine allows: two `python -m cxr.train` processes
form a TensorFlow `MultiWorkerMirroredStrategy` cluster on localhost ports (TF_CONFIG). They train the
loss curve one process trains at the same global batch; only the chief (worker 0) logs an MLflow run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cxr.runtime.errors import CxrError
from cxr.serving import pyfunc
from cxr.tracking import names as metric_names
from cxr.training.backend import is_chief

from .conftest import REPO, TINY, store_overrides
from .services import free_port
from .test_distribution import SAME_CURVE

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="MultiWorkerMirroredStrategy is TensorFlow's; JAX multi-process training is not wired "
    "(docs/scale-out.md)",
)


def tf_config(cluster: dict, kind: str, index: int) -> dict[str, str]:
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


def test_the_chief_is_worker_0_or_the_task_named_chief_and_any_process_without_a_cluster():
    workers = {"worker": ["a:1", "b:1"]}
    second = tf_config(workers, "worker", 1)
    assert is_chief("data_parallel", {}) and is_chief("none", second)  # one process: its own chief
    assert is_chief("data_parallel", tf_config(workers, "worker", 0)) and not is_chief(
        "data_parallel", second
    )
    with_chief = {"chief": ["c:1"], **workers}
    assert is_chief("data_parallel", tf_config(with_chief, "chief", 0))
    assert not is_chief("data_parallel", tf_config(with_chief, "worker", 0))


def test_a_tf_config_that_is_not_a_cluster_spec_is_a_one_line_error_showing_the_expected_shape():
    for bad in ("{not json", '{"cluster": {}}', "[1, 2]"):
        with pytest.raises(CxrError, match=r"TF_CONFIG=.* is not a TensorFlow cluster spec; set it to JSON"):
            is_chief("data_parallel", {"TF_CONFIG": bad})


def _loss_curve(client: MlflowClient, experiment: str) -> tuple[str, list[float]]:
    """The experiment's one run, finished: its id and training loss per epoch."""
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, metric_names.from_keras("loss"))
    return run.info.run_id, [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.mark.slow
def test_two_worker_processes_train_one_process_curve_and_only_the_chief_logs_a_run(tmp_path):
    base = [*TINY, *store_overrides(tmp_path), *SAME_CURVE]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}

    def command(i: int | str, *knobs: str) -> list[str]:
        dirs = [f"output_dir={tmp_path}/output{i}", f"hydra.run.dir={tmp_path}/hydra{i}"]
        return [sys.executable, "-m", "cxr.train", *base, *dirs, *knobs]

    one = subprocess.run(
        command("one", "trainer.batch_size=32", "tracking.experiment_name=one"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-4000:]

    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    two = [
        "trainer.batch_size=16",  # per worker: a global batch of 32, as above
        "trainer.distribution=data_parallel",
        "tracking.experiment_name=two",
    ]
    workers = [
        subprocess.Popen(
            command(i, *two),
            cwd=REPO,
            env={**env, **tf_config(cluster, "worker", i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (0, 1)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-4000:]
    summary = re.compile(r"MLflow run [0-9a-f]{32}")
    assert summary.search(outputs[0])
    assert "a non-chief worker (TF_CONFIG): training only" in outputs[1] and not summary.search(outputs[1])

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    assert len(client.search_experiments()) == 3  # Default, one, two: the worker made nothing of its own
    (_, single), (chief_run, chief) = _loss_curve(client, "one"), _loss_curve(client, "two")  # one run each
    assert len(single) == len(chief) == 2
    assert chief == pytest.approx(single, rel=2e-3), (single, chief)  # 6e-4 here

    mlflow.set_tracking_uri(uri)  # the chief logged the trained model, which predicts without a cluster
    (member,) = pyfunc.load(f"runs:/{chief_run}").members
    assert member.predict(np.zeros((3, 32, 32, 1), np.uint8), verbose=0).shape[0] == 3
