"""Models: every registered model builds and trains a step, CBAM is the paper's, weights options,
freezing, and a safe-mode save/load round trip in a fresh process with identical outputs."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras.applications import densenet
from omegaconf import OmegaConf

from cxr.config import AugmentConfig, DenseNet121CbamConfig, DenseNet121Config, SmallCnnConfig
from cxr.data.labels import NIH_PATHOLOGIES
from cxr.models import MODELS, build_model
from cxr.models.cbam import CBAM, ChannelAttention, SpatialAttention
from cxr.models.layers import GreyToImageNet, GreyToUnit
from cxr.runtime.errors import CxrError
from cxr.training.losses import DynamicWeightedBCE
from cxr.training.metrics import epoch_metrics

from .conftest import REPO

NUM_CLASSES = len(NIH_PATHOLOGIES)

SIZE = 32  # DenseNet121's smallest input
CONFIGS = {
    "small_cnn": SmallCnnConfig(filters=[4, 8], dense_units=8),
    "densenet121": DenseNet121Config(weights=None),
    "densenet121_cbam": DenseNet121CbamConfig(weights=None, dense_units=[16, 8]),
}


def model_cfg(name: str, **changes):
    cfg = OmegaConf.structured(CONFIGS[name])
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1)).astype(np.uint8)


def test_every_registered_model_has_a_test_config():
    assert set(MODELS) == set(CONFIGS)


@pytest.mark.backend
def test_grey_to_imagenet_equals_densenet_preprocessing_of_the_rgb_copy():
    grey = images(2, size=8)
    expected = densenet.preprocess_input(np.repeat(grey, 3, axis=-1).astype(np.float32))
    np.testing.assert_allclose(np.asarray(GreyToImageNet()(grey)), expected, atol=1e-5)


@pytest.mark.backend
def test_the_small_cnn_learns_from_the_one_grey_channel_and_the_densenets_from_imagenet_rgb():
    """Issue 24: the demo's small CNN spent a third of its first layer on three copies of one channel."""
    np.testing.assert_allclose(np.asarray(GreyToUnit()(np.array([[0, 255]], np.uint8))), [[-1.0, 1.0]])
    small = build_model(model_cfg("small_cnn"), SIZE, NUM_CLASSES)
    assert isinstance(small.get_layer("preprocess"), GreyToUnit)
    assert small.get_layer("conv0").kernel.shape == (3, 3, 1, 4)
    dense = build_model(model_cfg("densenet121"), SIZE, NUM_CLASSES)
    assert isinstance(dense.get_layer("preprocess"), GreyToImageNet)


@pytest.mark.backend
@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_model_builds_and_takes_one_training_step(name):
    jax = keras.backend.backend() == "jax"
    if jax and name == "densenet121":
        pytest.skip("on JAX, densenet121_cbam's step runs the same backbone (each costs ~1 min on 2 cores)")
    model = build_model(model_cfg(name), SIZE, NUM_CLASSES)
    assert model.input_shape == (None, SIZE, SIZE, 1) and model.output_shape == (None, NUM_CLASSES)
    # Tracing DenseNet's training graph costs ~45 s on a 2-core CPU with TensorFlow; the eager step runs
    # the same ops. On JAX it is the other way round: one jitted step takes ~55 s, an eager one ~175 s.
    # Graph-mode training is covered by the small CNN here and by every training-run test.
    eager = name != "small_cnn" and not jax
    model.compile(
        optimizer="adam",
        loss=DynamicWeightedBCE(),
        metrics=epoch_metrics(NUM_CLASSES, 0.5),
        run_eagerly=eager,
    )
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch(images(4), np.eye(4, NUM_CLASSES, dtype=np.float32), return_dict=True)
    assert np.isfinite(logs["loss"]) and 0.0 <= logs["specificity"] <= 1.0
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    out = model.predict(images(3, seed=1), verbose=0)
    assert out.shape == (3, NUM_CLASSES) and np.all((out >= 0) & (out <= 1))


AUGMENT = OmegaConf.structured(
    AugmentConfig(rotation_degrees=10, shift_fraction=0.1, brightness=0.2, contrast=0.2, horizontal_flip=True)
)


