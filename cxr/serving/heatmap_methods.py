"""How each gradient heatmap method turns a feature map and its gradient into a map: NumPy only.

Each takes A and dscore/dA, both (N, h, w, C), and returns (N, h, w) before the ReLU and the division
by the maximum (`cxr.serving.gradcam.heatmaps` does both). No Keras here, so the config's value check
lists the methods without loading a backend.
"""

from __future__ import annotations

import numpy as np

from cxr.runtime.builders import Builders

HEATMAP_METHODS: Builders = Builders("heatmap method")


@HEATMAP_METHODS.register("gradcam")
def _gradcam_map(features: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """sum_c alpha_c A_c with alpha_c the spatial mean of channel c's gradient."""
    return np.einsum("nhwc,nc->nhw", features, grads.mean(axis=(1, 2)))


@HEATMAP_METHODS.register("hirescam")
def _hirescam_map(features: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """sum_c dS/dA_c * A_c, cell by cell: the score's own first-order attribution to each location."""
    return np.einsum("nhwc,nhwc->nhw", features, grads)


@HEATMAP_METHODS.register("gradcampp")
def _gradcampp_map(features: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++'s weights sum_ij a_ij ReLU(g_ij), a = g^2 / (2 g^2 + sum_ab A_ab g^3), in the usual
    closed form for an exponential score (as pytorch-grad-cam and the paper's code compute it)."""
    g2, g3 = grads**2, grads**3
    total = features.sum(axis=(1, 2), keepdims=True)
    denominator = 2.0 * g2 + total * g3
    a = np.divide(g2, denominator, out=np.zeros_like(g2), where=np.abs(denominator) > 1e-12)
    weights = (a * np.maximum(grads, 0.0)).sum(axis=(1, 2))
    return np.einsum("nhwc,nc->nhw", features, weights)
