"""Models: registry builds, raw grey input, preprocessing equal to DenseNet's, safe-mode round trip."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
from keras.applications import densenet
from omegaconf import OmegaConf

from cxr.config import SmallCnnConfig
from cxr.labels import NUM_CLASSES
from cxr.losses import DynamicWeightedBCE
from cxr.models import MODELS, build_model
from cxr.models.layers import GreyToImageNet


def test_grey_to_imagenet_equals_densenet_preprocessing_of_the_rgb_copy():
    grey = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1)).astype(np.uint8)
    expected = densenet.preprocess_input(np.repeat(grey, 3, axis=-1).astype(np.float32))
    np.testing.assert_allclose(np.asarray(GreyToImageNet()(grey)), expected, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_each_model_builds_and_takes_one_training_step(name):
    cfg = OmegaConf.structured({"small_cnn": SmallCnnConfig(filters=[4, 8], dense_units=8)}[name])
    model = build_model(cfg, 32, NUM_CLASSES)
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, NUM_CLASSES)
    model.compile(optimizer="adam", loss=DynamicWeightedBCE())
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1)).astype(np.uint8)
    y = np.eye(4, NUM_CLASSES, dtype=np.float32)
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)


def test_saved_model_loads_in_a_fresh_process_in_safe_mode(tmp_path):
    model = build_model(OmegaConf.structured(SmallCnnConfig(filters=[4])), 16, NUM_CLASSES)
    model.compile(optimizer="adam", loss=DynamicWeightedBCE(smoothing_factor=0.2))
    x = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 1)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    model.save(tmp_path / "m.keras")
    script = (
        "import numpy as np, keras, cxr.models, cxr.losses\n"
        f"m = keras.saving.load_model('{tmp_path}/m.keras', safe_mode=True)\n"
        f"out = m.predict(np.load('{tmp_path}/x.npy'), verbose=0)\n"
        f"assert np.array_equal(out, np.load('{tmp_path}/y.npy')), 'outputs differ'\n"
        "assert m.loss.smoothing_factor == 0.2\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert isinstance(keras.saving.load_model(tmp_path / "m.keras").layers[1], GreyToImageNet)
