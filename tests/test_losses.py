"""Losses against NumPy references on hand-made batches, including degenerate ones."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from cxr.losses import LOSSES, DynamicWeightedBCE, build_loss


def dynamic_bce_reference(y, p, a=0.1, eps=1e-7):
    r = y.mean(axis=0) * (1 - a) + 0.5 * a
    wp, wn = 1 / (r + eps), 1 / (1 - r + eps)
    p = np.clip(p, eps, 1 - eps)
    return -np.mean(y * wp * np.log(p) + (1 - y) * wn * np.log(1 - p))


BATCHES = {
    "mixed": (np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 1]], np.float32), 0),
    "no_positive_in_a_class": (np.array([[0, 1, 1], [0, 0, 1], [0, 1, 1]], np.float32), 1),
    "all_zero": (np.zeros((4, 3), np.float32), 2),
}


@pytest.mark.parametrize("name", BATCHES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_dynamic_bce_matches_reference(name, smoothing):
    y, seed = BATCHES[name]
    p = np.random.default_rng(seed).uniform(0.01, 0.99, y.shape).astype(np.float32)
    loss = DynamicWeightedBCE(smoothing_factor=smoothing)
    assert float(loss(y, p)) == pytest.approx(dynamic_bce_reference(y, p, smoothing), rel=1e-5)


@pytest.mark.parametrize("name", BATCHES)
def test_dynamic_bce_finite_loss_and_gradients_on_degenerate_batches(name):
    y, _ = BATCHES[name]
    p = tf.Variable(np.full(y.shape, 0.5, np.float32))
    with tf.GradientTape() as tape:
        value = DynamicWeightedBCE(smoothing_factor=0.1)(y, p)
    grad = tape.gradient(value, p)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad.numpy()))


def test_registry_builds_each_configured_loss():
    assert {"bce", "dynamic_bce"} <= set(LOSSES)
    loss = build_loss(OmegaConf.create({"name": "dynamic_bce", "smoothing_factor": 0.3, "epsilon": 1e-7}))
    assert isinstance(loss, DynamicWeightedBCE) and loss.smoothing_factor == 0.3
    restored = DynamicWeightedBCE.from_config(loss.get_config())
    assert restored.smoothing_factor == 0.3
