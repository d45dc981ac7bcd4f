"""Turns predictions into the logged evaluation: metrics, per-disease tables, thresholds and plots.

Shared by `cxr.train` (right after fitting) and `cxr.evaluate` (a logged model, later), so both
write the same names to MLflow. Thresholds come from the validation split only and are then applied
unchanged to every split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd

from cxr import plots
from cxr.errors import CxrError
from cxr.evaluation import choose_thresholds, evaluate_split, operating_points
from cxr.labels import DISEASES

THRESHOLD_SPLIT = "val"
SPLIT_TITLES = {"train": "training", "val": "validation", "test": "test"}


@dataclass
class Predictions:
    """One split's ground truth, model scores and patient ids (for the patient-level bootstrap)."""

    labels: np.ndarray
    scores: np.ndarray
    patients: np.ndarray


def predict_splits(
    model, images: np.ndarray, labels: np.ndarray, patients: np.ndarray, rows: dict, batch_size: int
) -> dict[str, Predictions]:
    """Score the given splits ({split: row indices}) in a fixed order, no augmentation."""
    from cxr.data.pipeline import make_dataset

    out = {}
    for split, idx in rows.items():
        data = make_dataset(images, labels, idx, batch_size, training=False, seed=0)
        out[split] = Predictions(labels[idx], model.predict(data, verbose=0), patients[idx])
    return out


def split_metrics(split: str, table: pd.DataFrame, summary: dict[str, float]) -> dict[str, float]:
    """MLflow names: `{split}_auc_<Disease>`, `{split}_auc_mean`, `{split}_sensitivity_<Disease>`, ..."""
    metrics = {f"{split}_{k}": v for k, v in summary.items()}
    for column in ("auc", "auprc", "sensitivity", "specificity", "ppv", "npv"):
        metrics.update({f"{split}_{column}_{d}": float(v) for d, v in table[column].items()})
    return metrics


def _log_figure(fig: plt.Figure, path: str) -> None:
    mlflow.log_figure(fig, path)
    plt.close(fig)


def evaluate_and_log(predictions: dict[str, Predictions], cfg, history: pd.DataFrame | None = None) -> dict:
    """Evaluate every split in `predictions` (which must hold val) and log it all to the active run."""
    if THRESHOLD_SPLIT not in predictions:
        raise CxrError("operating thresholds are chosen on the validation split, and it was not evaluated")
    val = predictions[THRESHOLD_SPLIT]
    thresholds = choose_thresholds(val.labels, val.scores, cfg.threshold_method)
    by_disease = dict(zip(DISEASES, thresholds.tolist(), strict=True))
    metrics: dict[str, float] = {f"threshold_{d}": t for d, t in by_disease.items()}
    shipped = {d: (None if np.isnan(t) else t) for d, t in by_disease.items()}
    document = {"method": cfg.threshold_method, "chosen_on": THRESHOLD_SPLIT, "thresholds": shipped}
    mlflow.log_text(json.dumps(document, indent=2), "evaluation/thresholds.json")
    b = cfg.bootstrap
    for split, p in predictions.items():
        report = evaluate_split(p.labels, p.scores, p.patients, b.resamples, b.confidence, b.seed)
        table = report.table.join(operating_points(p.labels, p.scores, thresholds))
        metrics.update(split_metrics(split, table, report.summary))
        mlflow.log_text(table.to_csv(float_format="%.6g"), f"evaluation/{split}_per_disease.csv")
        if cfg.plots:
            title = SPLIT_TITLES.get(split, split)
            _log_figure(plots.roc_figure(p.labels, p.scores, f"ROC, {title} set"), f"plots/roc_{split}.png")
            _log_figure(
                plots.precision_recall_figure(p.labels, p.scores, f"Precision-recall, {title} set"),
                f"plots/precision_recall_{split}.png",
            )
            counts = table[["tp", "fp", "tn", "fn"]]  # a disease without a threshold calls nothing positive
            _log_figure(
                plots.confusion_figure(counts, f"Confusion at validation-chosen thresholds, {title} set"),
                f"plots/confusion_{split}.png",
            )
    if cfg.plots and history is not None and len(history):
        _log_figure(plots.history_figure(history), "plots/history.png")
    mlflow.log_metrics(metrics)
    return metrics


def summary_line(metrics: dict[str, float], split: str) -> str:
    """`0.8421 [0.8390, 0.8452]`: the mean AUC with its interval when one was computed."""
    mean = metrics.get(f"{split}_auc_mean", float("nan"))
    low, high = metrics.get(f"{split}_auc_mean_ci_low"), metrics.get(f"{split}_auc_mean_ci_high")
    return f"{mean:.4f}" + (f" [{low:.4f}, {high:.4f}]" if low is not None else "")
