"""Training throughput of a real cxr step: images/s and peak memory, fed by cxr's data path from a
prepared cache and, for comparison, by one batch held in memory, so a data-path stall shows as a ratio.

The step is cxr's: `cxr.models.build_model` (`densenet121_cbam`, random weights, the default config),
the `dynamic_bce` loss, the per-epoch metrics of every training run and AdamW at the trainer's
defaults, compiled by Keras on the current backend (`KERAS_BACKEND`) and run by `model.fit`. The data
path is `cxr.data.pipeline.CacheBatches` over a `.npy` memory map in `cxr.data.cache`'s format
(N random uint8 images, built under --cache on first use and reused), shuffled as in training. The
in-memory figure runs the same `fit` on one batch that is reused every step (on JAX it stays in device
memory). ratio = data path / in-memory: about 1 means the data path keeps up.

On a GPU (JAX with CUDA, Keras 3, numpy; no TensorFlow, Hydra, MLflow needed), from the repository root:

    KERAS_BACKEND=jax PYTHONPATH=. python bench/train_throughput.py \\
        --sizes 224 320 --batches 16 64 128 --precisions float32 mixed_bfloat16

A quick check on a CPU:

    KERAS_BACKEND=jax PYTHONPATH=. python bench/train_throughput.py --model small_cnn --sizes 32 \\
        --batches 8 --precisions float32 --steps 2 --warmup 1 --images 64

It prints one markdown table row per (size, batch, precision). Peak memory is the accelerator's peak
so far in this process (JAX `memory_stats()['peak_bytes_in_use']`; TensorFlow's GPU peak, reset per
setting), else the process's peak resident memory (RSS); JAX's and RSS peaks never go down, so list
the settings from small to large. The synthetic cache sits in the page cache: a real one larger than
memory adds disk reads that this does not measure.

Imports: numpy, keras, cxr.models, cxr.training.losses, cxr.training.metrics, cxr.data.pipeline and
cxr.data.cache only (tested in tests/test_bench.py with every other heavy package blocked).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import keras
import numpy as np

from cxr.data import cache
from cxr.data.pipeline import CacheBatches
from cxr.models import build_model
from cxr.training.losses import build_loss
from cxr.training.metrics import epoch_metrics

NUM_CLASSES = 14
PREVALENCE = 0.05  # about NIH's mean per-finding prevalence
# The config schemas' defaults (cxr/config.py, which needs Hydra), with random weights; a test keeps
# these equal to the schemas.
MODELS = {
    "densenet121_cbam": {
        "name": "densenet121_cbam",
        "weights": None,
        "frozen": "none",
        "dropout": 0.3,
        "cbam": {"reduction": 16, "kernel_size": 7},
        "dense_units": [128, 64],
        "l2": 1e-3,
    },
    "small_cnn": {
        "name": "small_cnn",
        "filters": [16, 32, 64],
        "convs_per_block": 1,
        "dense_units": 64,
        "dropout": 0.2,
        "l2": 0.0,
        "pooling": "avg",
    },
}
LOSS = {"name": "dynamic_bce", "smoothing_factor": 0.1, "epsilon": 1e-7}
OPTIMIZER = {"learning_rate": 1e-3, "weight_decay": 1e-4}  # the trainer's default adamw
THRESHOLD = 0.5  # evaluation.threshold's default


class Option(dict):
    """A config option as the builders read it (`cfg.key`, `cfg.keys()`), without OmegaConf."""

    def __init__(self, mapping: dict):
        super().__init__({k: Option(v) if isinstance(v, dict) else v for k, v in mapping.items()})

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def synthetic_cache(cache_dir: str | os.PathLike, count: int, size: int) -> np.ndarray:
    """A prepared cache of `count` random images at `size`, in cxr.data.cache's format: built once."""
    paths = [f"synthetic/{i:08d}.png" for i in range(count)]
    key = cache.cache_key(paths, size)
    folder = Path(cache_dir) / f"{size}px-{key}"
    if not (folder / cache.MANIFEST).is_file():
        partial = folder.with_name(f".{folder.name}.partial")
        partial.mkdir(parents=True, exist_ok=True)
        images = np.lib.format.open_memmap(
            partial / cache.IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(count, size, size)
        )
        rng = np.random.default_rng(size)
        for start in range(0, count, 256):
            images[start : start + 256] = rng.integers(0, 256, images[start : start + 256].shape, np.uint8)
        images.flush()
        del images
        manifest = {"size": size, "count": count, "key": key, "failures": {}}
        (partial / cache.MANIFEST).write_text(json.dumps(manifest))
        os.replace(partial, folder)
    return cache.open_cache(folder, count, size, key).images


