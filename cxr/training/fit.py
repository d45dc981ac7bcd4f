"""Build, compile and fit the configured model on a prepared dataset's train split.

What every training shares, whatever logs it: the model from `cfg.model`, the loss from `cfg.loss`
(its weights from the training labels only), the optimizer, the per-epoch metrics and callbacks, and
the input pipeline at `trainer.batch_size`. A sweep trial passes its reporter (anything with
`callback()` and `monitor`), so each epoch reaches its Optuna trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from cxr.data.pipeline import CacheBatches
from cxr.data.prepared import PreparedData
from cxr.models import build_model
from cxr.runtime import interrupt
from cxr.runtime.console import fit_verbosity
from cxr.runtime.errors import CxrError
from cxr.tracking.runs import epoch_logger
from cxr.training import backend
from cxr.training.callbacks import build_callbacks, monitored
from cxr.training.losses import build_loss, loss_callbacks
from cxr.training.metrics import epoch_metrics
from cxr.training.optimizers import build_optimizer

if TYPE_CHECKING:
    from cxr.config import Config


def fit(cfg: Config, data: PreparedData, reporter: Any = None) -> tuple[keras.Model, keras.callbacks.History]:
    """Build, compile and fit the configured model on `data`'s train split; returns (model, history).

    trainer.distribution=data_parallel: on every local device, each taking trainer.batch_size images."""
    with backend.distribution(cfg.trainer.distribution) as replicas:
        model, history = _fit(cfg, data, reporter, replicas)
    return backend.local_model(model), history


def fail_on_nan_loss(history: keras.callbacks.History) -> None:
    losses = history.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise CxrError(
            f"the training loss became {losses[-1]} in epoch {len(losses)}; lower "
            "trainer.optimizer.learning_rate or check the loss settings"
        )


def _fit(cfg: Config, data: PreparedData, reporter: Any, replicas: int):
    t = cfg.trainer  # checked before any work (cxr.config.check_training)
    if t.deterministic:
        backend.enable_determinism()
    keras.utils.set_random_seed(cfg.seed)
    n_classes = len(data.pathologies)
    with backend.dtype_policy(t.precision):  # layers keep it; the sigmoid outputs are float32 in any case
        model = build_model(cfg.model, data.image_size, n_classes, augment=cfg.dataset.augment)
    loss = build_loss(cfg.loss, data.labels[data.rows["train"]])  # weights from training labels only
    backend.check_loss(loss)
    batch_size, multiple_of = t.batch_size * replicas, backend.batch_multiple(replicas)
    train_batches = CacheBatches(
        data.images,
        data.labels,
        data.rows["train"],
        batch_size=batch_size,
        training=True,
        seed=cfg.seed,
        multiple_of=multiple_of,
    )
    model.compile(
        optimizer=build_optimizer(t.optimizer, steps_per_epoch=len(train_batches), epochs=t.epochs),
        loss=loss,
        metrics=epoch_metrics(n_classes, cfg.evaluation.threshold),
        **backend.compile_options(t),  # mixed_float16: Keras wraps the optimizer in a LossScaleOptimizer
    )
    callbacks = [
        interrupt.callback(),
        *build_callbacks(cfg.callbacks, Path(cfg.output_dir)),
        *loss_callbacks(loss),
        keras.callbacks.TerminateOnNaN(),
        *([epoch_logger()] if backend.is_chief(t.distribution) else []),  # a worker has no run to log to
        *([reporter.callback()] if reporter is not None else []),
    ]
    print(f"cxr: {monitored(cfg.callbacks, reporter.monitor if reporter is not None else None)}", flush=True)
    history = model.fit(
        train_batches,
        # JAX data_parallel: the validation loss leaves out < replicas rows
        validation_data=CacheBatches(
            data.images, data.labels, data.rows["val"], batch_size=batch_size, multiple_of=multiple_of
        ),
        epochs=t.epochs,
        shuffle=False,  # the dataset shuffles rows each epoch; Keras would only reorder whole batches
        callbacks=callbacks,
        verbose=fit_verbosity(t.verbose),
    )
    return model, history
