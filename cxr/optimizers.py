"""Optimizer registry for `trainer.optimizer.name`."""

from __future__ import annotations

import keras

from cxr.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adamw")(
    lambda cfg: keras.optimizers.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
)
OPTIMIZERS.register("adam")(lambda cfg: keras.optimizers.Adam(learning_rate=cfg.learning_rate))
OPTIMIZERS.register("sgd")(
    lambda cfg: keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=0.9, nesterov=True)
)


def build_optimizer(cfg) -> keras.optimizers.Optimizer:
    return OPTIMIZERS.get(cfg.name)(cfg)