class OneBatch(keras.utils.PyDataset):
    """The same (x, y) every step: the in-memory baseline."""

    def __init__(self, x, y, steps: int):
        super().__init__()
        self.x, self.y, self.steps = x, y, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        if not 0 <= index < self.steps:
            raise IndexError(index)
        return self.x, self.y


def device_name() -> str:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}:{getattr(device, 'device_kind', device.platform)}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"gpu:{details.get('device_name', gpus[0].name)}"
    return "cpu"


def reset_peak_memory() -> None:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory() -> str:
    """The accelerator's peak bytes in use where the backend tells, else the process's peak RSS."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB device"
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return f"{tf.config.experimental.get_memory_info('GPU:0')['peak'] / 2**30:.2f} GiB device"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def timed_fit(model, batches) -> float:
    """Seconds `model.fit` takes for one pass over `batches` (fit ends by reading the logs: synchronised)."""
    start = time.perf_counter()
    model.fit(batches, epochs=1, shuffle=False, verbose=0)
    return time.perf_counter() - start


def measure(model_name: str, images: np.ndarray, labels: np.ndarray, batch: int, precision: str, args):
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    reset_peak_memory()
    size = images.shape[1]
    model = build_model(Option(MODELS[model_name]), size, NUM_CLASSES)
    model.compile(
        optimizer=keras.optimizers.AdamW(**OPTIMIZER),
        loss=build_loss(Option(LOSS), labels),
        metrics=epoch_metrics(NUM_CLASSES, THRESHOLD),
    )
    n = len(images)

    def data_path(steps: int, seed: int):
        rows = np.arange(steps * batch) % n  # enough rows for `steps` full batches
        return CacheBatches(images, labels, rows, batch_size=batch, training=True, seed=seed)

    timed_fit(model, data_path(args.warmup, seed=1))  # compile, allocate
    fed = args.steps * batch / timed_fit(model, data_path(args.steps, seed=2))
    x, y = data_path(1, seed=3)[0]
    if keras.backend.backend() == "jax":
        x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)  # held in device memory
    timed_fit(model, OneBatch(x, y, args.warmup))
    held = args.steps * batch / timed_fit(model, OneBatch(x, y, args.steps))
    return fed, held, peak_memory()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="densenet121_cbam")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--cache", default="data/bench-cache", help="folder of the synthetic prepared caches")
    parser.add_argument("--images", type=int, default=2048, help="images in the synthetic cache")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    labels = (rng.random((args.images, NUM_CLASSES)) < PREVALENCE).astype(np.float32)
    backend, device = keras.backend.backend(), device_name()
    print(
        f"keras {keras.__version__}, backend {backend}, device {device}, model {args.model}, "
        f"{args.steps} timed steps after {args.warmup}, cache of {args.images} images"
    )
    columns = ["backend", "device", "size", "batch", "precision", "data path img/s", "in-memory img/s"]
    columns += ["ratio", "peak memory"]
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for size in args.sizes:
        images = synthetic_cache(args.cache, args.images, size)
        for batch in args.batches:
            for precision in args.precisions:
                fed, held, peak = measure(args.model, images, labels, batch, precision, args)
                print(
                    f"| {backend} | {device} | {size} | {batch} | {precision} | {fed:,.1f} | {held:,.1f} | "
                    f"{fed / held:.2f} | {peak} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
