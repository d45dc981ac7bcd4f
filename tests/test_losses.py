"""Every loss against a NumPy reference on hand-made batches, including degenerate ones."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from cxr.config import SCHEMAS
from cxr.runtime.errors import CxrError
from cxr.training.losses import (
    LOSSES,
    DynamicWeightedBCE,
    MovingAverageWeightedBCE,
    build_loss,
    class_balanced_weights,
    loss_callbacks,
    training_prevalence,
)

from .conftest import CONF

EPS = 1e-7

pytestmark = pytest.mark.backend  # losses are backend ops: CI runs them again on JAX

# Training labels the fixed-weight losses learn from: per class 2/8, 4/8 and 0/8 positives.
TRAIN = np.array(
    [[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 1, 0]], float
)

BATCHES = {
    "mixed": np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 1]], np.float32),  # class 2: no negative
    "no_positive_in_a_class": np.array([[0, 1, 1], [0, 0, 1], [0, 1, 1]], np.float32),
    "all_zero": np.zeros((4, 3), np.float32),
    "all_one": np.ones((2, 3), np.float32),
}


def scores(y: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.01, 0.99, y.shape).astype(np.float32)


def weighted_reference(y, p, w_pos, w_neg, gamma=0.0):
    p = np.clip(p, EPS, 1 - EPS)
    terms = y * w_pos * (1 - p) ** gamma * np.log(p) + (1 - y) * w_neg * p**gamma * np.log(1 - p)
    return -terms.mean()


def dynamic_reference(y, p, a):
    r = y.mean(axis=0) * (1 - a) + 0.5 * a
    return weighted_reference(y, p, 1 / (r + EPS), 1 / (1 - r + EPS))


def prevalence():
    return (TRAIN.sum(0) + 1) / (len(TRAIN) + 2)


def cb_weights(beta):
    n_pos = np.maximum(TRAIN.sum(0), 1)
    n_neg = np.maximum(len(TRAIN) - TRAIN.sum(0), 1)
    ip, ineg = (1 - beta) / (1 - beta**n_pos), (1 - beta) / (1 - beta**n_neg)
    return 2 * ip / (ip + ineg), 2 * ineg / (ip + ineg)


def asl_reference(y, p, gp, gn, clip):
    p = np.clip(p, EPS, 1 - EPS)
    q = np.maximum(p - clip, 0)
    terms = y * (1 - p) ** gp * np.log(p) + (1 - y) * q**gn * np.log(np.maximum(1 - q, EPS))
    return -terms.mean()


def reference(name: str, y, p) -> float:
    pi = prevalence()
    refs = {
        "bce": lambda: weighted_reference(y, p, 1.0, 1.0),
        "dynamic_bce": lambda: dynamic_reference(y, p, 0.1),
        "dynamic_bce_unsmoothed": lambda: dynamic_reference(y, p, 0.0),
        # first batch of a fresh moving average: the ratio is the batch's own
        "moving_average_bce": lambda: dynamic_reference(y, p, 0.0),
        "weighted_bce": lambda: weighted_reference(y, p, 1 / pi, 1 / (1 - pi)),
        "normalized_weighted_bce": lambda: weighted_reference(y, p, 1 - pi, pi),
        "focal_weighted_bce": lambda: weighted_reference(y, p, 1 / pi, 1 / (1 - pi), gamma=2.0),
        "class_balanced_bce": lambda: weighted_reference(y, p, *cb_weights(0.999)),
        "asl": lambda: asl_reference(y, p, 0.0, 4.0, 0.05),
    }
    return refs[name]()


def loss_cfg(name: str):
    """The shipped conf/loss/<name>.yaml, validated against its schema."""
    raw = OmegaConf.load(CONF / "loss" / f"{name}.yaml")
    schema = SCHEMAS[("loss", raw.defaults[0])]
    return OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in raw.items() if k != "defaults"})


def make(name: str) -> keras.losses.Loss:
    loss = build_loss(loss_cfg(name), TRAIN)
    if isinstance(loss, MovingAverageWeightedBCE):
        loss.updating.assign(1.0)  # as during a training batch
    return loss


LOSS_NAMES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))


def test_every_loss_option_is_registered_and_every_registered_loss_has_an_option():
    assert set(LOSS_NAMES) == set(LOSSES)
    assert len(LOSS_NAMES) >= 9


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_matches_numpy_reference(name, batch):
    y = BATCHES[batch]
    p = scores(y)
    assert float(make(name)(y, p)) == pytest.approx(reference(name, y, p), rel=1e-5)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_and_gradients_are_finite_on_degenerate_batches(name, batch):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradients taken with tf.GradientTape; other backends train end to end in test_train.py")
    y = BATCHES[batch]
    for start in (0.5, 0.0, 1.0):  # also saturated predictions
        import tensorflow as tf

        p = tf.Variable(np.full(y.shape, start, np.float32))
        with tf.GradientTape() as tape:
            value = make(name)(y, p)
        grad = tape.gradient(value, p)
        assert np.isfinite(float(value)), (name, batch, start)
        assert grad is None or np.all(np.isfinite(grad.numpy())), (name, batch, start)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_dynamic_bce_smoothing_factor(smoothing):
    y = BATCHES["no_positive_in_a_class"]
    p = scores(y, 3)
    assert float(DynamicWeightedBCE(smoothing)(y, p)) == pytest.approx(
        dynamic_reference(y, p, smoothing), rel=1e-5
    )


def test_fixed_weights_come_from_training_labels_laplace_smoothed():
    np.testing.assert_allclose(training_prevalence(TRAIN), [3 / 10, 5 / 10, 1 / 10])
    w_pos, w_neg = class_balanced_weights(TRAIN, 0.999)
    np.testing.assert_allclose(w_pos + w_neg, 2.0)
    assert w_pos[0] > w_neg[0]  # the rarer side weighs more
    for name in ("weighted_bce", "class_balanced_bce"):
        with pytest.raises(CxrError, match="training labels"):
            build_loss(loss_cfg(name), None)


def test_moving_average_moves_in_training_batches_and_never_in_evaluation():
    """Through real fit/evaluate/predict: validation and inference leave the running ratio alone."""
    if keras.backend.backend() == "jax":
        pytest.skip("JAX's train step drops a loss's own state; cxr.train refuses it (test_backends.py)")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = (rng.random((64, 3)) < [0.1, 0.5, 0.9]).astype(np.float32)
    loss = build_loss(loss_cfg("moving_average_bce"), y)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="sigmoid")])
    model.compile(optimizer="sgd", loss=loss)
    start = np.asarray(loss.ratio).copy()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=loss_callbacks(loss))
    trained = np.asarray(loss.ratio).copy()
    assert not np.allclose(trained, start)
    assert np.all(np.abs(trained - y.mean(0)) < 0.25)  # it tracks the positive ratio
    model.evaluate(x, 1 - y, verbose=0)  # validation on opposite labels would pull it hard
    model.predict(x, verbose=0)
    np.testing.assert_array_equal(np.asarray(loss.ratio), trained)
    # during fit, validation batches do not move it either
    model.fit(
        x, y, batch_size=64, epochs=1, verbose=0, callbacks=loss_callbacks(loss), validation_data=(x, 1 - y)
    )
    after_one_batch = 0.9 * trained + 0.1 * y.mean(0)
    np.testing.assert_allclose(np.asarray(loss.ratio), after_one_batch, rtol=1e-5)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_round_trips_through_its_config(name):
    loss = make(name)
    clone = type(loss).from_config(loss.get_config())
    y = BATCHES["mixed"]
    p = scores(y, 5)
    if isinstance(clone, MovingAverageWeightedBCE):
        clone.updating.assign(1.0)
    assert float(clone(y, p)) == pytest.approx(float(make(name)(y, p)), rel=1e-6)
