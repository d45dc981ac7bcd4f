"""A Keras model's inference on a batch of any length, compiled once per model.

Keras's `predict`/`predict_on_batch` on TensorFlow trace a new graph for each new batch shape (a
request's rows, a split's short last batch), and TensorFlow counts the traces of every model's
predict step together (they share one Python function): an ensemble, a server answering requests of
several lengths, or `cxr.predict` after an evaluation, trace again and again and log "triggered
tf.function retracing". Here each model gets one `tf.function` with a fixed input signature whose
batch dimension is open, so it is traced exactly once, whatever the batch lengths; it wraps a
callable object, not a function, so TensorFlow counts each model's traces on their own. Other
backends use Keras's `predict_on_batch` (JAX compiles per shape without complaint).

`forward_views` is the one place test-time augmentation is averaged (`cxr.data.tta`): evaluation,
`cxr.predict` and serving all score a batch through it.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np

from cxr.data.tta import Views


class _Call:
    """`model(batch)` for inference: an object, so each tf.function keys its trace count on it."""

    def __init__(self, model: keras.Model):
        self.model = model

    def __call__(self, batch):
        return self.model(batch, training=False)


class Forward:
    """`forward(batch) -> np.ndarray` of the model's outputs; `traces`: how often TensorFlow traced it."""

    def __init__(self, model: keras.Model):
        self.model = model
        self._function = None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            signature = tf.TensorSpec((None, *model.inputs[0].shape[1:]), model.inputs[0].dtype)
            self._function = tf.function(_Call(model), input_signature=[signature], reduce_retracing=False)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self._function is None:
            return np.asarray(self.model.predict_on_batch(batch))
        return self._function(np.asarray(batch, dtype=self.model.inputs[0].dtype)).numpy()

    @property
    def traces(self) -> int | None:
        return None if self._function is None else self._function.experimental_get_tracing_count()


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward(model: keras.Model) -> Forward:
    """The model's one compiled inference (made on first use, kept as long as the model lives)."""
    if model not in _COMPILED:
        _COMPILED[model] = Forward(model)
    return _COMPILED[model]


def forward_views(model: keras.Model, batch: np.ndarray, views: Views) -> np.ndarray:
    """The model's probabilities for a batch, averaged over each image's test-time views (the mean of
    probabilities, before any calibrator: one is fitted on, and applied to, these means). Views off: the
    batch's own outputs, exactly as `forward`."""
    compiled = forward(model)
    if not views.enabled:
        return compiled(batch)
    return np.mean([compiled(view) for view in views.apply(batch)], axis=0, dtype=np.float64).astype(
        np.float32
    )
