"""The networks: `MODELS` (the builders by name), the layers they share, and `build_model`.

It imports only `cxr.runtime` (and config schemas as type hints): no MLflow, no training.

`model.name` (or `model._target_`, a builder in your own code) picks a builder that
maps the preprocessed image tensor to 14 outputs: `builder(cfg, x, num_classes) -> outputs`.

Every model takes raw grey images, (N, size, size, 1) uint8: training-time augmentation (when asked
for), then the model's preprocessing (`PREPROCESSING`: GreyToImageNet, or GreyToUnit for the small
CNN), then the builder's layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

from cxr.models import densenet as _densenet  # noqa: F401  (each module registers its builders)
from cxr.models import small_cnn as _small_cnn  # noqa: F401
from cxr.models.builders import MODELS
from cxr.models.layers import GreyToImageNet, GreyToUnit, augmentation

if TYPE_CHECKING:  # types only: config sits above models
    from cxr.config import AugmentConfig, ModelConfig

# The preprocessing layer of each registered model that does not take GreyToImageNet (the DenseNets'
# ImageNet weights need its 3-channel normalised copy, and a builder of your own gets it as documented):
# the small CNN learns from scratch on the one grey channel.
PREPROCESSING: dict[str, type[keras.layers.Layer]] = {"small_cnn": GreyToUnit}


def build_model(
    cfg: ModelConfig, image_size: int, num_classes: int, augment: AugmentConfig | None = None
) -> keras.Model:
    """The model `cfg` (a model config option) picks, for (image_size, image_size, 1) uint8 input.

    `cfg` is typed by the base schema, `ModelConfig`: the option may be any model's schema, or a user's
    `schema_custom` option (`_target_`), which has no dataclass.

    `augment` (an AugmentConfig, e.g. `cfg.dataset.augment`) adds its random transforms as the
    model's `augment` block, between the input and the preprocessing: active in training only
    (Keras's random layers are the identity at inference), on the accelerator, on every backend.
    """
    inputs = keras.Input(shape=(image_size, image_size, 1), dtype="uint8", name="image")
    x = inputs
    block = augmentation(augment) if augment is not None else None
    if block is not None:
        x = block(x)
    custom = "_target_" in cfg.keys()  # noqa: SIM118  (keys(): a `_target_` left unset counts)
    preprocess = GreyToImageNet if custom else PREPROCESSING.get(cfg.name, GreyToImageNet)
    outputs = MODELS.for_option(cfg)(cfg, preprocess(name="preprocess")(x), num_classes)
    return keras.Model(inputs, outputs, name=cfg.name)


__all__ = ["MODELS", "build_model"]
