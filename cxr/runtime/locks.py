"""An exclusive lock across processes on one machine: `fcntl.flock` on a file beside what it guards.

The kernel drops the lock when its holder dies (even by SIGKILL), so a crash never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxr.runtime.errors import CxrError


def lock_path(guarded: Path) -> Path:
    """The lock file of `guarded`: `<name>.lock` in the same folder."""
    return guarded.with_name(guarded.name + ".lock")


@contextmanager
def locked(guarded: Path) -> Iterator[None]:
    """Hold the exclusive lock of `guarded` for the block; other holders wait."""
    lock = lock_path(guarded)
    try:
        handle = open(lock, "a")  # noqa: SIM115  (closed below, after the lock is released)
    except OSError as err:
        raise CxrError(
            f"cannot create the lock file {lock} ({err.strerror}): the folder {lock.parent} must be "
            "writable; make it so or choose another location"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///` URL (MLflow's or Optuna's), beside which its lock sits: a
    path, or an SQLite URI `file:<path>?<parameters>`."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///") :].split("?")[0].removeprefix("file:")).expanduser()
