"""Loss registry: the 2025 study's loss family plus class-balanced BCE and ASL.

Each loss is a serializable Keras Loss (saved models load in safe mode). Builders receive the
training labels, the only labels a loss may learn weights from; validation and test never reach here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import ops

from cxr.runtime.builders import Builders
from cxr.runtime.errors import CxrError

if TYPE_CHECKING:  # types only: config sits above training
    from cxr.config import (
        AslConfig,
        BceConfig,
        ClassBalancedBceConfig,
        DynamicBceConfig,
        LossConfig,
        MovingAverageBceConfig,
        WeightedBceConfig,
    )

LOSSES: Builders = Builders("loss")


def _clipped(y_true, y_pred, epsilon: float):
    """Labels and clipped probabilities in float32, whatever the model's precision (trainer.precision)."""
    return ops.cast(y_true, "float32"), ops.clip(ops.cast(y_pred, "float32"), epsilon, 1.0 - epsilon)


def ratio_weights(ratio, smoothing_factor: float, epsilon: float):
    """w+ = 1/(r'+eps), w- = 1/(1-r'+eps) with r' = r(1-a) + 0.5a: rarer positives weigh more."""
    ratio = ratio * (1.0 - smoothing_factor) + 0.5 * smoothing_factor
    return 1.0 / (ratio + epsilon), 1.0 / (1.0 - ratio + epsilon)


def weighted_log_likelihood(y, p, w_pos, w_neg):
    return y * w_pos * ops.log(p) + (1.0 - y) * w_neg * ops.log(1.0 - p)


@keras.saving.register_keras_serializable(package="cxr")
class DynamicWeightedBCE(keras.losses.Loss):
    """The study's DynamicWeightedBCE_wgt_smooth: class weights from each batch's positive ratio.

    The ratio is pulled toward 0.5 so that a batch without positives of a class gives a finite weight;
    smoothing_factor=0 is the study's unsmoothed variant.
    """

    def __init__(self, smoothing_factor: float = 0.1, epsilon: float = 1e-7, name: str = "dynamic_bce", **kw):
        super().__init__(name=name, **kw)
        self.smoothing_factor = float(smoothing_factor)
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        y, p = _clipped(y_true, y_pred, self.epsilon)
        w_pos, w_neg = ratio_weights(ops.mean(y, axis=0), self.smoothing_factor, self.epsilon)
        return -ops.mean(weighted_log_likelihood(y, p, w_pos, w_neg), axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "smoothing_factor": self.smoothing_factor, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="cxr")
class MovingAverageWeightedBCE(keras.losses.Loss):
    """Dynamic weights from an exponential moving average of the batches' positive ratios.

    The average moves only while `updating` is 1: the callback from `training_callback()` sets it
    during training batches and clears it for validation, so evaluation never changes the weights.
    """

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.9,
        smoothing_factor: float = 0.0,
        epsilon: float = 1e-7,
        name: str = "moving_average_bce",
        **kw,
    ):
        super().__init__(name=name, **kw)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.num_classes = int(num_classes)
        self.momentum = float(momentum)
        self.smoothing_factor = float(smoothing_factor)
        self.epsilon = float(epsilon)
        self.ratio = keras.Variable(np.full(self.num_classes, 0.5, np.float32), trainable=False, name="ratio")
        self.seen = keras.Variable(0.0, trainable=False, name="seen")  # 0 until the first training batch
        self.updating = keras.Variable(0.0, trainable=False, name="updating")

    def call(self, y_true, y_pred):
        y, p = _clipped(y_true, y_pred, self.epsilon)
        batch = ops.mean(y, axis=0)
        # .value: JAX no longer converts a Keras Variable inside jnp functions
        previous, seen, updating = self.ratio.value, self.seen.value, self.updating.value
        moved = ops.where(seen > 0, self.momentum * previous + (1.0 - self.momentum) * batch, batch)
        ratio = ops.where(updating > 0, moved, previous)
        self.ratio.assign(ratio)
        self.seen.assign(ops.maximum(seen, updating))
        w_pos, w_neg = ratio_weights(ratio, self.smoothing_factor, self.epsilon)
        return -ops.mean(weighted_log_likelihood(y, p, w_pos, w_neg), axis=-1)

    def training_callback(self) -> keras.callbacks.Callback:
        loss = self

        class UpdateOnlyWhileTraining(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                loss.updating.assign(1.0)

            def on_train_batch_end(self, batch, logs=None):
                loss.updating.assign(0.0)

        return UpdateOnlyWhileTraining()

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "momentum": self.momentum,
            "smoothing_factor": self.smoothing_factor,
            "epsilon": self.epsilon,
        }


