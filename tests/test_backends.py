"""Backends and precision: trainer.precision/jit_compile/steps_per_execution are checked and reach the
model, every precision trains a step with float32 outputs, and a saved model crosses backends."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from cxr.config import TrainerConfig
from cxr.models import build_model
from cxr.runtime.errors import CxrError
from cxr.training.backend import PRECISIONS, check_trainer, compile_options, dtype_policy
from cxr.training.losses import DynamicWeightedBCE
from cxr.training.metrics import epoch_metrics

from .conftest import REPO
from .test_models import NUM_CLASSES, SIZE, images, model_cfg

pytestmark = pytest.mark.backend


def trainer(**changes):
    cfg = OmegaConf.structured(TrainerConfig)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_defaults_live_in_the_schema():
    t = trainer()
    assert (t.precision, t.jit_compile, t.steps_per_execution) == ("float32", "auto", 1)
    check_trainer(t)
    assert compile_options(t) == {"jit_compile": "auto", "steps_per_execution": 1}


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "precision",
            "float16",
            r"trainer.precision=.float16.: choose one of float32, mixed_bfloat16, mixed_f",
        ),
        ("jit_compile", "xla", r"trainer.jit_compile='xla': choose one of auto, true, false"),
        ("steps_per_execution", 0, r"trainer.steps_per_execution=0: .*1 or more"),
    ],
)
def test_bad_knobs_are_one_line_errors_naming_key_and_choices(key, value, message):
    with pytest.raises(CxrError, match=message):
        check_trainer(trainer(**{key: value}))


def test_a_bad_precision_fails_before_any_work(compose_cfg, tmp_path):
    from cxr.train import train

    cfg = compose_cfg(["trainer.precision=half", f"output_dir={tmp_path}/out"])
    with pytest.raises(CxrError, match="trainer.precision='half'"):
        train(cfg)
    assert not (tmp_path / "out").exists()


def test_a_loss_with_a_running_state_is_refused_on_jax_only():
    from cxr.training.backend import check_loss
    from cxr.training.losses import DynamicWeightedBCE, MovingAverageWeightedBCE

    check_loss(DynamicWeightedBCE())
    if keras.backend.backend() == "jax":
        with pytest.raises(CxrError, match="loss=moving_average_bce keeps a running state.*tensorflow"):
            check_loss(MovingAverageWeightedBCE(3))
    else:
        check_loss(MovingAverageWeightedBCE(3))


def test_the_policy_is_restored_even_when_building_fails():
    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError), dtype_policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        raise RuntimeError
    assert keras.config.dtype_policy().name == before


# float32 steps: tests/test_models.py. DenseNet121's eager step takes ~15 s on a 2-core CPU.
@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p != "float32"])
@pytest.mark.parametrize("name", ["small_cnn", pytest.param("densenet121_cbam", marks=pytest.mark.slow)])
def test_each_precision_trains_a_step_with_float32_outputs(name, precision):
    if name == "densenet121_cbam" and keras.backend.backend() == "jax":
        pytest.skip("DenseNet121's eager 16-bit step takes minutes on JAX's CPU; the TensorFlow pass has it")
    with dtype_policy(precision):
        model = build_model(model_cfg(name), SIZE, NUM_CLASSES)
    assert keras.config.dtype_policy().name == "float32"
    compute = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}[precision]
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model.get_layer("predictions").variable_dtype == "float32"
    if name == "densenet121_cbam":  # the attention block computes in the policy's type, sublayers too
        cbam = model.get_layer("cbam")
        for layer in (cbam, cbam.channel.hidden, cbam.channel.project, cbam.spatial.conv):
            assert layer.compute_dtype == compute and layer.variable_dtype == "float32", layer.name
    model.compile(
        optimizer="adam",
        loss=DynamicWeightedBCE(),
        metrics=epoch_metrics(NUM_CLASSES, 0.5),
        run_eagerly=name != "small_cnn",  # DenseNet's graph costs ~45 s to trace on a CPU; same ops
    )
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")  # Keras adds loss scaling for float16 only
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch(images(4), np.eye(4, NUM_CLASSES, dtype=np.float32), return_dict=True)
    assert np.isfinite(logs["loss"]) and 0.0 <= logs["specificity"] <= 1.0
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    out = model.predict(images(3, seed=1), verbose=0)
    assert out.dtype == np.float32 and np.all((out >= 0) & (out <= 1))


def run_under(backend: str, script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend}
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)


SAVE = """
import numpy as np, keras
from cxr.training.backend import dtype_policy
from cxr.training.losses import DynamicWeightedBCE
from cxr.models import build_model
from tests.test_models import NUM_CLASSES, SIZE, images, model_cfg
assert keras.backend.backend() == {backend!r}
x = images(3, seed=2)
np.save('{tmp}/x.npy', x)
def cbam_net():  # DenseNet121's CBAM head on a small feature map: DenseNet costs minutes here on a CPU
    from cxr.models.cbam import CBAM
    inputs = keras.Input((SIZE, SIZE, 1), dtype='uint8')
    x = keras.layers.Conv2D(16, 3, strides=4)(keras.ops.cast(inputs, 'float32') / 255.0)
    x = keras.layers.GlobalAveragePooling2D()(CBAM(4, 3, name='cbam')(x))
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, 'sigmoid', dtype='float32')(x))
for name, precision in [('small_cnn', 'float32'), ('cbam', 'mixed_bfloat16')]:
    with dtype_policy(precision):
        model = build_model(model_cfg(name), SIZE, NUM_CLASSES) if name == 'small_cnn' else cbam_net()
    model.compile(optimizer='adam', loss=DynamicWeightedBCE(0.2))
    np.save(f'{tmp}/{{name}}.npy', model.predict(x, verbose=0))
    model.save(f'{tmp}/{{name}}.keras')
