"""Resize every image once into a uint8 memory-mapped array that training reads without decoding.

A cache folder is named by a fingerprint of the image list and size, written under a temporary
name and renamed when complete, so an interrupted run never leaves a cache that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.errors import CxrError

IMAGES_FILE = "images.npy"
MANIFEST = "cache.json"


def load_resized(path: str, size: int) -> np.ndarray:
    """8/16-bit grey, RGB or RGBA file -> size x size uint8 grey."""
    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            scale = 65535.0 if arr.max() > 255 else 255.0
            img = Image.fromarray((arr * (255.0 / scale)).clip(0, 255).astype(np.uint8), mode="L")
        elif img.mode != "L":
            img = img.convert("L")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(img, dtype=np.uint8)


def _load_one(task: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    path, size = task
    try:
        return load_resized(path, size), None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        return None, f"{path}: {err}"


def cache_key(paths: list[str], size: int) -> str:
    digest = hashlib.sha256(str(size).encode())
    for p in paths:
        digest.update(p.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _fill(images: np.ndarray, paths: list[str], size: int, workers: int) -> list[str]:
    from tqdm import tqdm

    tasks = [(p, size) for p in paths]
    failures: list[str] = []
    bar = tqdm(total=len(paths), desc=f"prepare {size}px", unit="img")
    if workers > 1 and len(paths) >= 64 * workers:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.imap(_load_one, tasks, chunksize=32)
            for i, (arr, err) in enumerate(results):
                _store(images, i, arr, err, failures)
                bar.update()
    else:
        for i, task in enumerate(tasks):
            _store(images, i, *_load_one(task), failures)
            bar.update()
    bar.close()
    return failures


def _store(images: np.ndarray, i: int, arr: np.ndarray | None, err: str | None, failures: list[str]) -> None:
    if err is not None:
        failures.append(err)
    else:
        images[i] = arr


def prepare(paths: list[str], size: int, cache_dir: str | os.PathLike, workers: int | None = None) -> np.ndarray:
    """The cached (N, size, size) uint8 array for these image files, built on first use."""
    folder = Path(cache_dir) / f"{size}px-{cache_key(paths, size)}"
    if (folder / MANIFEST).is_file():
        return np.load(folder / IMAGES_FILE, mmap_mode="r")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        images = np.lib.format.open_memmap(tmp / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
        failures = _fill(images, paths, size, workers or os.cpu_count() or 1)
        if failures:
            shown = "\n  ".join(failures[:10])
            raise CxrError(f"{len(failures)} of {len(paths)} images could not be read:\n  {shown}")
        images.flush()
        del images
        (tmp / MANIFEST).write_text(json.dumps({"size": size, "count": len(paths)}))
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return np.load(folder / IMAGES_FILE, mmap_mode="r")
