"""CBAM (Woo et al., 2018): channel attention, then spatial attention, as serializable Keras layers.

The 2025 study convolved the feature map itself in its "spatial attention"; here the 7x7 convolution
sees exactly the two pooled maps (channel-wise mean and max), as the CBAM paper defines it.

Each layer hands its dtype policy to the layers it creates, so under a mixed policy (trainer.precision)
the whole block computes in the same 16-bit type, also when a saved model is loaded in a float32 process.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="cxr")
class ChannelAttention(layers.Layer):
    """A shared two-layer MLP on the average- and max-pooled features, summed, sigmoid, multiplied in."""

    def __init__(self, reduction: int = 16, **kwargs):
        super().__init__(**kwargs)
        if reduction < 1:
            raise ValueError(f"ChannelAttention: reduction must be >= 1, got {reduction}")
        self.reduction = int(reduction)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        hidden = max(1, channels // self.reduction)
        self.hidden = layers.Dense(hidden, activation="relu", dtype=self.dtype_policy, name="mlp_hidden")
        self.project = layers.Dense(channels, dtype=self.dtype_policy, name="mlp_out")
        self.hidden.build((None, channels))
        self.project.build((None, self.hidden.units))
        super().build(input_shape)

    def call(self, inputs):
        avg = ops.mean(inputs, axis=(1, 2))
        peak = ops.max(inputs, axis=(1, 2))
        weights = ops.sigmoid(self.project(self.hidden(avg)) + self.project(self.hidden(peak)))
        return inputs * weights[:, None, None, :]

    def get_config(self) -> dict:
        return {**super().get_config(), "reduction": self.reduction}


@keras.saving.register_keras_serializable(package="cxr")
class SpatialAttention(layers.Layer):
    """A k x k convolution with sigmoid over [mean over channels, max over channels], multiplied in."""

    def __init__(self, kernel_size: int = 7, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)

    def build(self, input_shape):
        self.conv = layers.Conv2D(
            1, self.kernel_size, padding="same", activation="sigmoid", dtype=self.dtype_policy, name="conv"
        )
        self.conv.build((*input_shape[:-1], 2))
        super().build(input_shape)

    def pooled(self, inputs):
        """The two maps the convolution sees: (B, H, W, 2)."""
        return ops.concatenate(
            [ops.mean(inputs, axis=-1, keepdims=True), ops.max(inputs, axis=-1, keepdims=True)], axis=-1
        )

    def call(self, inputs):
        return inputs * self.conv(self.pooled(inputs))

    def get_config(self) -> dict:
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="cxr")
class CBAM(layers.Layer):
    """Convolutional Block Attention Module: refines a feature map, same shape in and out."""

    def __init__(self, reduction: int = 16, kernel_size: int = 7, **kwargs):
        super().__init__(**kwargs)
        self.reduction = int(reduction)
        self.kernel_size = int(kernel_size)
        self.channel = ChannelAttention(self.reduction, dtype=self.dtype_policy, name="channel_attention")
        self.spatial = SpatialAttention(self.kernel_size, dtype=self.dtype_policy, name="spatial_attention")

    def build(self, input_shape):
        self.channel.build(input_shape)
        self.spatial.build(input_shape)
        super().build(input_shape)

    def call(self, inputs):
        return self.spatial(self.channel(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "reduction": self.reduction, "kernel_size": self.kernel_size}