"""

LOAD = """
import numpy as np, keras, cxr.models, cxr.training.losses
assert keras.backend.backend() == {backend!r}
x = np.load('{tmp}/x.npy')
for name, atol in [('small_cnn', 1e-5), ('cbam', 2e-2)]:
    model = keras.saving.load_model(f'{tmp}/{{name}}.keras', safe_mode=True)
    out = model.predict(x, verbose=0)
    assert out.dtype == np.float32, name
    np.testing.assert_allclose(out, np.load(f'{tmp}/{{name}}.npy'), atol=atol, err_msg=name)
assert model.get_layer('cbam').channel.hidden.compute_dtype == 'bfloat16'
"""


@pytest.mark.slow
def test_a_model_saved_on_this_backend_loads_in_safe_mode_on_the_other(tmp_path):
    """TensorFlow to JAX in the main test pass, JAX to TensorFlow in CI's JAX pass."""
    source = keras.backend.backend()
    target = {"tensorflow": "jax", "jax": "tensorflow"}.get(source)
    if target is None:
        pytest.skip(f"no other backend paired with {source}")
    if importlib.util.find_spec(target) is None:
        pytest.skip(f'{target} is not installed (jax: pip install -e ".[jax]")')
    saved = run_under(source, SAVE.format(backend=source, tmp=tmp_path))
    assert saved.returncode == 0, saved.stderr[-3000:]
    loaded = run_under(target, LOAD.format(backend=target, tmp=tmp_path))
    assert loaded.returncode == 0, loaded.stderr[-3000:]


@pytest.mark.slow
def test_a_mixed_precision_run_logs_a_model_that_loads_in_a_fresh_process(compose_cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    from cxr.train import train

    from .conftest import TINY, store_overrides

    knobs = ["trainer.precision=mixed_bfloat16", "trainer.steps_per_execution=2"]
    cheap = ["evaluation.bootstrap.resamples=0", "evaluation.plots=false"]
    cfg = compose_cfg([*TINY, *store_overrides(tmp_path), *knobs, *cheap])
    train(cfg)
    assert keras.config.dtype_policy().name == "float32"  # restored for whatever runs next
    client = MlflowClient(cfg.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment_name).experiment_id])
    assert run.data.params["trainer.precision"] == "mixed_bfloat16"
    assert run.data.params["trainer.steps_per_execution"] == "2"
    script = (
        "import mlflow, numpy as np\n"
        "from cxr import pyfunc\n"
        f"mlflow.set_tracking_uri({cfg.tracking.uri!r})\n"
        f"model = pyfunc.load('runs:/{run.info.run_id}')\n"
        "(member,) = model.members\n"
        "assert member.get_layer('conv0').dtype_policy.name == 'mixed_bfloat16'\n"  # layers keep their policy
        "scores = model.probabilities([np.full((40, 40), 100, np.uint8)])\n"
        "assert scores.dtype == np.float32 and scores.shape == (1, 14), scores\n"
    )
    done = run_under(keras.backend.backend(), script)
    assert done.returncode == 0, done.stderr[-3000:]
