"""What the evidence (calibration, operating points, subgroups) and the report card add to an evaluation,
at the size of NIH's official test list, with synthetic predictions and metadata.

Times `evaluate_predictions` and `log_evaluation` (into a throwaway SQLite MLflow store) with the
evidence and card on and off, on validation (`--val-images`) and test, and prints the shares. Times are
this process's CPU seconds (`time.process_time`), so other work on a shared machine counts less.

    python bench/report_card.py [--images 25596] [--val-images 8652] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import mlflow
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from cxr.config import EvaluationConfig
from cxr.data.labels import NIH_PATHOLOGIES, NIH_PREVALENCE
from cxr.evaluation.report import evaluate_predictions, log_evaluation, write_card
from cxr.serving.inference import Predictions


def split(rng, images: int, patients: int, offset: int) -> Predictions:
    prevalence = np.asarray(list(NIH_PREVALENCE.values()))
    y = (rng.random((images, len(prevalence))) < prevalence).astype(np.float32)
    view = np.where(rng.random(images) < 0.6, "PA", "AP")
    noise = np.where(view == "AP", 1.3, 1.0)[:, None]
    s = 1 / (1 + np.exp(-(y * 1.6 - 2.5 + noise * rng.normal(size=y.shape))))
    meta = pd.DataFrame(
        {
            "image_id": [f"{offset + i:08d}.png" for i in range(images)],
            "sex": np.where(rng.random(images) < 0.56, "M", "F"),
            "age": rng.integers(1, 96, images),
            "view": view,
            "follow_up": rng.integers(0, 6, images),
        }
    )
    return Predictions(y, s.astype(np.float32), np.sort(rng.integers(0, patients, images)) + offset, meta)


def timed(predictions, cfg, plots: bool, store: str) -> tuple[float, float, float]:
    """CPU seconds of evaluate_predictions, of log_evaluation, and of writing the card once more alone."""
    mlflow.set_tracking_uri(store)
    if mlflow.get_experiment_by_name("bench") is None:  # its artifacts beside the database, not in ./mlruns
        artifacts = store.replace("sqlite:///", "").replace("mlflow.db", "artifacts")
        mlflow.create_experiment("bench", artifact_location=artifacts)
    mlflow.set_experiment("bench")
    start = time.process_time()
    evaluation = evaluate_predictions(predictions, cfg, NIH_PATHOLOGIES)
    scored = time.process_time() - start
    with mlflow.start_run():
        start = time.process_time()
        log_evaluation(evaluation, plots)
        logged = time.process_time() - start
        start = time.process_time()
        write_card(evaluation)
        card = time.process_time() - start
    return scored, logged, card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=25_596)
    parser.add_argument("--val-images", type=int, default=8_652)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    predictions = {
        "val": split(rng, args.val_images, 2_800, 0),
        "test": split(rng, args.images, 2_797, 10**6),
    }
    print(f"{platform.processor() or platform.machine()}, val {args.val_images}, test {args.images} images")
    base = OmegaConf.structured(EvaluationConfig)
    base.bootstrap.resamples = args.resamples
    settings = {"without evidence or card": {"subgroups": {"enabled": False}, "report": False}, "all": {}}
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        results = {
            label: timed(predictions, OmegaConf.merge(base, change), True, store)
            for label, change in settings.items()
        }
    for label, (scored, logged, _) in results.items():
        print(f"{label}: evaluate {scored:.1f} CPU s, log (with plots) {logged:.1f} CPU s")
    scored, logged, card = results["all"]
    print(
        f"the card alone (report.json + report.html, the logged plots reused): {card:.2f} CPU s, "
        f"{card / (scored + logged):.1%} of the evaluation with evidence"
    )
    base_total = sum(results["without evidence or card"][:2])
    print(
        f"calibration, operating points and subgroups add {scored + logged - base_total:.1f} CPU s "
        f"({(scored + logged) / base_total - 1:.0%})"
    )


if __name__ == "__main__":
    main()
