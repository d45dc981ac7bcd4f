"""`python -m cxr.prepare`: resize the configured dataset once into the training cache.

Same config as `cxr.train` (`dataset=nih dataset.root=... dataset.image_size=320`). Resumable:
run it again after an interruption and it continues; run it on a complete cache and it only re-reads
the files that changed. Concurrent runs on one cache take turns (cxr.data.cache's lock).
"""

from __future__ import annotations

import time

import hydra

from cxr.config import CONF_DIR, Config, check_dataset, register_configs
from cxr.data.prepared import load_prepared
from cxr.runtime.console import announce, log
from cxr.runtime.errors import exit_on_user_error, run_command
from cxr.runtime.known_keys import check_known_keys

register_configs()


def run(cfg: Config) -> int:
    """Prepare the cache; returns how many images could not be read."""
    check_known_keys(cfg)
    check_dataset(cfg.dataset)  # before any image is generated or read
    start = time.perf_counter()
    data = load_prepared(cfg.dataset, warn=False)
    seconds = time.perf_counter() - start
    cache = data.cache
    upscaled = cache.upscale_warning()
    if upscaled:
        log.warning(f"cxr: warning: {upscaled}")
    log.info(f"\n{len(data.table)} images at {data.image_size}px in {cache.folder} ({seconds:.1f} s)")
    if cache.failures:
        log.info(f"{cache.failure_report()}\nThey are left out of training.")
    else:
        log.info("all images read")
    return len(cache.failures)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
@exit_on_user_error
def main(cfg: Config) -> None:
    announce("prepare", cfg)
    run(cfg)


if __name__ == "__main__":
    run_command(main)
