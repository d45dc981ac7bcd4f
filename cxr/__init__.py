"""cxr: train, tune and compare chest X-ray classifiers on NIH ChestX-ray14."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) drowns the progress output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
