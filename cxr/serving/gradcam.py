"""Grad-CAM (Selvaraju et al., 2017): where in the image a cxr model (or an ensemble) sees a finding.

A map is ReLU(sum_c alpha_c A_c): A is the last 4-D feature map before the classifier head and
alpha_c the spatial mean of the class score's gradient with respect to channel c. The model is cut
in two at that layer, features = body(image) and score = head(features), so the gradient is an
ordinary gradient of `head` with respect to its input on every backend (a TensorFlow tape, `jax.grad`
over `stateless_call`, torch autograd); the weighting and normalisation are NumPy.

The same features and gradients give the other gradient methods the saliency literature compares
(`HEATMAP_METHODS`): HiResCAM (Draelos & Carin, 2020) weights each cell by its own gradient instead of
the channel's mean, so the map shows what the score actually read; Grad-CAM++ (Chattopadhay et al.,
2018) weights positive gradients by their higher-order terms, for several instances of one finding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import matplotlib
import numpy as np
from keras import ops
from PIL import Image, ImageDraw, ImageFont

from cxr.data.images import read_grey, resize
from cxr.runtime.errors import CxrError
from cxr.serving.heatmap_methods import HEATMAP_METHODS

if TYPE_CHECKING:
    from cxr.serving.pyfunc import CxrModel

BACKENDS = ("tensorflow", "jax", "torch")  # the Keras backends whose autodiff _gradients knows
OVERLAY_ALPHA = 0.4  # share of the colour map in the blended overlay; the X-ray stays readable


def _output_tensor(layer: keras.Layer):
    """The layer's output in the graph of the model that holds it.

    A nested sub-model (DenseNet121 as one layer) reports its *own* graph's output as `.output`,
    which is not connected to the outer model's inputs; its first call's node has the outer tensor.
    """
    if isinstance(layer, keras.Model):
        return layer._inbound_nodes[0].output_tensors[0]
    return layer.output


def _is_feature_map(layer: keras.Layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # a layer never called, or called more than once
        return False


def target_layer(model: keras.Model) -> str:
    """The name of the last layer with a (B, h, w, C) output that has learned weights at or before it.

    That is the last convolutional feature map before the head: small_cnn's last conv block
    (`pool{i}`), densenet121's backbone (whose output is its last activation, whether the backbone
    is one nested layer or its layers are inlined), densenet121_cbam's `cbam`. The input and the
    weightless grey-to-RGB preprocessing are 4-D too, but a map of those says nothing the model learned.
    """
    found, learned = None, False
    for layer in model.layers:
        learned = learned or bool(layer.weights)
        if learned and _is_feature_map(layer):
            found = layer.name
    if found is None:
        raise CxrError(
            f"model {model.name!r} has no layer with a 4-D (batch, height, width, channels) output after "
            "its first learned layer, so Grad-CAM has no feature map to weight; heatmaps need a "
            "convolutional model"
        )
    return found


@dataclass(frozen=True)
class _Split:
    body: keras.Model  # image -> feature map A
    head: keras.Model  # A -> the head's input (logit route) or the model's output
    score: Callable  # (head output, class index) -> (N,) tensor whose gradient Grad-CAM takes


def _split(model: keras.Model, layer: str) -> _Split:
    """Cut `model` at `layer`: every path from the input to the output must pass through it."""
    try:
        features = _output_tensor(model.get_layer(layer))
    except ValueError:
        raise CxrError(f"model {model.name!r} has no layer {layer!r} to take Grad-CAM at") from None
    last = model.layers[-1]
    logit_route = isinstance(last, keras.layers.Dense) and last.activation is keras.activations.sigmoid
    end = last.input if logit_route else model.output
    try:
        head = keras.Model(features, end, name=f"{model.name}_head")
    except ValueError as err:
        raise CxrError(
            f"Grad-CAM at layer {layer!r} of model {model.name!r}: the head after it also reads earlier "
            f"layers ({err}); choose a layer every path to the output passes through"
        ) from None
    score = _logit(last) if logit_route else _output
    return _Split(keras.Model(model.input, features, name=f"{model.name}_body"), head, score)


def _logit(dense: keras.layers.Dense) -> Callable:
    """Class k's pre-activation, from the final Dense layer's input and weights."""

    def score(out, k):
        logit = ops.matmul(out, ops.convert_to_tensor(dense.kernel)[:, k])
        return logit + ops.convert_to_tensor(dense.bias)[k] if dense.use_bias else logit

    return score


def _output(out, k):
    return out[:, k]


def _gradients(split: _Split, images: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, dscore/dA) as NumPy arrays, by the running Keras backend's own autodiff.

    The scores of a batch are summed: in inference mode no image's score depends on another's
    features, so the gradient of the sum is each image's own gradient.
    """
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise CxrError(
            f"Grad-CAM has no implementation for the Keras backend {backend!r}; "
            f"run with KERAS_BACKEND set to one of {', '.join(BACKENDS)}"
        )
    features = split.body(images, training=False)
    if backend == "tensorflow":
        import tensorflow as tf  # the running backend's autodiff: only that backend is installed

        with tf.GradientTape() as tape:
            tape.watch(features)
            total = ops.sum(split.score(split.head(features, training=False), class_index))
        grads = tape.gradient(total, features)
    elif backend == "jax":
        import jax  # the running backend's autodiff, as above

        trainable = [v.value for v in split.head.trainable_variables]
        frozen = [v.value for v in split.head.non_trainable_variables]

        def total(a):
            out, _ = split.head.stateless_call(trainable, frozen, a, training=False)
            return ops.sum(split.score(out, class_index))

        grads = jax.grad(total)(features)
    else:  # torch
        import torch  # the running backend's autodiff, as above

        features = features.detach().requires_grad_(True)
        with torch.enable_grad():
            total = ops.sum(split.score(split.head(features, training=False), class_index))
            (grads,) = torch.autograd.grad(total, features)
    return ops.convert_to_numpy(features), ops.convert_to_numpy(grads)


