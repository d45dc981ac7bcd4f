"""What loading a cxr model may run: only code the installed cxr vouches for.

Whoever can write to the artifact store must not be able to run code on every machine that predicts
or serves. So a model is read as data (`cxr_model.json`, Keras files in safe mode) by the installed
cxr (`cxr.serving.loader`, named in the model's MLmodel file); the Python modules a model names in its
`imports` (a user's own layers, a `_target_` option) are imported only when the operator trusts them;
and a model logged before the loader module, whose MLflow flavour runs a code file stored among its
artifacts, is loaded by cxr only if that file is byte for byte one that cxr wrote (`check_code_file`).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from cxr.runtime.errors import CxrError

TRUSTED_IMPORTS_ENV = "CXR_TRUSTED_IMPORTS"  # comma-separated modules (or packages) a model may import

# The code file cxr stored with every model from 2026-11 (c150333) until the loader module: its text
# before the departments (`from cxr.pyfunc import CxrModel`) and after (cxr/serving/pyfunc_code.py,
# which is kept unchanged so that its hash stays the one those models hold).
PRE_MOVE_CODE_SHA256 = "e6b32a3b56557db3031d55dcfff0457194cd63f293adf6cf3991fab8bccf3771"
CODE_FILE = Path(__file__).with_name("pyfunc_code.py")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vouched_code() -> set[str]:
    return {PRE_MOVE_CODE_SHA256, sha256(CODE_FILE)}


def check_code_file(path: Path, where: str) -> None:
    """A model's stored code file must be one cxr wrote; else loading it would run someone's code."""
    if sha256(path) not in vouched_code():
        raise CxrError(
            f"{where}: its code file {path.name} is not one cxr wrote (it was changed after logging), so "
            "cxr will not load it: log the model again from its run's members, or inspect the file"
        )


def trusted_from_environment() -> list[str]:
    return [m.strip() for m in os.environ.get(TRUSTED_IMPORTS_ENV, "").split(",") if m.strip()]


def _allowed(module: str, trusted: Iterable[str]) -> bool:
    """Already imported (by code that was trusted to run), or named by the operator, itself or a package
    above it."""
    return module in sys.modules or any(module == t or module.startswith(f"{t}.") for t in trusted)


def import_trusted(modules: Sequence[str], trusted: Iterable[str], where: str) -> None:
    """Import the user modules a model names, if each is trusted; one CxrError naming those that are not."""
    trusted = [*trusted, *trusted_from_environment()]
    refused = [m for m in modules if not _allowed(m, trusted)]
    if refused:
        raise CxrError(
            f"{where} imports Python code when it loads ({', '.join(refused)}), which cxr runs only when "
            f"trusted: add it to tracking.trusted_imports (cxr commands) or to {TRUSTED_IMPORTS_ENV} "
            "(comma-separated, where the model is served) if you trust whoever wrote it"
        )
    for module in modules:
        importlib.import_module(module)
