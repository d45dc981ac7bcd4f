"""Grad-CAM on real Keras models: exact against CAM, localising, per model, per ensemble, as a PNG."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from cxr.config import DenseNet121CbamConfig, DenseNet121Config, SmallCnnConfig
from cxr.data.images import resize as resize_grey
from cxr.models import build_model
from cxr.models.layers import GreyToImageNet
from cxr.runtime.errors import CxrError
from cxr.serving.gradcam import ensemble_gradcam, gradcam, heatmap_at, overlay_png, target_layer
from tests.conftest import REPO, load_resized

RNG = np.random.default_rng(0)


def grey_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def cam_model(size: int = 16, classes: int = 3, seed: int = 0) -> keras.Model:
    """conv features -> global average pooling -> Dense(sigmoid): the model class where Grad-CAM is CAM."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1), dtype="uint8", name="image")
    x = GreyToImageNet(name="preprocess")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv0")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="sigmoid", name="predictions")(x))


def cam_reference(model: keras.Model, images: np.ndarray, k: int) -> np.ndarray:
    """Zhou et al. 2016: ReLU(sum_c w_kc A_c), each map divided by its max, from NumPy alone."""
    features = keras.Model(model.input, model.get_layer("features").output).predict(images, verbose=0)
    kernel = model.get_layer("predictions").get_weights()[0]
    maps = np.maximum(np.einsum("nhwc,c->nhw", features, kernel[:, k]), 0.0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


@pytest.mark.backend
def test_gradcam_of_a_gap_dense_model_is_cam():
    model, images = cam_model(), grey_images(4, 16)
    for k in range(3):
        maps = gradcam(model, images, k)
        assert maps.shape == (4, 16, 16) and maps.dtype == np.float32
        np.testing.assert_allclose(maps, cam_reference(model, images, k), atol=1e-5)


@pytest.mark.backend
def test_a_saturated_sigmoid_still_gives_the_cam_map():
    """p rounds to 1 in float32, so the probability's gradient would be 0; the logit's is not."""
    model, images = cam_model(), grey_images(2, 16)
    head = model.get_layer("predictions")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 1e4, bias])
    k = int(np.argmax(kernel.sum(axis=0)))
    assert np.all(model.predict(images, verbose=0)[:, k] == 1.0)
    maps = gradcam(model, images, k)
    assert maps.max() == pytest.approx(1.0)
    np.testing.assert_allclose(maps, cam_reference(model, images, k), atol=1e-5)
    # A head that does not end in a sigmoid Dense falls back to the probability, which here goes blank.
    probability_only = keras.Model(model.input, keras.layers.Activation("linear")(model.output))
    assert gradcam(probability_only, images, k).max() == 0.0


