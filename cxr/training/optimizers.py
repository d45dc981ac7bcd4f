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
SCHEDULES: Builders = Builders("learning-rate schedule")


def _ema(cfg: OptimizerConfig) -> dict:
    """An exponential moving average of the weights, swapped in when `fit` ends: on a few hundred
    images the last step's weights wander with each batch, and their average is the steadier model."""
    return {"use_ema": True, "ema_momentum": cfg.ema} if cfg.ema else {}


@OPTIMIZERS.register("adamw")
def _adamw(cfg: OptimizerConfig, learning_rate) -> keras.optimizers.Optimizer:
    import keras  # heavy: only when built (cxr.config imports the registry at start-up)

    return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=cfg.weight_decay, **_ema(cfg))


@OPTIMIZERS.register("adam")
def _adam(cfg: OptimizerConfig, learning_rate) -> keras.optimizers.Optimizer:
    import keras  # heavy: only when built (cxr.config imports the registry at start-up)

    return keras.optimizers.Adam(learning_rate=learning_rate, **_ema(cfg))


@OPTIMIZERS.register("sgd")
def _sgd(cfg: OptimizerConfig, learning_rate) -> keras.optimizers.Optimizer:
    import keras  # heavy: only when built (cxr.config imports the registry at start-up)

    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True, **_ema(cfg))


@SCHEDULES.register("constant")
def _constant(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int) -> float:
    return cfg.learning_rate


@SCHEDULES.register("cosine")
def _cosine(
    cfg: OptimizerConfig, steps_per_epoch: int, epochs: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from a tenth of the rate over `warmup_epochs`, then cosine decay to zero at the
    last epoch: on a few hundred images the first large steps of Adam otherwise scatter the random
    initial weights, and the decay lets the last epochs settle instead of stopping mid-stride."""
    import keras  # heavy: only when built

    warmup = cfg.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate * (0.1 if warmup else 1.0),
        decay_steps=max(1, (epochs - cfg.warmup_epochs) * steps_per_epoch),
        warmup_target=cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def build_optimizer(
    cfg: OptimizerConfig, steps_per_epoch: int = 1, epochs: int = 1
) -> keras.optimizers.Optimizer:
    """The configured `keras.optimizers.Optimizer`, its learning rate following `cfg.schedule` over
    `epochs` of `steps_per_epoch` batches."""
    learning_rate = SCHEDULES.get(cfg.schedule)(cfg, steps_per_epoch, epochs)
    return OPTIMIZERS.get(cfg.name)(cfg, learning_rate)