def heatmaps(
    model: keras.Model,
    images: np.ndarray,
    class_index: int,
    method: str = "gradcam",
    layer: str | None = None,
) -> np.ndarray:
    """(N, h, w) float32 maps in [0, 1] by one of `HEATMAP_METHODS`, as `gradcam` describes for Grad-CAM."""
    combine = HEATMAP_METHODS.get(method)
    images = np.asarray(images)
    expected = tuple(model.input_shape[1:])
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"{method}: model {model.name!r} takes (N, {expected}) images, got {images.shape}")
    if not 0 <= class_index < model.output_shape[-1]:
        raise ValueError(f"{method}: class_index {class_index} outside 0..{model.output_shape[-1] - 1}")
    split = _split(model, layer or target_layer(model))
    features, grads = _gradients(split, images, class_index)
    maps = np.maximum(combine(features, grads), 0.0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0).astype(np.float32)


def gradcam(model: keras.Model, images: np.ndarray, class_index: int, layer: str | None = None) -> np.ndarray:
    """(N, h, w) float32 Grad-CAM maps in [0, 1] at the feature map's resolution, one per image.

    `images` are (N, size, size, 1) grey uint8 at the model's input size (cxr models preprocess
    inside). `layer` defaults to `target_layer(model)`.

    The gradient is that of the class's *logit* (the pre-activation of the final sigmoid Dense
    layer, computed from that layer's input and weights) when the model ends in one, as every cxr
    model does; otherwise of the model's output. The probability would give the same map in exact
    arithmetic (d sigmoid(z) = sigmoid'(z) dz, a positive per-image factor that the division by the
    max removes), but float32 sigmoid'(z) underflows to 0 once p rounds to 1 (z > ~17), which would
    blank the map of exactly the confident findings one wants to see.

    Each map is divided by its maximum; an all-zero map (no positive evidence) stays zero.
    """
    return heatmaps(model, images, class_index, "gradcam", layer)


