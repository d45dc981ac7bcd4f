"""Each member's inference is traced once, whatever the batch lengths, so an ensemble, a server and
cxr.predict never log TensorFlow's "triggered tf.function retracing" warning."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from cxr.data.images import resize
from cxr.serving.forward import forward
from cxr.serving.pyfunc import CxrModel, ModelSpec
from tests.test_pyfunc import NAMES, tiny


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's tracing")
def test_five_members_scoring_batches_of_every_length_are_traced_once_each(caplog):
    members = [tiny(32, seed) for seed in range(5)]
    spec = ModelSpec(NAMES, dict.fromkeys(NAMES, 0.5), [32] * 5, [0.2] * 5)
    model = CxrModel.of(members, spec)
    pictures = [np.full((40, 40), i, np.uint8) for i in range(7)]
    with caplog.at_level(logging.WARNING):
        for count in (1, 3, 7, 2, 5, 1):  # requests of several lengths; batches of 3 leave short ones
            scores = model.probabilities(pictures[:count], batch_size=3)
            assert scores.shape == (count, len(NAMES))
    assert [forward(m).traces for m in members] == [1] * 5
    assert "retracing" not in caplog.text
    batch = np.stack([resize(p, 32) for p in pictures])[..., None]
    expected = np.mean([m.predict(batch, verbose=0) for m in members], axis=0)  # Keras's own predict
    np.testing.assert_allclose(model.probabilities(pictures, batch_size=3), expected, rtol=1e-5, atol=1e-6)
