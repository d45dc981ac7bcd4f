"""Fitting a model: `fit`, the losses, optimizers, callbacks and per-epoch Keras metrics, and what a run
asks of the Keras backend (precision, compilation, determinism, devices).

It imports `cxr.models`, `cxr.tracking` (the per-epoch logger, metric names), `cxr.data` and
`cxr.runtime`; it is written in `keras.ops`, so it runs on every backend.
"""
