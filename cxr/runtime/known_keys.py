"""Every key of a composed config is one its schema declares, whatever the `+` that added it.

Hydra refuses `loss.smoothing_factr=0.2` and suggests `+loss.smoothing_factr=0.2`; with the `+` the key
is added beside the typed schema's `smoothing_factor`, the run trains on the default and its name and
params record the typo. `check_known_keys` walks the composed config after composition: a node typed
by a dataclass takes only that dataclass's fields; a `schema_custom` option (a builder in the user's
code, `_target_`) takes the keys its builder declares (a dataclass as the annotation of its first
parameter, the option), and any key when it declares none.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from cxr.runtime.builders import import_builder
from cxr.runtime.errors import CxrError

CUSTOM_KEYS = ("name", "_target_", "min_image_size")  # what every custom option may hold besides its own


def declared_keys(builder: Callable) -> set[str] | None:
    """The option keys a custom builder declares: the fields of the dataclass its first parameter (the
    option) is annotated with; None when it declares none (its code reads what it likes)."""
    try:
        first = next(iter(inspect.signature(builder).parameters))
        hint = typing.get_type_hints(builder).get(first)
    except (StopIteration, TypeError, ValueError, NameError):
        return None
    if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
        return None
    return {f.name for f in dataclasses.fields(hint)} | set(CUSTOM_KEYS)


def _refuse(path: str, key: str, known: set[str], owner: str) -> None:
    where = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"did you mean {path + '.' if path else ''}{close[0]}? " if close else ""
    raise CxrError(
        f"{where}: {owner} has no key {key!r}; {hint}its keys: {', '.join(sorted(known))} "
        "(a '+' adds a key only to an option of your own, schema_custom)"
    )


def check_known_keys(cfg: DictConfig, path: str = "") -> None:
    """Raise a CxrError naming the first key of `cfg` (any command's composed config) that its schema
    does not declare, and the closest known key; `path` is where `cfg` sits in the whole config."""
    schema = OmegaConf.get_type(cfg)
    keys = [str(k) for k in cfg]
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        known = {f.name for f in dataclasses.fields(schema)}
        owner = f"{path or 'the config'} ({schema.__name__})"
    elif "_target_" in keys and not OmegaConf.is_missing(cfg, "_target_"):
        known = declared_keys(import_builder(path or "option", cfg._target_))
        owner = f"{path} (the parameters of {cfg._target_})"
    else:
        known = None
    for key in keys:
        if known is not None and key not in known:
            _refuse(path, key, known, owner)
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            check_known_keys(child, f"{path}.{key}" if path else key)
