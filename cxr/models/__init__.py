"""Model registry: `model.name` (or `model._target_`, a builder in your own code) picks a builder that
maps the preprocessed image tensor to 14 outputs: `builder(cfg, x, num_classes) -> outputs`.

Every model takes raw grey images, (N, size, size, 1) uint8, and starts with GreyToImageNet.
"""

from __future__ import annotations

import keras

from cxr.models import densenet as _densenet  # noqa: F401  (each module registers its builders)
from cxr.models import small_cnn as _small_cnn  # noqa: F401
from cxr.models.layers import GreyToImageNet
from cxr.models.registry import MODELS


def build_model(cfg, image_size: int, num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=(image_size, image_size, 1), dtype="uint8", name="image")
    outputs = MODELS.for_option(cfg)(cfg, GreyToImageNet(name="preprocess")(inputs), num_classes)
    return keras.Model(inputs, outputs, name=cfg.name)


__all__ = ["MODELS", "build_model"]
