"""Faults in the image cache: N processes preparing one fresh cache at once, and the stat pass that
keys the cache by content.

    python bench/fault_cache.py [--processes 4] [--patients 200] [--size 64] [--rounds 3]
                                [--stat-files 112120]

One synthetic set (real PNG files, cxr's generator) is prepared
once by a single process (the reference), then, in a fresh cache folder, by `--processes` spawned
processes released together by a `multiprocessing.Barrier`. It prints, per round, the images lost
(rows that differ from the reference: blacked out, stale or missing) and the processes that failed;
both must be 0. Then it times `cxr.data.cache.file_stats` (one `os.stat` per file, what every
prepare and every command that opens a cache pays) over `--stat-files` empty files.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from cxr.config import SyntheticGeneratorConfig
from cxr.data import cache
from cxr.data.synthetic import ensure_dataset


def compete(barrier, paths: list[str], size: int, cache_dir: str) -> None:
    """One process: wait for the others, then prepare (one worker each, so N processes race, not N pools)."""
    barrier.wait()
    cache.prepare_images(paths, size, cache_dir, workers=1)


def race(
    paths: list[str], size: int, cache_dir: Path, processes: int
) -> tuple[int, np.ndarray | None, float]:
    """(processes failed, the cache they left or None, seconds) for `processes` concurrent prepares."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    procs = [
        ctx.Process(target=compete, args=(barrier, paths, size, str(cache_dir))) for _ in range(processes)
    ]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - start
    failed = sum(p.exitcode != 0 for p in procs)
    folder = cache_dir / f"{size}px-{cache.cache_key(paths, size)}"
    try:
        left = np.load(folder / cache.IMAGES_FILE)
    except OSError:
        left = None
    return failed, left, seconds


def stat_seconds(n: int, folder: Path) -> float:
    paths = [str(folder / f"{i:08d}_000.png") for i in range(n)]
    for p in paths:
        Path(p).touch()
    cache.file_stats(paths)  # the first pass warms the directory cache, as any earlier listing would
    start = time.perf_counter()
    cache.file_stats(paths)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stat-files", type=int, default=112120)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = ensure_dataset(
            SyntheticGeneratorConfig(n_patients=args.patients, resolution=128), tmp / "syn"
        )
        paths = sorted(str(p) for p in (folder / "images").iterdir())
        reference = cache.prepare_images(paths, args.size, tmp / "reference", workers=1).images
        print(f"{len(paths)} images at {args.size}px, {args.processes} concurrent prepares per round")
        lost_total = failed_total = 0
        for r in range(args.rounds):
            failed, left, seconds = race(paths, args.size, tmp / f"race{r}", args.processes)
            if left is None:
                lost = len(paths)
            else:
                lost = int(
                    (left.reshape(len(paths), -1) != reference.reshape(len(paths), -1)).any(axis=1).sum()
                )
            print(f"round {r + 1}: images lost {lost}, processes failed {failed} ({seconds:.1f} s)")
            lost_total, failed_total = lost_total + lost, failed_total + failed
        print(f"total: images lost {lost_total}, processes failed {failed_total}")
        (tmp / "stat").mkdir()
        seconds = stat_seconds(args.stat_files, tmp / "stat")
        print(
            f"stat pass over {args.stat_files} files: {seconds:.3f} s "
            f"({seconds / args.stat_files * 1e6:.1f} us/file)"
        )


if __name__ == "__main__":
    main()
