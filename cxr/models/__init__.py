"""Model registry: `model.name` picks a builder; each returns an uncompiled Keras model."""

from __future__ import annotations

import keras

from cxr.models import small_cnn as _small_cnn  # noqa: F401  (registers itself)
from cxr.models.registry import MODELS


def build_model(cfg, image_size: int, num_classes: int) -> keras.Model:
    return MODELS.get(cfg.name)(cfg, (image_size, image_size, 3), num_classes)


__all__ = ["MODELS", "build_model"]
