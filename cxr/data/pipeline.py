"""tf.data input pipeline over the prepared uint8 cache: shuffle, gather, augment, batch, prefetch.

It ships (B, H, W, 1) uint8 batches; grey-to-RGB and DenseNet normalisation are the model's first
layer (cxr.models.layers.GreyToImageNet). Measured on 2 CPU cores at 320 px, producing the float RGB
batches on the host capped the pipeline near 1,000 images/s (memory bandwidth), and it moves 12x
more bytes to the accelerator; see bench/README.md.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def augmenter(cfg, seed: int):
    """Keras preprocessing layers for the configured transforms, or None when all are off."""
    import keras

    steps = []
    if cfg.rotation_degrees:
        steps.append(keras.layers.RandomRotation(cfg.rotation_degrees / 360.0, fill_mode="constant", seed=seed))
    if cfg.shift_fraction:
        steps.append(
            keras.layers.RandomTranslation(cfg.shift_fraction, cfg.shift_fraction, fill_mode="constant", seed=seed)
        )
    if cfg.brightness:
        steps.append(keras.layers.RandomBrightness(cfg.brightness, value_range=(0.0, 255.0), seed=seed))
    if cfg.contrast:
        steps.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0.0, 255.0), seed=seed))
    if cfg.horizontal_flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    return keras.Sequential(steps, name="augment") if steps else None


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    *,
    batch_size: int,
    training: bool = False,
    seed: int = 0,
    shuffle_buffer: int = 2048,
    deterministic: bool = True,
    augment=None,
) -> tf.data.Dataset:
    """Batches of (x, y) for the given rows; reads only those rows of the memory-mapped cache.

    Training batches are shuffled (`seed`, `shuffle_buffer`) and, with `augment` (an AugmentConfig),
    randomly transformed; otherwise the rows come in the given order, untouched.
    """
    size = images.shape[1]
    transform = augmenter(augment, seed) if augment is not None else None
    labels = labels.astype(np.float32)

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(idx)  # memory-map reads in file order, results back in batch order
        x = np.empty((len(idx), size, size), dtype=np.uint8)
        x[order] = images[idx[order]]
        return x, labels[idx]

    def load(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.numpy_function(gather, [idx], (tf.uint8, tf.float32))
        x = tf.reshape(x, (-1, size, size, 1))
        y.set_shape((None, labels.shape[1]))
        if transform is not None:
            x = transform(tf.cast(x, tf.float32), training=True)
            x = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
        return x, y

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(rows, dtype=np.int64))
    if training:
        ds = ds.shuffle(min(len(rows), shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
