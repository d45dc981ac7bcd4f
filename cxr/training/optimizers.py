"""Optimizer registry for `trainer.optimizer.name`.

Keras is imported when an optimizer is built, not with the registry, so config validation can list
the names in a fraction of a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr.runtime.builders import Builders

if TYPE_CHECKING:
    import keras

    from cxr.config import OptimizerConfig  # a type only: config sits above training

OPTIMIZERS: Builders = Builders("optimizer")


@OPTIMIZERS.register("adamw")
def _adamw(cfg: OptimizerConfig) -> keras.optimizers.Optimizer:
    import keras  # heavy: only when built (cxr.config imports the registry at start-up)

    return keras.optimizers.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def _adam(cfg: OptimizerConfig) -> keras.optimizers.Optimizer:
    import keras  # heavy: only when built (cxr.config imports the registry at start-up)

    return keras.optimizers.Adam(learning_rate=cfg.learning_rate)


@OPTIMIZERS.register("sgd")
def _sgd(cfg: OptimizerConfig) -> keras.optimizers.Optimizer:
    import keras  # heavy: only when built (cxr.config imports the registry at start-up)

    return keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=0.9, nesterov=True)


def build_optimizer(cfg: OptimizerConfig) -> keras.optimizers.Optimizer:
    """The configured `keras.optimizers.Optimizer`."""
    return OPTIMIZERS.get(cfg.name)(cfg)