def heatmap_at(image_shape: tuple[int, int], maps: np.ndarray) -> np.ndarray:
    """(h, w) or (N, h, w) maps -> (H, W) or (N, H, W) by bilinear interpolation, float32 in [0, 1].

    Feature maps are a few cells wide (10 x 10 for DenseNet121 at 320 px); a heatmap belongs on the
    image the user gave, at that image's resolution, whatever size the model ran at.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 3:
        return np.stack([heatmap_at(image_shape, m) for m in maps]) if len(maps) else maps
    height, width = image_shape
    up = Image.fromarray(maps).resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(up, dtype=np.float32), 0.0, 1.0)


def _input_size(model: keras.Model) -> int:
    shape = model.input_shape
    if shape[1] != shape[2]:
        raise ValueError(f"model {model.name!r} takes non-square images {shape[1:3]}; cxr models are square")
    return int(shape[1])


def ensemble_heatmaps(
    models: Sequence[keras.Model],
    images: Sequence[np.ndarray],
    class_index: int,
    shape: tuple[int, int],
    method: str = "gradcam",
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """(N, H, W) float32: the members' maps of one batch, each brought to `shape`, averaged.

    `images[m]` is the batch as member m takes it, (N, size_m, size_m) or (N, size_m, size_m, 1) uint8
    at its own input size; `weights` (default equal) are the members' shares, as in the model's mean.
    The mean is not renormalised: where the members disagree the heatmap is weaker, which is the point.
    """
    if not models:
        raise ValueError("an ensemble heatmap needs at least one model")
    shares = np.full(len(models), 1.0 / len(models)) if weights is None else np.asarray(weights, np.float64)
    shares = shares / shares.sum()
    total = np.zeros((len(images[0]), *shape), dtype=np.float32)
    for model, batch, share in zip(models, images, shares, strict=True):
        batch = np.asarray(batch).reshape(len(batch), *model.input_shape[1:])
        total += np.float32(share) * heatmap_at(shape, heatmaps(model, batch, class_index, method))
    return total


def ensemble_gradcam(models: Sequence[keras.Model], image: np.ndarray, class_index: int) -> np.ndarray:
    """The mean of the members' Grad-CAM maps for one (H, W) grey uint8 image, as (H, W) float32 in [0, 1].

    Each member sees the image resized as the cache resizes for its own input size, and its map is
    brought back to (H, W) before averaging, so members at different sizes line up pixel for pixel.
    """
    image = np.asarray(image)
    if not models:
        raise ValueError("ensemble_gradcam needs at least one model")
    pixels = [resize(image, _input_size(model))[None] for model in models]
    return ensemble_heatmaps(models, pixels, class_index, image.shape[:2])[0]


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(10, height // 32))


def overlay_png(
    image: np.ndarray,
    heatmap: np.ndarray,
    path: str | Path,
    title: str | None = None,
    colormap: str = "jet",
    alpha: float = OVERLAY_ALPHA,
    boxes: np.ndarray | None = None,
) -> Path:
    """Write the (H, W) grey uint8 image with the (H, W) heatmap blended on top as an (H, W) RGB PNG
    (`blend`), creating its folder."""
    picture = blend(image, heatmap, title, colormap, alpha, boxes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return path


def blend(
    image: np.ndarray,
    heatmap: np.ndarray,
    title: str | None = None,
    colormap: str = "jet",
    alpha: float = OVERLAY_ALPHA,
    boxes: np.ndarray | None = None,
) -> Image.Image:
    """The (H, W) grey uint8 image with the (H, W) heatmap blended on top, as an (H, W) RGB picture
    (alpha=1: the colour-mapped heatmap alone, for a viewer that blends it itself).

    Composed with NumPy and PIL rather than a matplotlib figure, so the picture has exactly the
    image's pixels (no axes, margins or resampling) and can be laid over the original. `boxes`,
    (k, 4) x, y, w, h in the image's pixels, are outlined in white (an expert's, for localisation).
    """
    image, heatmap = np.asarray(image), np.asarray(heatmap, dtype=np.float32)
    if image.ndim != 2 or image.dtype != np.uint8 or heatmap.shape != image.shape:
        raise ValueError(
            f"blend expects an (H, W) uint8 image and a heatmap of the same shape, got "
            f"{image.dtype} {image.shape} and {heatmap.shape}"
        )
    colour = matplotlib.colormaps[colormap](np.clip(heatmap, 0.0, 1.0))[..., :3]
    grey = image.astype(np.float32)[..., None] / 255.0
    rgb = ((1.0 - alpha) * grey + alpha * colour) * 255.0
    picture = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    for x, y, w, h in np.asarray(boxes if boxes is not None else [], dtype=np.float64).reshape(-1, 4):
        ImageDraw.Draw(picture).rectangle(
            (x, y, x + w, y + h), outline="white", width=max(1, len(image) // 128)
        )
    if title:
        font = _font(image.shape[0])
        outline = max(1, image.shape[0] // 256)
        draw = ImageDraw.Draw(picture)
        draw.text((4, 4), title, fill="white", font=font, stroke_width=outline, stroke_fill="black")
    return picture


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def write_overlays(model: CxrModel, path: str, positives: list[str], folder: Path) -> list[Path]:
    """One Grad-CAM overlay per positive finding, averaged over the members, at the file's size."""
    image = read_grey(path)
    out = []
    for finding in positives:
        heatmap = ensemble_gradcam(model.members, image, model.pathologies.index(finding))
        target = folder / f"{_safe(Path(path).stem)}_{_safe(finding)}.png"
        out.append(overlay_png(image, heatmap, target, title=finding))
    return out