@keras.saving.register_keras_serializable(package="cxr")
class WeightedBCE(keras.losses.Loss):
    """BCE with fixed per-class weights for positives and negatives, optionally focal (gamma > 0).

    loss = -mean_c( w+ y (1-p)^g log p + w- (1-y) p^g log(1-p) ).
    """

    def __init__(
        self,
        pos_weight: list[float],
        neg_weight: list[float],
        gamma: float = 0.0,
        epsilon: float = 1e-7,
        name: str = "weighted_bce",
        **kw,
    ):
        super().__init__(name=name, **kw)
        self.pos_weight = [float(w) for w in pos_weight]
        self.neg_weight = [float(w) for w in neg_weight]
        self.gamma = float(gamma)
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        y, p = _clipped(y_true, y_pred, self.epsilon)
        w_pos = ops.convert_to_tensor(np.asarray(self.pos_weight, np.float32)) * (1.0 - p) ** self.gamma
        w_neg = ops.convert_to_tensor(np.asarray(self.neg_weight, np.float32)) * p**self.gamma
        return -ops.mean(weighted_log_likelihood(y, p, w_pos, w_neg), axis=-1)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "pos_weight": self.pos_weight,
            "neg_weight": self.neg_weight,
            "gamma": self.gamma,
            "epsilon": self.epsilon,
        }


@keras.saving.register_keras_serializable(package="cxr")
class AsymmetricLoss(keras.losses.Loss):
    """ASL (Ridnik et al., 2021): focusing gamma_pos/gamma_neg, negatives' probability shifted by `clip`.

    loss = -mean_c( y (1-p)^g+ log p + (1-y) q^g- log(1-q) ), q = max(p - clip, 0).
    """

    def __init__(
        self,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        epsilon: float = 1e-7,
        name: str = "asl",
        **kw,
    ):
        super().__init__(name=name, **kw)
        self.gamma_pos, self.gamma_neg = float(gamma_pos), float(gamma_neg)
        self.clip, self.epsilon = float(clip), float(epsilon)

    def call(self, y_true, y_pred):
        y, p = _clipped(y_true, y_pred, self.epsilon)
        q = ops.maximum(p - self.clip, 0.0)
        positive = y * (1.0 - p) ** self.gamma_pos * ops.log(p)
        negative = (1.0 - y) * q**self.gamma_neg * ops.log(ops.maximum(1.0 - q, self.epsilon))
        return -ops.mean(positive + negative, axis=-1)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "gamma_pos": self.gamma_pos,
            "gamma_neg": self.gamma_neg,
            "clip": self.clip,
            "epsilon": self.epsilon,
        }


# ------------------------------------------------------------------ weights from the training labels
def training_prevalence(train_labels: np.ndarray | None) -> np.ndarray:
    """Per-class positive share, Laplace-smoothed ((n+1)/(N+2)) so a class absent from train stays finite."""
    if train_labels is None or len(train_labels) == 0:
        raise CxrError("this loss takes its weights from the training labels, and none were given")
    labels = np.asarray(train_labels, np.float64)
    return (labels.sum(axis=0) + 1.0) / (len(labels) + 2.0)


