"""How cxr's processes behave, whatever they compute: one error type and how commands end, Ctrl-C that
is never lost, file locks, heartbeat threads, URL passwords masked, the console, Hydra's record,
quiet start-up, the `Builders` table behind every registry, and old module names kept importable.

The bottom layer: it imports no other part of cxr, and no MLflow, Optuna or Keras.
"""
