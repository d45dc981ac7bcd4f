"""Loss registry. Each loss is a serializable Keras Loss, so saved models load in safe mode."""

from __future__ import annotations

import keras
from keras import ops

from cxr.registry import Registry

LOSSES: Registry = Registry("loss")


@keras.saving.register_keras_serializable(package="cxr")
class DynamicWeightedBCE(keras.losses.Loss):
    """The 2025 study's weighted BCE whose class weights come from each batch's positive ratio.

    Per class, r = mean(y) over the batch is pulled toward 0.5 (r' = r(1-a) + 0.5a) so that a batch
    without positives does not produce an infinite weight; w+ = 1/(r'+eps), w- = 1/(1-r'+eps).
    """

    def __init__(
        self, smoothing_factor: float = 0.1, epsilon: float = 1e-7, name: str = "dynamic_bce", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self.smoothing_factor = float(smoothing_factor)
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        ratio = ops.mean(y_true, axis=0)
        ratio = ratio * (1.0 - self.smoothing_factor) + 0.5 * self.smoothing_factor
        w_pos = 1.0 / (ratio + self.epsilon)
        w_neg = 1.0 / (1.0 - ratio + self.epsilon)
        p = ops.clip(y_pred, self.epsilon, 1.0 - self.epsilon)
        terms = y_true * w_pos * ops.log(p) + (1.0 - y_true) * w_neg * ops.log(1.0 - p)
        return -ops.mean(terms, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "smoothing_factor": self.smoothing_factor, "epsilon": self.epsilon}


@LOSSES.register("bce")
def _bce(cfg) -> keras.losses.Loss:
    return keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing, name="bce")


@LOSSES.register("dynamic_bce")
def _dynamic_bce(cfg) -> keras.losses.Loss:
    return DynamicWeightedBCE(smoothing_factor=cfg.smoothing_factor, epsilon=cfg.epsilon)


def build_loss(cfg) -> keras.losses.Loss:
    return LOSSES.get(cfg.name)(cfg)
