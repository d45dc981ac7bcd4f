"""cxr: train, tune and compare chest X-ray classifiers on NIH ChestX-ray14.

The top level holds the commands (`python -m cxr.train|evaluate|prepare|ensemble|promote|predict`) and
the typed config (`cxr.config`); everything else lives in departments that import downward only:
sweep, evaluation, serving, training, models and tracking, data, runtime (docs/architecture.md).
"""

import os

from cxr.runtime import moved
from cxr.runtime import quiet as _quiet

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) drowns the progress output; set before
# TensorFlow is imported anywhere (every command, the sweeper plugin and the tests import cxr first).
_quiet.quiet_tensorflow(os.environ)
_quiet.quiet_optuna()
_quiet.quiet_mlflow(os.environ)
moved.install()  # `cxr.pyfunc`, named by models logged before the departments, still imports

__version__ = "0.1.0"