@pytest.mark.backend
def test_augmentation_is_a_block_before_the_preprocessing_and_off_when_unset():
    model = build_model(model_cfg("small_cnn"), SIZE, NUM_CLASSES, augment=AUGMENT)
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["image", "augment", "preprocess"]
    kinds = [type(layer).__name__[len("Random") :] for layer in model.get_layer("augment").layers[:-1]]
    assert kinds == ["Rotation", "Translation", "Brightness", "Contrast", "Flip"]
    assert type(model.get_layer("augment").layers[-1]).__name__ == "ClipGrey"
    off = build_model(
        model_cfg("small_cnn"), SIZE, NUM_CLASSES, augment=OmegaConf.structured(AugmentConfig())
    )
    assert "augment" not in [layer.name for layer in off.layers]
    block = model.get_layer("augment")
    x = images(4)
    np.testing.assert_array_equal(np.asarray(block(x, training=False)), x.astype(np.float32))
    moved = np.asarray(block(x, training=True))
    assert moved.shape == x.shape and moved.min() >= 0 and moved.max() <= 255 and not np.allclose(moved, x)


@pytest.mark.backend
def test_augmentation_changes_outputs_in_training_mode_only():
    cfg = model_cfg("small_cnn", dropout=0.0)  # nothing else random, so any change is augmentation's
    keras.utils.set_random_seed(0)
    plain = build_model(cfg, SIZE, NUM_CLASSES)
    augmented = build_model(cfg, SIZE, NUM_CLASSES, augment=AUGMENT)
    for layer in plain.layers:
        augmented.get_layer(layer.name).set_weights(layer.get_weights())
    x = images(4)
    # Two graphs: XLA (JAX) may fuse the no-op clip differently, hence 1-ulp tolerance, not equality.
    np.testing.assert_allclose(augmented.predict(x, verbose=0), plain.predict(x, verbose=0), atol=1e-6)
    inferred = np.asarray(augmented(x, training=False))
    np.testing.assert_allclose(inferred, np.asarray(plain(x, training=False)), atol=1e-6)
    trained = np.asarray(augmented(x, training=True))
    assert not np.allclose(trained, np.asarray(plain(x, training=True)), atol=1e-4)


def test_densenet121_cbam_has_the_study_head():
    model = build_model(model_cfg("densenet121_cbam", dense_units=[128, 64]), SIZE, NUM_CLASSES)
    names = [layer.name for layer in model.layers]
    assert names[names.index("densenet121") :] == [
        "densenet121", "cbam", "gap", "dense0", "dropout0", "dense1", "dropout1", "predictions",
    ]  # fmt: skip
    assert model.get_layer("dense0").units == 128 and model.get_layer("dense1").units == 64
    assert model.get_layer("dropout0").rate == pytest.approx(0.3)
    assert model.get_layer("dense0").kernel_regularizer.l2 == pytest.approx(1e-3)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.backend
def test_cbam_matches_the_paper_and_keeps_the_shape():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 32)).astype(np.float32)
    cbam = CBAM(reduction=8, kernel_size=3)
    out = np.asarray(cbam(x))
    assert out.shape == x.shape
    assert cbam.channel.hidden.units == 4  # 32 channels / reduction 8
    assert tuple(cbam.spatial.conv.kernel.shape) == (3, 3, 2, 1)  # the spatial branch sees two maps
    # NumPy reference: channel attention then spatial attention, with the layer's own weights
    w1, b1 = (np.asarray(v) for v in cbam.channel.hidden.weights)
    w2, b2 = (np.asarray(v) for v in cbam.channel.project.weights)

    def mlp(v):
        return np.maximum(v @ w1 + b1, 0) @ w2 + b2

    refined = x * sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))[:, None, None, :]
    pooled = np.concatenate([refined.mean(-1, keepdims=True), refined.max(-1, keepdims=True)], -1)
    np.testing.assert_allclose(np.asarray(cbam.spatial.pooled(refined)), pooled, rtol=1e-5, atol=1e-6)
    k, bias = (np.asarray(v) for v in cbam.spatial.conv.weights)
    padded = np.pad(pooled, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = np.zeros(x.shape[:3])
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            conv[:, i, j] = np.einsum("bhwc,hwc->b", padded[:, i : i + 3, j : j + 3], k[..., 0]) + bias[0]
    np.testing.assert_allclose(out, refined * sigmoid(conv)[..., None], rtol=1e-4, atol=1e-5)


@pytest.mark.backend
def test_attention_layers_round_trip_through_their_config():
    for layer in (CBAM(4, 5), ChannelAttention(4), SpatialAttention(5)):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="reduction"):
        ChannelAttention(0)


