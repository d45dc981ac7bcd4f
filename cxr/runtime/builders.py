"""Name -> builder tables (`Builders`), so configs pick models, losses and datasets without if-chains.

An option may instead name a builder in the user's own code with `_target_` (a dotted path, as in
Hydra's `instantiate`): `model: {name: my_net, _target_: my_pkg.nets.build_my_net, width: 8}`. The
builder has the registered builders' signature and reads its parameters from the option.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from cxr.runtime.errors import CxrError

if TYPE_CHECKING:  # a type only: bench/train_throughput imports the registries without OmegaConf
    from omegaconf import DictConfig

T = TypeVar("T", bound=Callable)


class Builders(Generic[T]):
    """The builders of one kind (models, losses, datasets, ...) by the name a config option gives."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise CxrError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def for_option(self, cfg: DictConfig) -> T:
        """The builder an option picks: its `_target_` if it has one, else the one registered by `name`.

        `cfg` is any group's option (a model, a loss, ...), hence `DictConfig`: runtime sits below
        `cxr.config` and knows none of its schemas."""
        # keys(): `in` says no for a `_target_` left unset (???), which must fail, not fall back to `name`
        if "_target_" not in cfg.keys():  # noqa: SIM118
            return self.get(cfg.name)
        return import_builder(self.kind, cfg._target_)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))


def import_builder(kind: str, target: str) -> Callable:
    """The function `target` (a dotted path) names, for an option of `kind` (model, loss, ...)."""
    module, _, attribute = target.rpartition(".")
    try:
        builder = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise CxrError(
            f"{kind}._target_={target}: {type(err).__name__}: {err}; name a function by its dotted "
            "path (package.module.function) in a module that is installed or on PYTHONPATH"
        ) from None
    if not callable(builder):
        raise CxrError(f"{kind}._target_={target} is not a function")
    return builder
