"""Custom layers: small subclassed, serializable Keras layers (never Lambda, which safe mode refuses)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

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