@pytest.mark.backend
def test_weights_from_a_local_file_are_loaded(tmp_path):
    source = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "densenet121.weights.h5"
    source.save_weights(path)
    model = build_model(model_cfg("densenet121", weights=str(path)), SIZE, NUM_CLASSES)
    for a, b in zip(source.get_weights(), model.get_layer("densenet121").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(CxrError, match=r"model.weights=.*no such file.*imagenet.*null"):
        build_model(model_cfg("densenet121", weights=str(tmp_path / "nope.h5")), SIZE, NUM_CLASSES)


@pytest.mark.slow
def test_imagenet_weights_offline_fail_with_advice_not_a_traceback(tmp_path):
    """The download is pointed at a closed local port, so this fails the same with or without internet."""
    proxy = "http://127.0.0.1:9"
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras")}
    env.update({k: proxy for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")})
    env.update({"NO_PROXY": "", "no_proxy": ""})
    script = (
        "from omegaconf import OmegaConf\n"
        "from cxr.config import DenseNet121Config\n"
        "from cxr.runtime.errors import exit_on_user_error\n"
        "from cxr.models import build_model\n"
        "exit_on_user_error(lambda: build_model(OmegaConf.structured(DenseNet121Config()), 32, 14))()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    # one line, in full: what failed, where, what to do (TensorFlow's start-up log lines aside)
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("cxr: ")]
    url = "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
    assert line.startswith(
        "cxr: error: model.weights=imagenet: could not download the DenseNet121 ImageNet weights from "
        f"{url}densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5: "
    )
    assert "Connection refused" in line or "[Errno" in line
    assert "copy that file to ~/.keras/models/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5" in line
    assert line.endswith("or use model.weights=null to start from random weights.")


@pytest.mark.slow
def test_freezing_all_or_up_to_a_layer():
    frozen = build_model(model_cfg("densenet121", frozen="all"), SIZE, NUM_CLASSES)
    assert frozen.get_layer("densenet121").trainable_weights == []
    partial = build_model(model_cfg("densenet121", frozen="conv5_block1_0_bn"), SIZE, NUM_CLASSES)
    backbone = partial.get_layer("densenet121")
    names = [layer.name for layer in backbone.layers]
    cut = names.index("conv5_block1_0_bn")
    assert not any(layer.trainable for layer in backbone.layers[1:cut])
    assert all(layer.trainable for layer in backbone.layers[cut:])
    with pytest.raises(CxrError, match="model.frozen='conv9'"):
        build_model(model_cfg("densenet121", frozen="conv9"), SIZE, NUM_CLASSES)


@pytest.mark.slow
def test_saved_models_load_in_a_fresh_process_in_safe_mode_with_identical_outputs(tmp_path):
    x = images(3, seed=2)
    np.save(tmp_path / "x.npy", x)
    saved = {name: build_model(model_cfg(name), SIZE, NUM_CLASSES) for name in CONFIGS}
    saved["augmented"] = build_model(model_cfg("small_cnn"), SIZE, NUM_CLASSES, augment=AUGMENT)
    for name, model in saved.items():
        model.compile(optimizer="adam", loss=DynamicWeightedBCE(0.2), metrics=epoch_metrics(NUM_CLASSES, 0.4))
        if name == "augmented":  # a trained step moves the augmentation's seed state, which is saved too
            model.train_on_batch(images(4), np.eye(4, NUM_CLASSES, dtype=np.float32))
        np.save(tmp_path / f"{name}.npy", model.predict(x, verbose=0))
        model.save(tmp_path / f"{name}.keras")
    script = (
        "import sys, numpy as np, keras, cxr.models, cxr.training.losses, cxr.training.metrics\n"
        f"x = np.load('{tmp_path}/x.npy')\n"
        f"for name in {list(saved)!r}:\n"
        f"    m = keras.saving.load_model(f'{tmp_path}/{{name}}.keras', safe_mode=True)\n"
        f"    assert np.array_equal(m.predict(x, verbose=0), np.load(f'{tmp_path}/{{name}}.npy')), name\n"
        "    assert m.loss.smoothing_factor == 0.2, name\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
