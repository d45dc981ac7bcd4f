"""Old module names that logged models still refer to, resolved to their new homes.

A model logged before cxr's departments (issue 19) stores code that runs `from cxr.pyfunc import
CxrModel` when it loads (MLflow's models from code), and older ones a pickle that names
`cxr.pyfunc.CxrModel`. Those names are kept importable here, without files at the top of `cxr/`, so
every model and run logged before the move still loads, evaluates, ensembles and serves.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

MOVED = {"cxr.pyfunc": "cxr.serving.pyfunc", "cxr.pyfunc_code": "cxr.serving.pyfunc_code"}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old name as the module now at its new home (the same module object, not a copy)."""

    def find_spec(self, fullname: str, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module at the new home ran when it was imported."""


def install() -> None:
    """Idempotent; `import cxr` calls it, so any `cxr.<old name>` import finds it."""
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
