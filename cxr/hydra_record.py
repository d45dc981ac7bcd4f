"""Hydra's own record of a command, without passwords.

Hydra writes the composed config and the command line as typed to `<run dir>/.hydra/*.yaml` (and a
multirun's to `<sweep dir>/multirun.yaml`) before the job starts; with a storage or tracking URL that
holds a password, those files kept it. The callback rewrites them masked (`cxr.masking.mask`) as each
job starts: the job itself still has the real URL in memory; the files are a record, not an input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from cxr.masking import mask


def mask_files(paths) -> list[Path]:
    """Rewrite each file in `paths` that holds a password with it masked, atomically (several jobs
    of a multirun may mask the same file at once and write the same text); returns those rewritten."""
    rewritten = []
    for path in map(Path, paths):
        text = path.read_text()
        masked = mask(text)
        if masked != text:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(masked)
            os.replace(tmp, path)
            rewritten.append(path)
    return rewritten


class MaskHydraRecord(Callback):
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = config.hydra
        folders = []
        if hydra.output_subdir is not None:
            folders.append(Path(hydra.runtime.output_dir) / hydra.output_subdir)
        if hydra.mode == RunMode.MULTIRUN:
            folders.append(Path(hydra.sweep.dir))
        mask_files(p for folder in folders if folder.is_dir() for p in folder.glob("*.yaml"))
