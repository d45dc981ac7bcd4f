"""`python -m cxr.prepare`: resize the configured dataset once into the training cache.

Same config as `cxr.train` (`dataset=nih dataset.root=... dataset.image_size=320`). Resumable:
run it again after an interruption and it continues; run it on a complete cache and it only checks it.
"""

from __future__ import annotations

import sys
import time

import hydra
from omegaconf import DictConfig

from cxr.config import CONF_DIR, register_configs
from cxr.data.datasets import load_table
from cxr.data.prepare import prepare
from cxr.errors import exit_on_user_error

register_configs()


def run(cfg: DictConfig) -> int:
    """Prepare the cache; returns how many images could not be read."""
    table = load_table(cfg.dataset)
    start = time.perf_counter()
    prepared = prepare(table["path"].tolist(), cfg.dataset.image_size, cfg.dataset.cache_dir)
    seconds = time.perf_counter() - start
    n = len(table)
    print(f"\n{n} images at {cfg.dataset.image_size}px in {prepared.folder} ({seconds:.1f} s)")
    if prepared.failures:
        print(f"{prepared.failure_report()}\nThey are left out of training.")
    else:
        print("all images read")
    return len(prepared.failures)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    sys.exit(main())
