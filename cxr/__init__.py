"""cxr: train, tune and compare chest X-ray classifiers on NIH ChestX-ray14."""

import os

from cxr import _quiet

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) drowns the progress output; set before
# TensorFlow is imported anywhere (every command, the sweeper plugin and the tests import cxr first).
_quiet.quiet_tensorflow(os.environ)
_quiet.quiet_optuna()
_quiet.quiet_mlflow(os.environ)

__version__ = "0.1.0"
