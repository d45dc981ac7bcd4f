"""Hydra's sweep syntax (choice, range, interval, tag(log, ...), int(...)) as Optuna distributions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from cxr.runtime.errors import CxrError

if TYPE_CHECKING:  # Hydra's plugin scan imports this module at start-up; optuna is imported on use
    from optuna.distributions import BaseDistribution


class SearchSpaceError(ValueError):
    pass


def _scalar(value: Any):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise SearchSpaceError(f"choice values must be numbers, strings, booleans or null, not {value!r}")


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override, e.g. `model.dropout=interval(0.1, 0.5)`."""
    # heavy: optuna, on use (Hydra's plugin scan imports this module)
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution([_scalar(v) for v in override.sweep_iterator()])
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)) and step > 0 and stop > start:
            return IntDistribution(start, start + (stop - start - 1) // step * step, step=step)
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise SearchSpaceError(f"{key}: unsupported sweep {override.input_line!r}")


def split(overrides: list[Override]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """(searched parameters, fixed `key=value` overrides); a later override of a key wins."""
    searched: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in overrides:
        key = override.get_key_element()
        searched.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            searched[key] = distribution(override)
        else:
            fixed[key] = override.get_value_element_as_str()
    return searched, fixed


def parse(
    config_loader, params: Mapping[str, str] | None, arguments: list[str]
) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """The search space and the fixed overrides of `hydra.sweeper.params` and the command line's
    overrides (which win); a CxrError says what is wrong or that nothing is searched."""
    parser = OverridesParser.create(config_loader=config_loader)
    lines = [*(f"{k}={v}" for k, v in (params or {}).items()), *arguments]
    try:
        searched, fixed = split(parser.parse_overrides(lines))
    except Exception as err:  # Hydra's parse errors and ours say what is wrong
        raise CxrError(f"search space: {err}") from None
    if not searched:
        raise CxrError(
            "nothing to search: give hydra.sweeper.params (e.g. +sweep=core) or sweep overrides "
            "such as 'model.dropout=interval(0.1,0.5)'"
        )
    return searched, fixed


def format_value(value: Any) -> str:
    """A sampled value as Hydra override text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def grid(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """The grid sampler's search space: every parameter must be a finite choice."""
    from optuna.distributions import CategoricalDistribution, IntDistribution  # heavy: optuna, on use

    out = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            out[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            out[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise SearchSpaceError(
                f"sampler grid needs choice() or range() for {key}, not a continuous interval"
            )
    return out
