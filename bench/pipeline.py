"""Input throughput: cxr's prepared cache + tf.data vs the 2025 study's decode-every-epoch pipeline,
and `cxr.prepare` per core vs a bare PIL decode+resize loop.

    python bench/pipeline.py [--images 384] [--size 320]

Source images are 1024x1024 8-bit PNGs like the NIH originals: the real samples in
$CXR_SHARED_DATA/nih-samples/full_1024px when set (copied under new names), else synthetic ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def source_images(folder: Path, n: int) -> list[str]:
    shared = os.environ.get("CXR_SHARED_DATA")
    originals = sorted(Path(shared, "nih-samples", "full_1024px").glob("*.png")) if shared else []
    if not originals:
        from cxr.data.synthetic import render

        for k in range(3):
            Image.fromarray(render(np.eye(14, dtype=np.uint8)[k], 1024, 1.0, 0.06, [k])).save(
                folder / f"s{k}.png"
            )
        originals = sorted(folder.glob("s*.png"))
    paths = []
    for i in range(n):
        dst = folder / f"{i:08d}_000.png"
        shutil.copyfile(originals[i % len(originals)], dst)
        paths.append(str(dst))
    return paths


def images_per_second(dataset, n_images: int, epochs: int = 2) -> float:
    for _ in dataset.take(2):  # warm up: graph tracing, thread pools
        pass
    start = time.perf_counter()
    for _ in range(epochs):
        for _ in dataset:
            pass
    return epochs * n_images / (time.perf_counter() - start)


def study_pipeline(paths: list[str], size: int, batch: int):
    """The study's tf.data: decode_png -> resize -> preprocess_input on every image, every epoch."""
    import tensorflow as tf
    from keras.applications import densenet

    def load(path):
        img = tf.io.decode_png(tf.io.read_file(path), channels=3)
        img = tf.image.resize(img, (size, size))
        return densenet.preprocess_input(img)

    ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = source_images(tmp, args.images)

        from cxr.data.cache import prepare_images
        from cxr.data.images import load_resized

        start = time.perf_counter()
        for p in paths[:128]:
            load_resized(p, args.size)
        bare = 128 / (time.perf_counter() - start)

        start = time.perf_counter()
        prepared = prepare_images(paths, args.size, tmp / "cache", workers=cores)
        prep = args.images / (time.perf_counter() - start)

        from cxr.data.pipeline import make_dataset

        labels = np.zeros((args.images, 14), np.float32)
        rows = np.arange(args.images)
        print(
            f"machine: {platform.processor() or platform.machine()}, {cores} cores, {args.images} images, "
            f"1024px PNG -> {args.size}px"
        )
        print(f"bare PIL decode+resize, 1 core:   {bare:8.1f} img/s")
        print(
            f"cxr.prepare, {cores} workers:          {prep:8.1f} img/s ({prep / cores:.1f} per core, "
            f"{bare / (prep / cores):.2f}x the bare loop's time per image)"
        )
        from cxr.models.layers import GreyToImageNet

        to_rgb = GreyToImageNet()
        for batch in (16, 64):
            ds = make_dataset(prepared.images, labels, rows, batch_size=batch, training=True, seed=0)
            ours = images_per_second(ds, args.images)
            # like for like: also turn the batches into normalised RGB floats on the host, as the study did
            ours_rgb = images_per_second(ds.map(lambda x, y: (to_rgb(x), y)), args.images)
            study = images_per_second(study_pipeline(paths, args.size, batch), args.images, epochs=1)
            print(
                f"batch {batch:2d}: cxr (uint8 grey to the model) {ours:8.1f} img/s = {ours / study:5.1f}x | "
                f"with RGB floats on the host {ours_rgb:7.1f} img/s = {ours_rgb / study:4.1f}x | "
                f"study's PNG pipeline {study:6.1f} img/s"
            )


if __name__ == "__main__":
    main()
