"""Resize every image once into a uint8 memory-mapped array that training reads without decoding.

Format: one `.npy` file (N x size x size uint8) opened with mmap, so any batch is a slice read and
the whole set never has to fit in memory (112,120 x 320 x 320 is 11.5 GB). A cache folder is named
by a fingerprint of the image list and size. Work in progress lives in a `.partial` folder whose
`done.npy` mask is written (atomically) only after the images it covers are flushed, so an
interrupted run resumes where it stopped and never leaves a cache that looks complete.
Images that cannot be read are recorded with their reason, skipped, and reported; never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.errors import CxrError

IMAGES_FILE = "images.npy"
DONE_FILE = "done.npy"
FAILURES_FILE = "failures.json"
MANIFEST = "cache.json"
CHUNK = 256  # images between two progress checkpoints
MIN_PARALLEL = 128  # below this, starting worker processes costs more than it saves


@dataclass(frozen=True)
class PreparedImages:
    images: np.ndarray  # (N, size, size) uint8, memory-mapped, aligned with the input paths
    failures: dict[int, str]  # row -> "path: reason" for images that could not be read
    folder: Path

    def failure_report(self, limit: int | None = None) -> str:
        """'N image(s) could not be read' and one indented line per image (the first `limit`)."""
        reasons = list(self.failures.values())
        shown = reasons if limit is None else reasons[:limit]
        more = f"\n  ... and {len(reasons) - len(shown)} more" if len(shown) < len(reasons) else ""
        return f"{len(reasons)} image(s) could not be read:\n  " + "\n  ".join(shown) + more


def _load_one(task: tuple[int, str, int]) -> tuple[int, np.ndarray | None, str | None]:
    from cxr.data.images import read_image  # PIL: only where images are decoded

    row, path, size = task
    return (row, *read_image(path, size))


def cache_key(paths: list[str], size: int) -> str:
    digest = hashlib.sha256(f"{size}\n{len(paths)}\n".encode())
    for p in paths:
        digest.update(p.encode() + b"\0")
    return digest.hexdigest()[:16]


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


def _checkpoint(partial: Path, images: np.ndarray, done: np.ndarray, failures: dict[int, str]) -> None:
    images.flush()  # pixels reach the disk before the mask that vouches for them
    _save_atomic(partial / DONE_FILE, lambda p: _save_npy(p, done))
    _save_atomic(partial / FAILURES_FILE, lambda p: p.write_text(json.dumps(failures)))


def _run(tasks: list[tuple[int, str, int]], workers: int):
    if workers > 1 and len(tasks) >= MIN_PARALLEL:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            yield from pool.imap_unordered(_load_one, tasks, chunksize=16)
    else:
        yield from map(_load_one, tasks)


def build(paths: list[str], size: int, folder: Path, key: str, workers: int) -> None:
    """Fill (or resume filling) the cache for `paths`, then publish it under `folder`."""
    from tqdm import tqdm

    partial = folder.with_name(f".{folder.name}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    shape = (len(paths), size, size)
    try:
        images = np.load(partial / IMAGES_FILE, mmap_mode="r+")
        done = np.load(partial / DONE_FILE)
        failures = _row_keys(json.loads((partial / FAILURES_FILE).read_text()))
        if images.shape != shape or done.shape != (len(paths),):
            raise ValueError("shape")
    except (OSError, ValueError):
        images = np.lib.format.open_memmap(partial / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=shape)
        done, failures = np.zeros(len(paths), dtype=bool), {}
    todo = [(int(i), paths[i], size) for i in np.flatnonzero(~done)]
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc=f"prepare {size}px", unit="img")
    for n, (row, arr, err) in enumerate(_run(todo, workers), start=1):
        if err is None:
            images[row] = arr
        else:
            failures[row] = err
        done[row] = True
        bar.update()
        if n % CHUNK == 0:
            _checkpoint(partial, images, done, failures)
    bar.close()
    _checkpoint(partial, images, done, failures)
    del images
    manifest = {"size": size, "count": len(paths), "key": key, "failures": failures}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    (partial / DONE_FILE).unlink()
    (partial / FAILURES_FILE).unlink()
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
        raise CxrError(f"image cache {folder} holds {images.dtype} {images.shape}, not uint8 "
                       f"{(count, size, size)}; {fix}")
    return PreparedImages(images, _row_keys(manifest["failures"]), folder)


def prepare_images(
    paths: list[str], size: int, cache_dir: str | os.PathLike, workers: int | None = None
) -> PreparedImages:
    """The cached images for these files at this size, built (or resumed) on first use."""
    if not paths:
        raise CxrError("no images to prepare: the dataset selection is empty")
    key = cache_key(paths, size)
    folder = _folder(cache_dir, size, key)
    if not folder.is_dir():
        build(paths, size, folder, key, workers or os.cpu_count() or 1)
    return open_cache(folder, len(paths), size, key)

