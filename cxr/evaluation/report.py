"""Turns predictions into the logged evaluation: metrics, per-disease tables, thresholds and plots.

Shared by `cxr.train` (right after fitting) and `cxr.evaluate` (a logged model, later), so both
write the same names to MLflow. `evaluate_predictions` is pure (numbers only); `log_evaluation`
writes them to the active run. Thresholds come from the validation split only and are then applied
unchanged to every split.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr.data.counts import undefined_reason
from cxr.data.splits import SPLIT_TITLES
from cxr.evaluation import plots as figures
from cxr.evaluation.calibrators import calibrated
from cxr.evaluation.evidence import Evidence, evidence, evidence_metrics
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
    evidence: Evidence | None = None  # calibration, operating points at a target, subgroups
    settings: dict = field(default_factory=dict)  # what the report card says it was computed with
    images: dict = field(default_factory=dict)  # split -> the card's plots (base64 PNG), kept for rewrites


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
    beyond = evidence(predictions, cfg, pathologies, THRESHOLD_SPLIT)
    document["operating_points"] = {
        point: {d: (None if np.isnan(t) else float(t)) for d, t in zip(pathologies, th, strict=True)}
        for point, th in beyond.thresholds.items()
    }
    tables, notes = {}, {}
    for split, p in predictions.items():
        report = evaluate_split(
            p.labels, p.scores, p.patients, pathologies, b.resamples, b.confidence, b.seed
        )
        table = report.table.join(operating_points(p.labels, p.scores, thresholds, pathologies))
        table = table.join(beyond.splits[split].calibration)
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
    metrics.update(evidence_metrics(beyond, pathologies))
    defined = {k: v for k, v in metrics.items() if np.isfinite(v)}
    settings = {
        "ece_bins": cfg.ece_bins,
        "flag_gap": cfg.subgroups.flag_gap,
        "min_positives": cfg.subgroups.min_positives,
        "card": cfg.report,
    }
    return Evaluation(defined, document, tables, predictions, tuple(pathologies), undefined, beyond, settings)


def evaluate_calibrated(
    predictions: dict[str, Predictions], cfg: EvaluationConfig, pathologies: Sequence[str]
) -> tuple[Evaluation, dict]:
    """(the evaluation of the predictions through the calibrator `cfg.calibration` fitted on validation,
    that calibrator's document): a trained model and an ensemble alike, so the thresholds and operating
    points they store are chosen on the scores they serve. The metrics hold each split's ECE before too."""
    predictions, calibration, before = calibrated(predictions, pathologies, cfg.calibration, cfg.ece_bins)
    evaluation = evaluate_predictions(predictions, cfg, pathologies)
    evaluation.metrics.update(before)
    return evaluation, calibration


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


def _log_figure(fig: Figure, path: str) -> bytes:
    """Logs the figure as a PNG at `path` and returns the PNG, so the report card embeds the same image."""
    png = figures.png_bytes(fig)
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / Path(path).name
        file.write_bytes(png)
        mlflow.log_artifact(str(file), str(Path(path).parent))
    return png


def _log_plots(evaluation: Evaluation, history: pd.DataFrame | None) -> dict[str, bytes]:
    """Logs the plots; returns each PNG by artifact path."""
    drawn: dict[str, bytes] = {}
    names = evaluation.pathologies
    for split, p in evaluation.predictions.items():
        title = SPLIT_TITLES.get(split, split)
        drawn[f"plots/roc_{split}.png"] = _log_figure(
            figures.roc_figure(p.labels, p.scores, names, f"ROC, {title} set"), f"plots/roc_{split}.png"
        )
        drawn[f"plots/precision_recall_{split}.png"] = _log_figure(
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
    return drawn


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
    drawn = _log_plots(evaluation, history) if plots else {}
    log_evidence(evaluation, plots, drawn)
    mlflow.log_metrics(evaluation.metrics)


def log_evidence(evaluation: Evaluation, plots: bool, drawn: dict[str, bytes] | None = None) -> None:
    """Operating points, subgroups, reliability diagrams, validation predictions and the report card."""
    from cxr.evaluation import card  # here: Jinja2 and the card's figures only when an evaluation logs
    from cxr.evaluation.stored_predictions import predictions_frame

    if evaluation.evidence is None:
        return
    drawn = {} if drawn is None else drawn
    for split, se in evaluation.evidence.splits.items():
        mlflow.log_text(
            se.operating_points.to_csv(float_format="%.6g"), mn.evidence_table(split, "operating_points")
        )
        if se.subgroups is not None:
            mlflow.log_text(
                se.subgroups.table.to_csv(index=False, float_format="%.6g"),
                mn.evidence_table(split, "subgroups"),
            )
            mlflow.log_text(
                se.subgroups.gaps.to_csv(index=False, float_format="%.6g"),
                mn.evidence_table(split, "subgroup_gaps"),
            )
        if plots:
            p, title = evaluation.predictions[split], SPLIT_TITLES.get(split, split)
            bins = evaluation.settings.get("ece_bins", 15)
            fig = figures.reliability_figure(
                p.labels, p.scores, evaluation.pathologies, bins, f"Reliability, {title} set"
            )
            drawn[f"plots/reliability_{split}.png"] = _log_figure(fig, f"plots/reliability_{split}.png")
    if THRESHOLD_SPLIT in evaluation.predictions:
        frame = predictions_frame(evaluation.predictions[THRESHOLD_SPLIT], evaluation.pathologies)
        mlflow.log_text(frame.to_csv(index=False, float_format="%.7g"), mn.VAL_PREDICTIONS_ARTIFACT)
    if evaluation.settings.get("card", True):
        evaluation.images.update(card.plots(evaluation, drawn if plots else {}))
        write_card(evaluation)


def write_card(evaluation: Evaluation, identity: dict | None = None) -> None:
    """report.json and report.html into the active run; again after registration, naming the version
    (`identity`), with the plots the evaluation drew."""
    from cxr.evaluation import card  # here: Jinja2 only when a card is written

    if not evaluation.settings.get("card", True) or evaluation.evidence is None:
        return
    doc = card.document(evaluation, run_identity(identity))
    mlflow.log_text(json.dumps(doc, indent=1), mn.REPORT_JSON_ARTIFACT)
    mlflow.log_text(card.render_html(doc, evaluation.images), mn.REPORT_HTML_ARTIFACT)


def run_identity(extra: dict | None = None) -> dict:
    """Who the active run's model is, for the card: run, name, experiment, commit, split digest, members."""
    run = mlflow.active_run()
    if run is None:
        return dict(extra or {})
    full = mlflow.get_run(run.info.run_id)
    tags = full.data.tags
    digests = {
        t.value
        for i in (full.inputs.dataset_inputs if full.inputs else [])
        for t in i.tags
        if t.key == mn.SPLIT_DIGEST_TAG
    }
    return {
        "title": tags.get("mlflow.runName", run.info.run_id),
        "run": run.info.run_id,
        "experiment": run.info.experiment_id,
        "kind": tags.get(mn.MODEL_KIND_TAG, "single"),
        "members": tags.get(mn.MEMBERS_TAG, ""),
        "data": ", ".join(
            sorted(
                {
                    i.dataset.name.rsplit("-", 1)[0]
                    for i in (full.inputs.dataset_inputs if full.inputs else [])
                }
            )
        ),
        "split digest": ", ".join(sorted(digests)),
        "commit": tags.get(mn.GIT_COMMIT_TAG, ""),
        "test-time views": tags.get(mn.REEVALUATED_TTA_TAG) or tags.get(mn.TTA_TAG, ""),
        **(extra or {}),
    }


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