def prevalence_weights(prevalence: np.ndarray, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """w+ = 1/pi, w- = 1/(1-pi); normalised to w+ + w- = 1, that is w+ = 1-pi, w- = pi."""
    w_pos, w_neg = 1.0 / prevalence, 1.0 / (1.0 - prevalence)
    if normalize:
        total = w_pos + w_neg
        w_pos, w_neg = w_pos / total, w_neg / total
    return w_pos, w_neg


def class_balanced_weights(train_labels: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Cui et al. (2019): weight 1/E(n), E(n) = (1-beta^n)/(1-beta), scaled so w+ + w- = 2 per class."""
    if not 0.0 <= beta < 1.0:
        raise CxrError(f"loss.beta must be in [0, 1), got {beta}")
    labels = np.asarray(train_labels, np.float64)
    n_pos = np.maximum(labels.sum(axis=0), 1.0)
    n_neg = np.maximum(len(labels) - labels.sum(axis=0), 1.0)
    inv_pos, inv_neg = (1.0 - beta) / (1.0 - beta**n_pos), (1.0 - beta) / (1.0 - beta**n_neg)
    scale = 2.0 / (inv_pos + inv_neg)
    return inv_pos * scale, inv_neg * scale


# ------------------------------------------------------------------ registry
@LOSSES.register("bce")
def _bce(cfg: BceConfig, train_labels: np.ndarray | None) -> keras.losses.Loss:
    return keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing, name="bce")


@LOSSES.register("dynamic_bce")
@LOSSES.register("dynamic_bce_unsmoothed")
def _dynamic_bce(cfg: DynamicBceConfig, train_labels: np.ndarray | None) -> keras.losses.Loss:
    return DynamicWeightedBCE(cfg.smoothing_factor, cfg.epsilon, name=cfg.name)


@LOSSES.register("moving_average_bce")
def _moving_average_bce(cfg: MovingAverageBceConfig, train_labels: np.ndarray | None) -> keras.losses.Loss:
    num_classes = np.shape(train_labels)[1]
    return MovingAverageWeightedBCE(num_classes, cfg.momentum, cfg.smoothing_factor, cfg.epsilon)


@LOSSES.register("weighted_bce")
@LOSSES.register("normalized_weighted_bce")
@LOSSES.register("focal_weighted_bce")
def _weighted_bce(cfg: WeightedBceConfig, train_labels: np.ndarray | None) -> keras.losses.Loss:
    w_pos, w_neg = prevalence_weights(training_prevalence(train_labels), cfg.normalize)
    return WeightedBCE(w_pos.tolist(), w_neg.tolist(), cfg.gamma, cfg.epsilon, name=cfg.name)


@LOSSES.register("class_balanced_bce")
def _class_balanced_bce(cfg: ClassBalancedBceConfig, train_labels: np.ndarray | None) -> keras.losses.Loss:
    training_prevalence(train_labels)  # same check: the weights need training labels
    w_pos, w_neg = class_balanced_weights(train_labels, cfg.beta)
    return WeightedBCE(w_pos.tolist(), w_neg.tolist(), cfg.gamma, cfg.epsilon, name=cfg.name)


@LOSSES.register("asl")
def _asl(cfg: AslConfig, train_labels: np.ndarray | None) -> keras.losses.Loss:
    return AsymmetricLoss(cfg.gamma_pos, cfg.gamma_neg, cfg.clip, cfg.epsilon)


def build_loss(cfg: LossConfig, train_labels: np.ndarray | None = None) -> keras.losses.Loss:
    """The loss `cfg` picks; `LossConfig`, the base of every loss schema: the option may be any of them,
    or a user's `schema_custom` option (`_target_`), which has no dataclass."""
    return LOSSES.for_option(cfg)(cfg, train_labels)


def loss_callbacks(loss: keras.losses.Loss) -> list[keras.callbacks.Callback]:
    """Callbacks a stateful loss needs during fit (none for the stateless ones)."""
    hook = getattr(loss, "training_callback", None)
    return [hook()] if hook else []
