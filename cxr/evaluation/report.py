"""Turns predictions into the logged evaluation: metrics, per-disease tables, thresholds and plots.

Shared by `cxr.train` (right after fitting) and `cxr.evaluate` (a logged model, later), so both
write the same names to MLflow. `evaluate_predictions` is pure (numbers only); `log_evaluation`
writes them to the active run. Thresholds come from the validation split only and are then applied
unchanged to every split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr.data.counts import undefined_reason
from cxr.data.splits import SPLIT_TITLES
from cxr.evaluation import plots as figures
from cxr.evaluation.scoring import choose_thresholds, evaluate_split, operating_points
from cxr.runtime.errors import CxrError
from cxr.serving.inference import Predictions
from cxr.tracking import names as mn
from cxr.tracking.names import THRESHOLDS_ARTIFACT, UNDEFINED_TAG, per_disease_table

if TYPE_CHECKING:
    from cxr.config import EvaluationConfig  # a type only: config sits above evaluation

THRESHOLD_SPLIT = "val"


@dataclass(frozen=True)
class Evaluation:
    """Everything one evaluation logs: scalar metrics, thresholds and one table per split.

    A number that cannot be computed (no validation positives for a threshold, no test positives for an
    AUC, nothing called positive for a PPV) is left out of `metrics`, never logged as NaN; `undefined`
    says why, per finding, and the tables' `undefined` column per split.
    """

    metrics: dict[str, float]
    thresholds: dict  # the thresholds.json document
    tables: dict[str, pd.DataFrame]  # split -> per-disease table
    predictions: dict[str, Predictions]
    pathologies: tuple[str, ...]
    undefined: dict[str, str]  # finding -> why some of its numbers are undefined


def split_metrics(split: str, table: pd.DataFrame, summary: dict[str, float]) -> dict[str, float]:
    """MLflow names: `{split}/auc/<Disease>`, `{split}/auc_mean`, `{split}/sensitivity/<Disease>`, ..."""
    metrics = {mn.split_metric(split, k): v for k, v in summary.items()}
    for column in mn.PER_DISEASE:
        metrics.update({mn.per_disease(split, column, d): float(v) for d, v in table[column].items()})
    return metrics


def evaluate_predictions(
    predictions: dict[str, Predictions], cfg: EvaluationConfig, pathologies: Sequence[str]
) -> Evaluation:
    """Score every split in `predictions` (which must hold val, where thresholds are chosen)."""
    if THRESHOLD_SPLIT not in predictions:
        raise CxrError("operating thresholds are chosen on the validation split, and it was not evaluated")
    val = predictions[THRESHOLD_SPLIT]
    thresholds = choose_thresholds(val.labels, val.scores, cfg.threshold_method)
    by_disease = dict(zip(pathologies, thresholds.tolist(), strict=True))
    reasons = {
        split: {d: undefined_reason(p.labels[:, k], split) for k, d in enumerate(pathologies)}
        for split, p in predictions.items()
    }
    metrics: dict[str, float] = {mn.threshold(d): t for d, t in by_disease.items()}
    document = {
        "method": cfg.threshold_method,
        "chosen_on": THRESHOLD_SPLIT,
        "thresholds": {d: (None if np.isnan(t) else t) for d, t in by_disease.items()},
        "undefined": {d: r for d, r in reasons[THRESHOLD_SPLIT].items() if r},
    }
    b = cfg.bootstrap
    tables, notes = {}, {}
    for split, p in predictions.items():
        report = evaluate_split(
            p.labels, p.scores, p.patients, pathologies, b.resamples, b.confidence, b.seed
        )
        table = report.table.join(operating_points(p.labels, p.scores, thresholds, pathologies))
        notes[split] = {d: _notes(reasons, split, d, table.loc[d]) for d in pathologies}
        table["undefined"] = ["; ".join(n) for n in notes[split].values()]
        tables[split] = table
        metrics.update(split_metrics(split, table, report.summary))
    undefined = {}
    for d in pathologies:
        # the threshold's reason once (it is each split's too), then each split's own
        found = [reasons[THRESHOLD_SPLIT][d]] + [n for split in notes for n in notes[split][d]]
        found = [n for n in dict.fromkeys(found) if n and not n.startswith("threshold: ")]
        if found:
            undefined[d] = ", ".join(found)
    defined = {k: v for k, v in metrics.items() if np.isfinite(v)}
    return Evaluation(defined, document, tables, predictions, tuple(pathologies), undefined)


def _notes(reasons: dict[str, dict[str, str | None]], split: str, disease: str, row: pd.Series) -> list[str]:
    """Why some of a finding's numbers on `split` are undefined: `no test positives`, `threshold: no
    validation positives`, `no image called negative in test (NPV)`; empty where all are defined."""
    own, threshold = reasons[split][disease], reasons[THRESHOLD_SPLIT][disease]
    out = [own] if own else []
    if threshold:
        if split != THRESHOLD_SPLIT:
            out.append(f"threshold: {threshold}")
        return out
    title = SPLIT_TITLES.get(split, split)
    if row.tp + row.fp == 0:
        out.append(f"no image called positive in {title} (PPV)")
    if row.tn + row.fn == 0:
        out.append(f"no image called negative in {title} (NPV)")
    return out


def _log_figure(fig: Figure, path: str) -> None:
    mlflow.log_figure(fig, path)
    figures.plt.close(fig)  # pyplot as `plots` set it up (the Agg backend)


def _log_plots(evaluation: Evaluation, history: pd.DataFrame | None) -> None:
    names = evaluation.pathologies
    for split, p in evaluation.predictions.items():
        title = SPLIT_TITLES.get(split, split)
        _log_figure(
            figures.roc_figure(p.labels, p.scores, names, f"ROC, {title} set"), f"plots/roc_{split}.png"
        )
        _log_figure(
            figures.precision_recall_figure(p.labels, p.scores, names, f"Precision-recall, {title} set"),
            f"plots/precision_recall_{split}.png",
        )
        counts = evaluation.tables[split][["tp", "fp", "tn", "fn"]]  # no threshold: nothing called positive
        _log_figure(
            figures.confusion_figure(counts, f"Confusion at validation-chosen thresholds, {title} set"),
            f"plots/confusion_{split}.png",
        )
    if history is not None and len(history):
        _log_figure(figures.history_figure(history), "plots/history.png")


def log_evaluation(evaluation: Evaluation, plots: bool, history: pd.DataFrame | None = None) -> None:
    """Write an evaluation to the active MLflow run: metrics, evaluation/ tables and plots/.

    Each per-disease table is logged twice: as CSV, and with `mlflow.log_table` (one JSON table per
    split, a `disease` column) so the UI's artifact view lines it up across runs."""
    mlflow.log_text(json.dumps(evaluation.thresholds, indent=2), THRESHOLDS_ARTIFACT)
    if evaluation.undefined:
        mlflow.set_tag(UNDEFINED_TAG, "; ".join(f"{d}: {r}" for d, r in evaluation.undefined.items()))
    for split, table in evaluation.tables.items():
        mlflow.log_text(table.to_csv(float_format="%.6g"), per_disease_table(split))
        mlflow.log_table(table.rename_axis("disease").reset_index(), f"evaluation/{split}_per_disease.json")
    if plots:
        _log_plots(evaluation, history)
    mlflow.log_metrics(evaluation.metrics)


def summary_line(metrics: dict[str, float], split: str) -> str:
    """`0.8421 [0.8390, 0.8452]`: the mean AUC with its interval when one was computed."""
    name = mn.split_metric(split, mn.AUC_MEAN)
    mean = metrics.get(name, float("nan"))
    low, high = (metrics.get(bound) for bound in mn.interval(name))
    return f"{mean:.4f}" + (f" [{low:.4f}, {high:.4f}]" if low is not None else "")


def validation_and_test_line(metrics: dict[str, float], confidence: float) -> str:
    """`mean AUC [95% CI]: validation 0.8421 [...], test 0.8390 [...]`, the line every command ends with."""
    val, test = summary_line(metrics, "val"), summary_line(metrics, "test")
    return f"mean AUC [{confidence:.0%} CI]: validation {val}, test {test}"
