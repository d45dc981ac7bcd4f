"""What a command says it is doing: one banner at its start, through `logging`.

Commands log to the `cxr` logger; Hydra's job logging (conf/hydra/job_logging/cxr.yaml) writes it
plain to the console and timestamped to the job's log file (`<run dir>/<command>.log`).

The helpers take `DictConfig`, not a schema of `cxr.config`: runtime sits below config, and `banner`
takes any command's config (training, evaluate, ensemble, promote, predict).
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig, OmegaConf

from cxr.runtime.masking import mask

log = logging.getLogger("cxr")


def dataset_words(dataset: DictConfig) -> str:
    """`synthetic data (generated, not X-rays)` or `nih data at /data/nih`: what the run learns from.
    `dataset` is a `dataset` node (a DatasetConfig)."""
    if dataset.name == "synthetic":
        return "synthetic data (generated, not X-rays; dataset=nih dataset.root=... for NIH)"
    return f"{dataset.name} data at {dataset.root}"


def split_words(dataset: DictConfig) -> str:
    """`official split (NIH test list, 10% validation)` or `random patient split 90/5/5 (seed 0)`."""
    if dataset.split == "official":
        return f"official split (NIH test list, {dataset.val_fraction:.0%} validation)"
    fractions = "/".join(f"{f:.0%}".rstrip("%") for f in dataset.split_fractions)
    return f"{dataset.split} patient split {fractions} (seed {dataset.split_seed})"


def banner(command: str, cfg: DictConfig) -> str:
    """`cxr.train: synthetic data (...), 64 px, official split (...), model small_cnn, loss bce,
    store sqlite:///mlruns/mlflow.db (experiment cxr)`: the parts of `cfg` this command has."""
    parts = []
    if "dataset" in cfg:
        parts += [dataset_words(cfg.dataset), f"{cfg.dataset.image_size} px", split_words(cfg.dataset)]
    if isinstance(cfg.get("model"), DictConfig):
        parts.append(f"model {cfg.model.name}")
    if "loss" in cfg:
        parts.append(f"loss {cfg.loss.name}")
    for key in ("run_id", "model_uri", "model_name", "version", "split"):
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None:
            parts.append(f"{key} {value}")
    if "tracking" in cfg:
        experiment = cfg.tracking.get("experiment_name") or "of its members"  # cxr.ensemble's default
        parts.append(f"store {mask(cfg.tracking.uri)} (experiment {experiment})")
    return f"cxr.{command}: " + ", ".join(parts)


class BelowWarning(logging.Filter):
    """Info on stdout, warnings and errors on stderr (conf/hydra/job_logging/cxr.yaml), as a CLI's are."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def announce(command: str, cfg: DictConfig) -> None:
    """Log `banner(command, cfg)`: what any command's config says it will do."""
    log.info(banner(command, cfg))


def fit_verbosity(verbose) -> int | str:
    """Keras's `verbose` for fit: `auto` is a progress bar on a terminal and one line per epoch
    otherwise, so log files and captured output get no carriage returns or escape codes."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return verbose
