"""Resize every image once into a uint8 memory-mapped array that training reads without decoding.

Format: one `.npy` file (N x size x size uint8) opened with mmap, so any batch is a slice read and
the whole set never has to fit in memory (112,120 x 320 x 320 is 11.5 GB). A cache folder is named
by a fingerprint of the image list and size; beside the pixels, `files.npy` records for every row the
file's size and modification time (ns) when it was read, and the source image's height and width.

Content-keyed: every prepare (and every command that opens the cache) stats the files and re-reads,
in place, the rows whose file changed since (a replaced or repaired image; a repaired one leaves the
failure list), so one changed file never costs a rebuild of the whole set.

Locked: building or updating a cache holds an exclusive `fcntl.flock` on `.<folder>.lock` beside it,
so concurrent prepares, training runs or sweep workers on one cache take turns: the first builds, the
others wait (saying so) and then find the rows done. Work in progress lives in a `.partial` folder
whose row records are written (atomically) only after the pixels they vouch for are flushed, so an
interrupted run resumes where it stopped and never leaves a cache that looks complete.
Images that cannot be read are recorded with their reason, skipped, and reported; never dropped silently.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.runtime.errors import CxrError

IMAGES_FILE = "images.npy"
FILES_FILE = "files.npy"  # per row: file size, mtime_ns (as read), source height, width
MANIFEST = "cache.json"
CHUNK = 256  # images between two progress checkpoints
MIN_PARALLEL = 128  # below this, starting worker processes costs more than it saves
NOT_READ = -2  # a row's recorded file size before it is read: differs from every stat
ABSENT = -1  # the recorded size and mtime of a file that does not exist


@dataclass(frozen=True)
class PreparedImages:
    images: np.ndarray  # (N, size, size) uint8, memory-mapped, aligned with the input paths
    failures: dict[int, str]  # row -> "path: reason" for images that could not be read
    folder: Path
    source_shapes: np.ndarray | None = None  # (N, 2) height, width of each source image; 0 if unread

    def failure_report(self, limit: int | None = None) -> str:
        """'N image(s) could not be read' and one indented line per image (the first `limit`)."""
        reasons = list(self.failures.values())
        shown = reasons if limit is None else reasons[:limit]
        more = f"\n  ... and {len(reasons) - len(shown)} more" if len(shown) < len(reasons) else ""
        return f"{len(reasons)} image(s) could not be read:\n  " + "\n  ".join(shown) + more

    def upscale_warning(self) -> str | None:
        """A warning when the cache's size exceeds some source images' (they were enlarged), else None."""
        if self.source_shapes is None:
            return None
        size = self.images.shape[1]
        read = self.source_shapes.min(axis=1) > 0
        small = read & (self.source_shapes.min(axis=1) < size)
        if not small.any():
            return None
        smallest = int(self.source_shapes[read].min())
        return (
            f"{int(small.sum())} of {int(read.sum())} images are smaller than the {size}px cache "
            f"(smallest side {smallest}px) and were enlarged; set dataset.image_size to at most "
            "the source size unless you mean it"
        )


def _load_one(task: tuple[int, str, int]) -> tuple[int, np.ndarray | None, tuple[int, int], str | None]:
    from cxr.data.images import read_image  # PIL: only where images are decoded

    row, path, size = task
    return (row, *read_image(path, size))


def cache_key(paths: list[str], size: int) -> str:
    digest = hashlib.sha256(f"{size}\n{len(paths)}\n".encode())
    for p in paths:
        digest.update(p.encode() + b"\0")
    return digest.hexdigest()[:16]


def file_stats(paths: list[str]) -> np.ndarray:
    """(N, 2) int64: each file's size and mtime_ns, (ABSENT, ABSENT) for a missing one: what keys a row."""
    out = np.full((len(paths), 2), ABSENT, dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        out[i] = st.st_size, st.st_mtime_ns
    return out


def _folder(cache_dir: str | os.PathLike, size: int, key: str) -> Path:
    return Path(cache_dir) / f"{size}px-{key}"


def _row_keys(failures: dict[str, str]) -> dict[int, str]:
    """JSON turns the row numbers into strings; back to ints."""
    return {int(k): v for k, v in failures.items()}


def _save_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


@contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock on `folder`'s cache; wait for it, saying so, if another process has it.

    The lock file stays (removing it would let two processes lock two different files); the kernel
    drops the lock when its holder exits, however it exits.
    """
    lock = folder.with_name(f".{folder.name}.lock")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+b")  # noqa: SIM115 (closed by the with below)
    except OSError as err:
        raise CxrError(
            f"cannot create the image cache's lock {lock} ({err.strerror}); "
            "make dataset.cache_dir writable or point it at a writable folder"
        ) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"cxr: waiting for another process preparing {folder}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _manifest(size: int, count: int, key: str, failures: dict[int, str]) -> dict:
    return {"size": size, "count": count, "key": key, "failures": failures}


def _checkpoint(where: Path, images: np.ndarray, records: np.ndarray, manifest: dict) -> None:
    images.flush()  # pixels reach the disk before the records that vouch for them
    _save_atomic(where / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1)))
    _save_atomic(where / FILES_FILE, lambda p: _save_npy(p, records))


def _unread(count: int) -> np.ndarray:
    records = np.zeros((count, 4), dtype=np.int64)
    records[:, :2] = NOT_READ
    return records


def _open_rows(where: Path, count: int, size: int, create: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images r+, row records, failures) of the cache or partial cache in `where`.

    A partial cache that is missing, unreadable or of another shape is started afresh (every row
    unread) when `create` (only ever under the lock); a published one without records (an older
    cxr's) gets every row re-read in place."""
    shape = (count, size, size)
    try:
        images = np.load(where / IMAGES_FILE, mmap_mode="r+")
        failures = _row_keys(json.loads((where / MANIFEST).read_text())["failures"])
        if images.shape != shape:
            raise ValueError("shape")
    except (OSError, ValueError, KeyError):
        if not create:
            raise
        where.mkdir(parents=True, exist_ok=True)
        images = np.lib.format.open_memmap(where / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=shape)
        return images, _unread(count), {}
    try:
        records = np.load(where / FILES_FILE)
        if records.shape != (count, 4):
            raise ValueError("shape")
    except (OSError, ValueError):
        records = _unread(count)
    return images, records, failures


def _current(folder: Path, stats: np.ndarray) -> bool:
    """Whether every row of a published cache was read from the file as it is now (`stats`).

    Safe without the lock: an update in progress records a row only after its pixels are flushed."""
    try:
        records = np.load(folder / FILES_FILE)
    except (OSError, ValueError):
        return False
    return records.shape == (len(stats), 4) and bool((records[:, :2] == stats).all())


def _can_start_processes() -> bool:
    """Whether this process can start a Pool: not inside a joblib (loky) worker, whose start method a
    spawned child inherits and cannot set (`cannot find context for 'loky'`: the pool would hang)."""
    method = multiprocessing.get_start_method(allow_none=True)
    return method is None or method in multiprocessing.get_all_start_methods()


def _run(tasks: list[tuple[int, str, int]], workers: int):
    if workers > 1 and len(tasks) >= MIN_PARALLEL and _can_start_processes():
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            yield from pool.imap_unordered(_load_one, tasks, chunksize=16)
    else:
        yield from map(_load_one, tasks)


def fill(
    where: Path, paths: list[str], size: int, key: str, stats: np.ndarray, workers: int, create: bool
) -> int:
    """(Re-)read into `where` every row whose file's `stats` differ from those it was read with.

    Call under `build_lock`. Returns how many rows were read."""
    from tqdm import tqdm  # only while building: bench/train_throughput imports this module without tqdm

    images, records, failures = _open_rows(where, len(paths), size, create)
    todo = [(int(i), paths[i], size) for i in np.flatnonzero((records[:, :2] != stats).any(axis=1))]
    if not todo:
        return 0
    desc = f"prepare {size}px" if create else f"update {size}px (changed files)"
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc=desc, unit="img")
    for n, (row, arr, shape, err) in enumerate(_run(todo, workers), start=1):
        if err is None:
            images[row] = arr
            failures.pop(row, None)
        else:
            images[row] = 0  # a file that broke since keeps no stale pixels
            failures[row] = err
        records[row] = (*stats[row], *shape)
        bar.update()
        if n % CHUNK == 0:
            _checkpoint(where, images, records, _manifest(size, len(paths), key, failures))
    bar.close()
    _checkpoint(where, images, records, _manifest(size, len(paths), key, dict(sorted(failures.items()))))
    return len(todo)


