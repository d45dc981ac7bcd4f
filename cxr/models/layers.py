"""Custom layers: small subclassed, serializable Keras layers (never Lambda, which safe mode refuses)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import ops

if TYPE_CHECKING:
    from cxr.config import AugmentConfig  # a type only: config sits above models

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="cxr")
class GreyToImageNet(keras.layers.Layer):
    """(B, H, W, 1) grey in [0, 255] -> (B, H, W, 3) float normalised as DenseNet's ImageNet weights expect.

    Equal to keras.applications.densenet.preprocess_input of the grey image copied to RGB. Inside the
    model it runs on the accelerator and the input pipeline ships 1-byte grey pixels instead of
    12-byte RGB floats; a saved model takes raw images, with no preprocessing contract to get wrong.
    """

    def call(self, inputs):
        std = np.asarray(IMAGENET_STD, np.float32)
        scale = ops.convert_to_tensor(1.0 / (255.0 * std))
        offset = ops.convert_to_tensor(-np.asarray(IMAGENET_MEAN, np.float32) / std)
        return ops.cast(inputs, "float32") * scale + offset

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


@keras.saving.register_keras_serializable(package="cxr")
class GreyToUnit(keras.layers.Layer):
    """(B, H, W, 1) grey in [0, 255] -> (B, H, W, 1) float in [-1, 1]: the input of a network that learns
    from scratch (the small CNN). ImageNet's 3-channel normalisation is for ImageNet weights; for
    anything else, three copies of one grey channel triple the first convolution's work for nothing."""

    def call(self, inputs):
        return ops.cast(inputs, "float32") * (2.0 / 255.0) - 1.0

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="cxr")
class ClipGrey(keras.layers.Layer):
    """Clips grey values to [0, 255], the range of the uint8 images, as float32."""

    def call(self, inputs):
        return ops.clip(ops.cast(inputs, "float32"), 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape


def augmentation(cfg: AugmentConfig) -> keras.Sequential | None:
    """The configured random transforms (an AugmentConfig) as one block of Keras preprocessing
    layers over grey values in [0, 255], clipped back to that range; None when every transform is off.

    Each layer draws from Keras's seed generator (seeded by `keras.utils.set_random_seed`) and is the
    identity at inference. The block computes in float32 whatever the dtype policy, so the grey
    levels keep their precision under mixed precision.
    """
    grey = {"value_range": (0.0, 255.0), "dtype": "float32"}
    steps, edges = [], {"fill_mode": "constant", "dtype": "float32"}  # black beyond the image's edges
    if cfg.rotation_degrees:
        steps.append(keras.layers.RandomRotation(cfg.rotation_degrees / 360.0, **edges))
    if cfg.shift_fraction:
        steps.append(keras.layers.RandomTranslation(cfg.shift_fraction, cfg.shift_fraction, **edges))
    if cfg.zoom_fraction:
        steps.append(keras.layers.RandomZoom(cfg.zoom_fraction, **edges))
    if cfg.brightness:
        steps.append(keras.layers.RandomBrightness(cfg.brightness, **grey))
    if cfg.contrast:
        steps.append(keras.layers.RandomContrast(cfg.contrast, **grey))
    if cfg.horizontal_flip:
        steps.append(keras.layers.RandomFlip("horizontal", dtype="float32"))
    if not steps:
        return None
    return keras.Sequential([*steps, ClipGrey(dtype="float32", name="clip")], name="augment")
