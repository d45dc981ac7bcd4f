"""trainer.distribution=data_parallel on 2 logical CPU devices: the backend's own engine trains the same
loss curve as one device at the same global batch, and the logged model loads without the strategy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from cxr.data.pipeline import CacheBatches
from cxr.runtime.errors import CxrError
from cxr.training.backend import check_trainer

from .conftest import REPO, TINY, store_overrides
from .test_backends import trainer

pytestmark = pytest.mark.backend

# No dropout, augmentation or learning-rate schedule: the replicas' random draws would differ.
SAME_CURVE = [
    "model.dropout=0.0",
    "callbacks.reduce_lr.enabled=false",
    "evaluation.bootstrap.resamples=0",
    "evaluation.plots=false",
]

# Two runs in one process that sees 2 devices: one replica at batch 32, then 2 replicas at 16 each.
TWO_RUNS = """
import json, os, sys
import keras
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mlflow.tracking import MlflowClient
from cxr.tracking import names as metric_names
from cxr.train import train
from tests.conftest import hydra_compose
assert len(keras.distribution.list_devices()) == 2, keras.distribution.list_devices()
base = json.loads(sys.argv[1])
curves = {{}}
for name, knobs in [("one", ["trainer.batch_size=32"]),
                    ("two", ["trainer.batch_size=16", "trainer.distribution=data_parallel"])]:
    with hydra_compose() as compose:
        cfg = compose([*base, *knobs, f"tracking.experiment_name={{name}}"])
    train(cfg)
    client = MlflowClient(cfg.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    history = client.get_metric_history(run.info.run_id, metric_names.from_keras("loss"))
    loss = [m.value for m in sorted(history, key=lambda m: m.step)]
    curves[name] = {{"run_id": run.info.run_id, "loss": loss, "uri": cfg.tracking.uri}}
print("CURVES=" + json.dumps(curves))
"""

LOAD = """
import keras, numpy as np, mlflow
from cxr.serving import pyfunc
mlflow.set_tracking_uri({uri!r})
model = pyfunc.load("runs:/{run_id}")
assert len(keras.distribution.list_devices()) == 1
(member,) = model.members
out = member.predict(np.zeros((3, 32, 32, 1), np.uint8), verbose=0)
assert out.shape[0] == 3 and np.all((out >= 0) & (out <= 1)), out
"""


def test_batches_for_jax_data_parallel_split_evenly_and_leave_out_fewer_rows_than_devices():
    images = np.zeros((11, 2, 2), np.uint8)
    batches = CacheBatches(
        images, np.zeros((11, 1)), np.arange(11), batch_size=4, training=True, multiple_of=2
    )
    sizes = [len(batches.batch_rows(i)) for i in range(len(batches))]
    assert sizes == [4, 4, 2]
    assert len(np.unique(np.concatenate([batches.batch_rows(i) for i in range(len(batches))]))) == 10
    with pytest.raises(ValueError, match="not a multiple of 2"):
        CacheBatches(images, np.zeros((11, 1)), np.arange(11), batch_size=3, multiple_of=2)


def test_an_unknown_distribution_is_a_one_line_error_naming_the_choices():
    check_trainer(trainer(distribution="data_parallel"))
    with pytest.raises(CxrError, match=r"trainer.distribution='mirrored': choose one of none, data_parallel"):
        check_trainer(trainer(distribution="mirrored"))


@pytest.mark.slow
def test_data_parallel_on_two_devices_matches_one_device_and_logs_a_model_that_loads_alone(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    if keras.backend.backend() == "jax":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    base = [*TINY, *store_overrides(tmp_path), *SAME_CURVE, "trainer.epochs=3"]
    done = subprocess.run(
        [sys.executable, "-c", TWO_RUNS.format(), json.dumps(base)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("CURVES=")]
    curves = json.loads(line.removeprefix("CURVES="))
    one, two = curves["one"]["loss"], curves["two"]["loss"]
    assert len(one) == len(two) == 3
    assert two == pytest.approx(one, rel=2e-3), (one, two)  # 1e-7 here: only the summation order differs
    env.pop("XLA_FLAGS", None)
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD.format(**curves["two"])],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr[-4000:]
