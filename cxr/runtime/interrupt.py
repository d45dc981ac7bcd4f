"""Ctrl-C that is never lost.

Python's SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be. When that is
inside a C extension that clears the error, the interrupt vanishes: Keras' JAX fit loop turns each batch's
logs into NumPy (`np.array(jax_array)`) after every batch, and an interrupt landing there was dropped
about one time in three, so training went on to its last epoch and the command exited 0. The handler
installed here also remembers the interrupt, and a callback raises it again at the next batch boundary;
a run checks once more before it ends FINISHED, and a command before it exits 0.
"""

from __future__ import annotations

import signal
import threading

_pending = False


def _on_sigint(signum, frame) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGINT here, unless someone else (a user's own handler, an ignoring parent) already does."""
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _on_sigint)


def raise_pending() -> None:
    """Raise the KeyboardInterrupt that a C extension swallowed, once."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


def callback():
    """A Keras callback that re-raises a swallowed Ctrl-C after each training, validation or prediction
    batch (a few microseconds: one global read)."""
    import keras  # heavy: every command installs the handler at start-up, only a fit or predict needs this

    class RaisePendingInterrupt(keras.callbacks.Callback):
        # reads one global: safe on Keras's batch-end worker thread, whose exception Keras raises in
        # the main thread at the next batch; so it leaves asynchronous prediction on
        async_safe = True

        def on_train_batch_end(self, batch, logs=None):
            raise_pending()

        def on_test_batch_end(self, batch, logs=None):
            raise_pending()

        def on_predict_batch_end(self, batch, logs=None):
            raise_pending()

    return RaisePendingInterrupt()
