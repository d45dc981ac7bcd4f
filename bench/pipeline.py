"""Input throughput: cxr's data path (a keras.utils.PyDataset over the prepared cache) vs the tf.data
pipeline it replaced, the bare memory-map gather and the 2025 study's decode-every-epoch pipeline;
and `cxr.prepare` per core vs a bare PIL decode+resize loop.

    python bench/pipeline.py [--images 384] [--size 320] [--rounds 5]

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


def images_per_second(dataset, n_images: int, epochs: int = 2, repeats: int = 3) -> float:
    """The best of `repeats` timings of `epochs` passes: on a shared machine, the least disturbed one."""
    for _ in dataset:  # warm up: graph tracing, thread pools, page cache
        pass
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(epochs):
            for _ in dataset:
                pass
            getattr(dataset, "on_epoch_end", lambda: None)()  # next epoch's permutation, as fit does
        best = max(best, epochs * n_images / (time.perf_counter() - start))
    return best


def tf_data_pipeline(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, batch: int, seed: int = 0):
    """The tf.data pipeline cxr used until issue 14 (without augmentation, which is now the model's):
    shuffle buffer, batch, `numpy_function` sorted gather from the memory map, parallel map, prefetch."""
    import tensorflow as tf

    size = images.shape[1]

    def gather(idx):
        order = np.argsort(idx)
        x = np.empty((len(idx), size, size), dtype=np.uint8)
        x[order] = images[idx[order]]
        return x, labels[idx]

    def load(idx):
        x, y = tf.numpy_function(gather, [idx], (tf.uint8, tf.float32))
        return tf.reshape(x, (-1, size, size, 1)), y

    ds = tf.data.Dataset.from_tensor_slices(rows.astype(np.int64))
    ds = ds.shuffle(min(len(rows), 2048), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch).map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class BareGather:
    """The floor: a permutation per epoch and one sorted fancy-index read per batch, nothing else."""

    def __init__(self, images: np.ndarray, batch: int):
        self.images, self.batch = images, batch

    def __iter__(self):
        order = np.random.default_rng(0).permutation(len(self.images))
        for i in range(0, len(order), self.batch):
            yield self.images[np.sort(order[i : i + self.batch])]


def keras_tf_feed(dataset):
    """What `model.fit` iterates on the TensorFlow backend: Keras's PyDataset adapter as a tf.data.Dataset."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    return PyDatasetAdapter(dataset).get_tf_dataset()


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
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved timings of each feed; the best counts"
    )
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

        from cxr.data.pipeline import CacheBatches

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
        feeds = {}
        for batch in (16, 64):
            ds = CacheBatches(prepared.images, labels, rows, batch_size=batch, training=True, seed=0)
            feeds[batch] = {
                "cxr PyDataset": ds,
                "as fit feeds it on TensorFlow": keras_tf_feed(ds),
                "old tf.data": tf_data_pipeline(prepared.images, labels, rows, batch),
                "bare memmap gather": BareGather(prepared.images, batch),
            }
        best = {(batch, name): 0.0 for batch, named in feeds.items() for name in named}
        for _ in range(args.rounds):  # interleaved, best of each: other load on the machine hits all alike
            for batch, named in feeds.items():
                for name, feed in named.items():
                    best[batch, name] = max(
                        best[batch, name], images_per_second(feed, args.images, repeats=1)
                    )
        for batch, named in feeds.items():
            study = images_per_second(
                study_pipeline(paths, args.size, batch), args.images, epochs=1, repeats=1
            )
            figures = " | ".join(f"{name} {best[batch, name]:7.0f}" for name in named)
            ratio = best[batch, "cxr PyDataset"] / study
            print(f"batch {batch:2d} img/s: {figures} | study's PNG pipeline {study:5.1f} (cxr {ratio:.0f}x)")


if __name__ == "__main__":
    main()
