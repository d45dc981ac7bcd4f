"""Localisation's cost on CPU: seconds per boxed image, and the share it adds to a test evaluation of
the size of NIH's official test list (25,596 images, of which 880 carry 984 boxes, one finding each).

A test evaluation predicts every image; localisation then makes one heatmap per boxed (image, finding)
and scores it at the boxes' 1024 px frame. Both are timed on random images with a model of random
weights (the cost does not depend on them) and scaled to NIH's counts.

    python bench/localisation_cost.py [--size 320] [--images 64] [--models small_cnn densenet121]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import keras
import numpy as np
from omegaconf import OmegaConf

from cxr.config import DenseNet121Config, SmallCnnConfig
from cxr.data.boxes import BOX_FRAME
from cxr.evaluation.localisation import score_map
from cxr.models import build_model
from cxr.serving.gradcam import ensemble_heatmaps

TEST_IMAGES, BOXED_PAIRS = 25_596, 984  # NIH's official test list; its boxes, one (image, finding) each
MODELS = {"small_cnn": SmallCnnConfig(), "densenet121": DenseNet121Config(weights=None)}
FRAME = (BOX_FRAME, BOX_FRAME)
BOX = np.array([[300.0, 350.0, 200.0, 180.0]])  # a typical NIH box (median corner and size)


def timed(fn, repeats: int = 2) -> float:
    """The fastest of `repeats` calls after one warm-up call (graph tracing, first allocation)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--images", type=int, default=64, help="images per timed batch")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--method", default="gradcam")
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Keras {keras.__version__} "
        f"on {keras.backend.backend()}, {args.size} px, batches of {args.images}, {args.method}"
    )
    print("| model | predict s/image | localisation s/boxed image (heatmap + scores) | test evaluation, "
          f"{TEST_IMAGES:,} images | localisation, {BOXED_PAIRS} boxes | time added |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 1), dtype=np.uint8)
    for name in args.models:
        keras.utils.set_random_seed(0)
        model = build_model(OmegaConf.structured(MODELS[name]), args.size, 14)
        predict = timed(lambda model=model: model.predict(images, batch_size=args.images, verbose=0))

        def localise(model=model):
            for heatmap in ensemble_heatmaps([model], [images], 0, FRAME, args.method):
                score_map(heatmap, BOX, 0.0, (5, 10, 20))

        per_image = timed(localise) / args.images
        evaluation = predict / args.images * TEST_IMAGES
        localisation = per_image * BOXED_PAIRS
        print(
            f"| {name} | {predict / args.images:.4f} | {per_image:.3f} | {evaluation / 60:.1f} min "
            f"| {localisation / 60:.1f} min | +{localisation / evaluation:.0%} |"
        )


if __name__ == "__main__":
    main()
