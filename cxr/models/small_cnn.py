"""A few conv blocks and a small dense head: trains in seconds on a CPU, for demos, screens and tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
from keras import layers

from cxr.models.builders import MODELS

if TYPE_CHECKING:
    from cxr.config import SmallCnnConfig  # a type only: config sits above models


@MODELS.register("small_cnn")
def build_small_cnn(cfg: SmallCnnConfig, x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
    for i, filters in enumerate(cfg.filters):
        for j in range(cfg.convs_per_block):
            suffix = f"{i}" if j == 0 else f"{i}_{j}"  # a one-conv model keeps the names it always had
            x = layers.Conv2D(
                filters, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"conv{suffix}"
            )(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"bn{suffix}")(x)
            x = layers.ReLU(name=f"relu{suffix}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    pooled = layers.GlobalAveragePooling2D(name="gap")(x)
    if cfg.pooling == "avgmax":  # a small nodule or mass is a peak that averaging over the chest dilutes
        pooled = layers.Concatenate(name="gap_gmp")([pooled, layers.GlobalMaxPooling2D(name="gmp")(x)])
    x = pooled
    x = layers.Dense(cfg.dense_units, activation="relu", kernel_regularizer=reg, name="dense")(x)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="sigmoid", dtype="float32", name="predictions")(x)