def build(paths: list[str], size: int, folder: Path, key: str, workers: int, stats: np.ndarray) -> None:
    """Fill (or resume filling) the cache for `paths`, then publish it under `folder`. Under the lock."""
    partial = folder.with_name(f".{folder.name}.partial")
    fill(partial, paths, size, key, stats, workers, create=True)
    os.replace(partial, folder)


def open_cache(folder: Path, count: int, size: int, key: str) -> PreparedImages:
    """The cache in `folder`, checked against the image list and size it must have been built for."""
    fix = f"delete {folder} and run `python -m cxr.prepare` (or the training command) again"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        images = np.load(folder / IMAGES_FILE, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise CxrError(f"image cache {folder} is unreadable ({err}); {fix}") from None
    expected = {"size": size, "count": count, "key": key}
    found = {k: manifest.get(k) for k in expected}
    if found != expected:
        raise CxrError(f"image cache {folder} was built for {found}, not for this dataset {expected}; {fix}")
    if images.shape != (count, size, size) or images.dtype != np.uint8:
        raise CxrError(
            f"image cache {folder} holds {images.dtype} {images.shape}, not uint8 "
            f"{(count, size, size)}; {fix}"
        )
    try:
        shapes = np.load(folder / FILES_FILE)[:, 2:]
    except (OSError, ValueError):
        shapes = None  # built outside prepare_images (a benchmark's synthetic cache)
    return PreparedImages(images, _row_keys(manifest["failures"]), folder, shapes)


def prepare_images(
    paths: list[str], size: int, cache_dir: str | os.PathLike, workers: int | None = None
) -> PreparedImages:
    """The cached images for these files at this size: built (or resumed) on first use, changed files
    re-read, one process at a time."""
    if not paths:
        raise CxrError("no images to prepare: the dataset selection is empty")
    key = cache_key(paths, size)
    folder = _folder(cache_dir, size, key)
    stats = file_stats(paths)
    if folder.is_dir() and _current(folder, stats):
        return open_cache(folder, len(paths), size, key)  # nothing to do: no lock, works read-only
    workers = workers or os.cpu_count() or 1
    with build_lock(folder):
        if folder.is_dir():
            open_cache(folder, len(paths), size, key)  # built for this list and size, or a CxrError
            fill(folder, paths, size, key, stats, workers, create=False)
        else:
            build(paths, size, folder, key, workers, stats)
    return open_cache(folder, len(paths), size, key)
