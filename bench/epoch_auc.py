"""The per-epoch AUC (`cxr.training.metrics.PresentLabelsAUC`): how far its thresholded approximation is from
the exact mean AUC evaluation reports, and what one batch update costs, by number of thresholds.

Labels at NIH's prevalences for a validation-sized set (Hernia left out, as a small split may), two
kinds of scores: a fair classifier's (spread over [0, 1]) and an untrained model's (crowded within
+-0.01 of 0.5, where buckets are coarsest). Cost: a compiled `evaluate` pass per batch with the
metric minus the same pass without it, on the current backend (`KERAS_BACKEND`), median of repeats.

    python bench/epoch_auc.py [--images 8653] [--batch 128]
"""

from __future__ import annotations

import argparse
import platform
import time

import keras
import numpy as np

from cxr.data.labels import NIH_PATHOLOGIES, NIH_PREVALENCE
from cxr.evaluation.scoring import evaluate_split
from cxr.training.metrics import PresentLabelsAUC

THRESHOLDS = (200, 1000, 5000)


def labels(n: int, rng: np.random.Generator) -> np.ndarray:
    prevalence = np.array([NIH_PREVALENCE[d] for d in NIH_PATHOLOGIES])
    y = (rng.random((n, len(prevalence))) < prevalence).astype(np.float32)
    y[:, NIH_PATHOLOGIES.index("Hernia")] = 0.0
    return y


def epoch_auc(y: np.ndarray, s: np.ndarray, thresholds: int, batch: int) -> float:
    metric = PresentLabelsAUC(y.shape[1], num_thresholds=thresholds)
    for start in range(0, len(y), batch):
        metric.update_state(y[start : start + batch], s[start : start + batch])
    return float(metric.result())


def evaluate_seconds(thresholds: int | None, batch: int, batches: int = 200, repeats: int = 5) -> float:
    """Seconds per batch of a compiled `evaluate` pass over `batches` batches, with the metric (or,
    for None, without any: the baseline the metric's cost is measured against)."""
    rng = np.random.default_rng(1)
    y = labels(batch * batches, rng)
    s = rng.random(y.shape).astype(np.float32)
    model = keras.Sequential([keras.Input((y.shape[1],)), keras.layers.Identity()])
    metrics = [] if thresholds is None else [PresentLabelsAUC(y.shape[1], num_thresholds=thresholds)]
    model.compile(loss="mse", metrics=metrics)  # Keras compiles the update as in training
    model.evaluate(s, y, batch_size=batch, verbose=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.evaluate(s, y, batch_size=batch, verbose=0)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8653, help="validation images (official split: 8,653)")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y = labels(args.images, rng)
    scores = {
        "fair classifier": np.clip(0.25 * y + rng.beta(2, 5, y.shape), 0, 1),
        "untrained (0.5 +- 0.01)": 0.5 + 0.01 * (rng.random(y.shape) - 0.5) * 2 + 0.002 * y,
    }
    patients = np.arange(args.images)
    print(f"{platform.processor() or platform.machine()}, {keras.backend.backend()}, {args.images} images")
    print("| scores | thresholds | epoch AUC | exact mean AUC | difference | cost per batch |")
    print("|---|---|---|---|---|---|")
    baseline = evaluate_seconds(None, args.batch)
    cost = {t: evaluate_seconds(t, args.batch) - baseline for t in THRESHOLDS}
    for name, s in scores.items():
        s = s.astype(np.float32)
        exact = evaluate_split(y, s, patients, NIH_PATHOLOGIES, 0, 0.95, 0).summary["auc_mean"]
        for t in THRESHOLDS:
            value = epoch_auc(y, s, t, args.batch)
            print(
                f"| {name} | {t} | {value:.4f} | {exact:.4f} | {value - exact:+.4f} | "
                f"{cost[t] * 1e3:.2f} ms |"
            )


if __name__ == "__main__":
    main()
