"""Silence start-up and library noise: TensorFlow's on machines without a GPU (before TensorFlow is
imported), Optuna's experimental-feature warnings, and MLflow's artifact-download progress bars.

`TF_CPP_MIN_LOG_LEVEL` hides TensorFlow's C++ log lines once its logging is set up (`3` on a CPU
machine, where its errors are the GPU probing: `failed call to cuInit`); the lines it writes while
loading (oneDNN notes, "Could not find cuda drivers", "All log messages before absl::InitializeLog()")
come before that and ignore it, so on a CPU machine `import tensorflow` runs with file descriptor 2
pointed at /dev/null. A Python error while importing still raises as usual. Setting
`TF_CPP_MIN_LOG_LEVEL` yourself turns all of this off.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator, MutableMapping
from pathlib import Path


def has_gpu() -> bool:
    """An NVIDIA device node exists (a GPU machine, where TensorFlow's messages may matter)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """File descriptor 2 (where C++ libraries write) to /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Imports one top-level package with stderr silenced, then steps aside."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, name, path=None, target=None):
        if name != self.package:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            with stderr_silenced():
                run(module)

        spec.loader.exec_module = exec_module  # this spec's loader instance only
        return spec


MARK = "CXR_QUIET_TENSORFLOW"  # set beside TF_CPP_MIN_LOG_LEVEL, so child processes quiet theirs too


def quiet_tensorflow(environ: MutableMapping[str, str]) -> None:
    if "TF_CPP_MIN_LOG_LEVEL" in environ and MARK not in environ:
        return  # the user's own setting
    gpu = has_gpu()
    environ["TF_CPP_MIN_LOG_LEVEL"], environ[MARK] = ("2" if gpu else "3"), "1"
    if not gpu and "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


# The Optuna features a sweep relies on (heartbeats and their retry callback, stale-trial failing,
# named objectives) are marked experimental, and each use warns on stderr: noise on every sweep that
# the user can do nothing about. Filtered by message, so optuna is not imported for it; installed from
# cxr/__init__.py, since filters set while Hydra scans its plugins (which imports cxr.sweep) are undone.
OPTUNA_NOISE = (
    r".* is experimental \(supported from v",
    r"Argument ``heartbeat_interval`` is an experimental feature",
    r"Heartbeat of storage is supposed to be used with Study.optimize",  # cxr's own loop beats
)


def quiet_optuna() -> None:
    for message in OPTUNA_NOISE:
        warnings.filterwarnings("ignore", message=message)


def quiet_mlflow(environ: MutableMapping[str, str]) -> None:
    """No "Downloading artifacts: 100%|####|" bars each time a model or run config is loaded: they fill
    the console and log files with carriage returns (setting the variable yourself keeps yours). No
    colour-coded advice to log an input example with every model: cxr's models take PNG/JPEG files
    as base64 strings, and their signature says so."""
    environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", message=r"(\x1b\[[0-9;]*m)?An input example was not provided")
