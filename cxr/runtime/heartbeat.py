"""A heartbeat: a daemon thread that calls `beat()` now and every `interval` seconds until the block ends.

One mechanism for both stores that must learn when a process died without saying so: an MLflow run's
last-seen tag (`cxr.tracking.runs`) and an Optuna trial's heartbeat (`cxr.sweep`, on any Optuna storage with
heartbeats: SQLite here, PostgreSQL for many machines). When the process dies, the beats stop, and a
later process that finds the last one older than a grace period knows its owner is gone.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def beating(beat: Callable[[], None], interval: float) -> Iterator[None]:
    """Call `beat` once before the block and every `interval` seconds during it. A beat that fails (a
    store busy for a moment) is reported on stderr and retried at the next beat; it never stops the work."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                beat()
            except Exception as err:  # the store's own errors; the next beat tries again
                print(f"[cxr] heartbeat not recorded: {type(err).__name__}: {err}", file=sys.stderr)

    beat()
    thread = threading.Thread(target=loop, name="cxr-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
