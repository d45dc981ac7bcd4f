"""Run names that say what a run is, so legends, tables and the compare view tell runs apart.

`<experiment or model>-<loss>-<key overrides>-s<seed>-<suffix>`, e.g.
`demo-dynamic_bce-lr=0.001-s42-3f9a`. The suffix comes from `secrets`, not Python's `random`, which
the training seed fixes (and with it MLflow's own name generator, which would name every run alike).
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxr.config import Config  # a type only: config sits above tracking

MAX_LENGTH = 96  # the UI's run tables cut longer names anyway
# Overrides that say where things go, or are already in the name, not what the run is.
_NAMED = {"experiment", "model", "loss", "seed"}
_WHERE = ("tracking.", "output_dir", "hydra.", "optuna.", "dataset.root", "dataset.cache_dir")
_SHORT = {"learning_rate": "lr", "batch_size": "bs", "image_size": "px"}


def unique(base: str) -> str:
    """`base` with a short random suffix: two runs of the same config get different names."""
    return f"{base}-{secrets.token_hex(2)}"


def _override_label(override: str) -> str | None:
    key, _, value = override.lstrip("+~").partition("=")
    if key in _NAMED or key.startswith(_WHERE) or not value:
        return None
    leaf = key.rsplit(".", 1)[-1]
    value = re.sub(r"[\s/\\'\"\[\]]+", "", value)
    return f"{_SHORT.get(leaf, leaf)}={value}"


def describe(cfg: Config, overrides: list[str]) -> str:
    """`<experiment or model>-<loss>-<key overrides>-s<seed>`, without the unique suffix."""
    experiment = cfg.tracking.experiment_name
    head = experiment.removeprefix("cxr-") if experiment != "cxr" else cfg.model.name
    name, suffix = f"{head}-{cfg.loss.name}", f"-s{cfg.seed}"
    for label in filter(None, map(_override_label, overrides)):  # whole labels, while they fit
        if len(name) + len(label) + len(suffix) + 6 > MAX_LENGTH:
            break
        name += f"-{label}"
    return name + suffix


def run_name(cfg: Config, overrides: list[str]) -> str:
    """A single training run's name: what it is, and a suffix that makes it unique."""
    return unique(describe(cfg, overrides))


def model_name(run_name: str) -> str:
    """The name a run's logged model gets: the run's own name, in the characters MLflow allows there
    (no `.`, `/`, `:`, `%` or quotes), so the UI's model lists and `runs:/<id>/<name>` say what it is."""
    return re.sub(r"[^\w=+-]+", "_", run_name)