def left_half_model(size: int = 16) -> keras.Model:
    """Feature 0 is the left half of the image (right half zeroed), feature 1 the whole image;
    class 0 reads only feature 0, class 1 only feature 1. All weights set by hand."""
    inputs = keras.Input((size, size, 1), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    left = keras.layers.Cropping2D(((0, 0), (0, size // 2)), name="crop")(x)
    left = keras.layers.ZeroPadding2D(((0, 0), (0, size // 2)), name="pad")(left)
    both = keras.layers.Concatenate(name="stack")([left, x])
    conv = keras.layers.Conv2D(2, 1, use_bias=False, name="features")
    head = keras.layers.Dense(2, activation="sigmoid", name="predictions")
    outputs = head(keras.layers.GlobalAveragePooling2D(name="gap")(conv(both)))
    model = keras.Model(inputs, outputs)
    conv.set_weights([np.eye(2, dtype=np.float32)[None, None]])
    head.set_weights([np.eye(2, dtype=np.float32) * 4.0, np.zeros(2, np.float32)])
    return model


@pytest.mark.backend
def test_a_class_that_reads_only_the_left_half_lights_only_the_left_half():
    model, images = left_half_model(), grey_images(3, 16, seed=1)
    assert target_layer(model) == "features"
    left = gradcam(model, images, 0)
    share = left[:, :, :8].sum(axis=(1, 2)) / left.sum(axis=(1, 2))
    assert np.all(share > 0.99)
    whole = gradcam(model, images, 1)  # the check can fail: a whole-image class lights both halves
    assert np.all(whole[:, :, 8:].sum(axis=(1, 2)) / whole.sum(axis=(1, 2)) > 0.3)


def small_cnn(size: int, classes: int = 3, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_model(OmegaConf.structured(SmallCnnConfig(filters=[4, 8], dense_units=8)), size, classes)


@pytest.mark.backend
def test_small_cnn_maps_have_feature_map_shape_and_unit_range():
    model = small_cnn(32)
    assert target_layer(model) == "pool1"
    maps = gradcam(model, grey_images(3, 32), 2)
    assert maps.shape == (3, 8, 8) and maps.dtype == np.float32
    assert maps.min() >= 0.0
    assert all(m.max() in (0.0, pytest.approx(1.0)) for m in maps)


def conv_stack(x, names=("c0", "c1")):
    for name in names:
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=name)(x)
    return x


@pytest.mark.backend
def test_a_nested_backbone_gives_the_same_maps_as_the_same_layers_inlined():
    def classify(image, features):
        pooled = keras.layers.GlobalAveragePooling2D(name="gap")(features)
        return keras.Model(image, keras.layers.Dense(2, activation="sigmoid", name="predictions")(pooled))

    inner = keras.Input((16, 16, 1))
    backbone = keras.Model(inner, conv_stack(inner), name="backbone")
    image = keras.Input((16, 16, 1), dtype="uint8", name="image")
    nested = classify(image, backbone(keras.layers.Rescaling(1 / 255, name="scale")(image)))
    image = keras.Input((16, 16, 1), dtype="uint8", name="image")
    flat = classify(image, conv_stack(keras.layers.Rescaling(1 / 255, name="scale")(image)))
    flat.set_weights(nested.get_weights())
    assert (target_layer(nested), target_layer(flat)) == ("backbone", "c1")
    images = grey_images(2, 16)
    np.testing.assert_allclose(nested.predict(images, verbose=0), flat.predict(images, verbose=0), atol=1e-6)
    np.testing.assert_allclose(gradcam(nested, images, 1), gradcam(flat, images, 1), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cfg", "layer"),
    [(DenseNet121Config(weights=None), "densenet121"), (DenseNet121CbamConfig(weights=None), "cbam")],
)
def test_target_layer_of_the_densenets(cfg, layer):
    model = build_model(OmegaConf.structured(cfg), 64, 14)
    assert target_layer(model) == layer
    maps = gradcam(model, grey_images(1, 64), 5)
    assert maps.shape == (1, 2, 2) and maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.slow
def test_target_layer_of_an_inlined_densenet_is_its_last_activation():
    image = keras.Input((32, 32, 1), dtype="uint8", name="image")
    x = GreyToImageNet(name="preprocess")(image)
    x = keras.applications.DenseNet121(include_top=False, weights=None, input_tensor=x).output
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(image, keras.layers.Dense(14, activation="sigmoid")(x))
    assert target_layer(model) == "relu"


def test_a_model_without_a_feature_map_is_a_user_error():
    image = keras.Input((8, 8, 1), dtype="uint8", name="image")
    x = GreyToImageNet()(image)
    model = keras.Model(image, keras.layers.Dense(2)(keras.layers.Flatten()(x)), name="flat_mlp")
    with pytest.raises(CxrError, match="flat_mlp"):
        target_layer(model)
    with pytest.raises(CxrError, match="no layer 'nope'"):
        gradcam(small_cnn(16), grey_images(1, 16), 0, layer="nope")


def test_heatmap_at_upsamples_bilinearly_to_the_image_size():
    maps = np.array([[[0.0, 1.0], [1.0, 0.0]]], dtype=np.float32)
    up = heatmap_at((100, 80), maps)
    assert up.shape == (1, 100, 80) and up.dtype == np.float32
    assert up.min() >= 0.0 and up.max() <= 1.0
    assert up[0, 0, 0] == pytest.approx(0.0) and up[0, 0, -1] == pytest.approx(1.0)
    assert up[0, 50, 40] == pytest.approx(0.5, abs=0.03)  # the centre blends all four cells
    assert heatmap_at((100, 80), maps[0]).shape == (100, 80)


@pytest.mark.backend
def test_ensemble_maps_are_the_mean_of_the_members_at_the_images_size():
    image = RNG.integers(0, 256, (100, 80), dtype=np.uint8)
    members = [small_cnn(32, seed=1), small_cnn(48, seed=2)]
    heat = ensemble_gradcam(members, image, 1)
    assert heat.shape == (100, 80) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    singles = [
        heatmap_at(image.shape, gradcam(m, resize_grey(image, s)[None, ..., None], 1)[0])
        for m, s in zip(members, (32, 48), strict=True)
    ]
    np.testing.assert_allclose(heat, np.mean(singles, axis=0), atol=1e-6)
    np.testing.assert_allclose(ensemble_gradcam(members[:1], image, 1), singles[0], atol=1e-7)


def test_resize_grey_is_the_caches_resizing(tmp_path):
    image = RNG.integers(0, 256, (100, 80), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    for size in (32, 48, 100):
        np.testing.assert_array_equal(resize_grey(image, size), load_resized(str(tmp_path / "x.png"), size))


def test_overlay_png_has_the_real_images_pixels_and_blends_the_heat(shared_data, tmp_path):
    original = load_resized(str(shared_data / "nih-samples" / "full_1024px" / "00000001_000.png"), 1024)
    height, width = original.shape
    heat = heatmap_at(original.shape, np.array([[0.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    path = overlay_png(original, heat, tmp_path / "out" / "cardiomegaly.png", title="Cardiomegaly 0.91")
    written = np.asarray(Image.open(path))
    assert written.shape == (height, width, 3)
    assert written[-1, -1, 0] > written[-1, -1, 2]  # hot corner: jet's red
    cold = written[height // 4, width // 4].astype(int)
    assert cold[2] > cold[0]  # cold region: jet's blue over the grey


@pytest.mark.slow
def test_a_backend_without_gradients_is_a_user_error_naming_it():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("Keras's numpy backend imports jax, which is not installed")
    script = textwrap.dedent(
        """
        from cxr.runtime.errors import CxrError
        from cxr.serving.gradcam import gradcam
        from tests.test_gradcam import cam_model, grey_images
        try:
            gradcam(cam_model(), grey_images(1, 16), 0)
        except CxrError as err:
            print(err)
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "numpy"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert "backend 'numpy'" in done.stdout, done.stderr[-3000:]
