"""Hydra's own record of a command, without passwords.

Hydra writes the composed config and the command line as typed to `<run dir>/.hydra/*.yaml` (and a
multirun's to `<sweep dir>/multirun.yaml`) before the job starts; with a storage or tracking URL that
holds a password, those files kept it. The callback rewrites them masked (`cxr.runtime.masking.mask`) as each
job starts: the job itself still has the real URL in memory; the files are a record, not an input. As
each job ends, its overrides in Hydra's `JobReturn` are masked too: Hydra prints them on stderr when the
job failed ("Error executing job with overrides: [...]").
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from cxr.runtime.masking import mask

log = logging.getLogger(__name__)


def mask_files(paths) -> list[Path]:
    """Rewrite each file in `paths` that holds a password with it masked, atomically through a
    temporary file of its own (the jobs of a multirun, on one machine or several, may mask the same
    `multirun.yaml` at once and write the same text); returns those rewritten. A file that cannot be
    read or written is a warning, never a failed job: the files are a record, not an input."""
    rewritten = []
    for path in map(Path, paths):
        try:
            text = path.read_text(encoding="utf-8")
            masked = mask(text)
            if masked == text:
                continue
            handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    out.write(masked)
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)  # gone once replaced; else no debris
            rewritten.append(path)
        except (OSError, UnicodeError) as err:
            log.warning(f"cxr: warning: could not mask the passwords in {path}: {err}")
    return rewritten


class MaskHydraRecord(Callback):
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = config.hydra
        folders = []
        if hydra.output_subdir is not None:
            folders.append(Path(hydra.runtime.output_dir) / hydra.output_subdir)
        if hydra.mode == RunMode.MULTIRUN:  # relative to where the command started (jobs may chdir)
            folders.append(Path(hydra.runtime.cwd) / hydra.sweep.dir)
        mask_files(p for folder in folders if folder.is_dir() for p in folder.glob("*.yaml"))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.overrides:
            job_return.overrides = [mask(o) for o in job_return.overrides]
