"""DenseNet121 backbones: the CheXNet-style baseline and the 2025 study's DenseNet121 + CBAM head."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import keras
from keras import layers

from cxr.models.builders import MODELS
from cxr.models.cbam import CBAM
from cxr.runtime.errors import CxrError

if TYPE_CHECKING:  # types only: config sits above models
    from cxr.config import DenseNet121CbamConfig, DenseNet121Config

IMAGENET_CACHE = "~/.keras/models/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"


def _weights_argument(weights: str | None) -> str | None:
    if weights in (None, "null", "none", "imagenet"):
        return None if weights in (None, "null", "none") else "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CxrError(
            f"model.weights={weights!r}: no such file. Give `imagenet`, a path to a DenseNet121 "
            "weights file (.h5, .weights.h5) or `null` for random initialisation."
        )
    return str(path.resolve())


def _load_backbone(weights: str | None, input_shape: tuple[int, ...]) -> keras.Model:
    source = _weights_argument(weights)
    try:
        return keras.applications.DenseNet121(include_top=False, weights=source, input_shape=input_shape)
    except Exception as err:  # Keras raises a bare Exception for a failed download
        if source == "imagenet" and "URL fetch failure" in str(err):
            raise _download_failure(str(err)) from None
        if source not in (None, "imagenet"):
            raise CxrError(f"model.weights={weights!r} could not be loaded into DenseNet121: {err}") from None
        raise


def _download_failure(keras_message: str) -> CxrError:
    """What failed and what to do, in full. Keras says `URL fetch failure on URL: CODE -- REASON`, where
    CODE is often None; the URL and the reason are what a user needs, never cut short."""
    text = " ".join(keras_message.split())
    where, _, reason = text.removeprefix("URL fetch failure on ").partition(" -- ")
    url = where.rsplit(": ", 1)[0] if reason else ""
    failure = f"from {url}: {reason}" if reason else f"({text})"
    return CxrError(
        f"model.weights=imagenet: could not download the DenseNet121 ImageNet weights {failure}. "
        f"Offline, copy that file to {IMAGENET_CACHE}, or pass its path as "
        "model.weights=/path/to/weights.h5, or use model.weights=null to start from random weights."
    )


def _freeze(backbone: keras.Model, frozen: str) -> None:
    """`none`: all trainable; `all`: the whole backbone frozen; a layer name: every layer before it."""
    if frozen == "none":
        return
    if frozen == "all":
        backbone.trainable = False
        return
    names = [layer.name for layer in backbone.layers]
    if frozen not in names:
        raise CxrError(
            f"model.frozen={frozen!r} is neither none, all nor a DenseNet121 layer name "
            f"(e.g. {names[len(names) // 2]!r}; see `keras.applications.DenseNet121().summary()`)"
        )
    for layer in backbone.layers[: names.index(frozen)]:
        layer.trainable = False


def densenet121_features(cfg: DenseNet121Config, x: keras.KerasTensor) -> keras.KerasTensor:
    backbone = _load_backbone(cfg.weights, tuple(x.shape[1:]))
    _freeze(backbone, cfg.frozen)
    return backbone(x)


def _regulariser(l2: float):
    return keras.regularizers.L2(l2) if l2 else None


@MODELS.register("densenet121")
def build_densenet121(cfg: DenseNet121Config, x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    """CheXNet: DenseNet121 features, global average pooling, one sigmoid per disease."""
    x = layers.GlobalAveragePooling2D(name="gap")(densenet121_features(cfg, x))
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="sigmoid", dtype="float32", name="predictions")(x)


@MODELS.register("densenet121_cbam")
def build_densenet121_cbam(
    cfg: DenseNet121CbamConfig, x: keras.KerasTensor, num_classes: int
) -> keras.KerasTensor:
    """The 2025 study: CBAM on the final feature map, then a two-layer dense head with dropout."""
    x = CBAM(cfg.cbam.reduction, cfg.cbam.kernel_size, name="cbam")(densenet121_features(cfg, x))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    reg = _regulariser(cfg.l2)
    for i, units in enumerate(cfg.dense_units):
        x = layers.Dense(units, activation="relu", kernel_regularizer=reg, name=f"dense{i}")(x)
        x = layers.Dropout(cfg.dropout, name=f"dropout{i}")(x)
    return layers.Dense(num_classes, activation="sigmoid", dtype="float32", name="predictions")(x)
