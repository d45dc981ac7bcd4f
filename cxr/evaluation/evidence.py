"""What every evaluation computes beyond AUC: calibration, operating points at a target, subgroups.

`evidence` is pure (numbers only), run by `cxr.evaluation.report.evaluate_predictions` for every split it
scores, so training, `cxr.evaluate`, `cxr.ensemble` and a sweep's best trials all carry it; `evidence_metrics`
names the scalars as MLflow metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr.evaluation.calibration import calibration_table
from cxr.evaluation.subgroups import SubgroupReport, subgroups_of
from cxr.evaluation.targets import Target, choose_target_thresholds, target_table, targets
from cxr.tracking import names as mn

if TYPE_CHECKING:
    from cxr.config import EvaluationConfig  # a type only: config sits above evaluation
    from cxr.serving.inference import Predictions


@dataclass(frozen=True)
class SplitEvidence:
    calibration: pd.DataFrame  # per finding: ece, brier
    pooled: dict[str, float]  # ece, brier over every (image, finding) pair
    operating_points: pd.DataFrame  # (operating point, finding): target, threshold, achieved values
    subgroups: SubgroupReport | None = None  # None without metadata or with subgroups disabled


@dataclass(frozen=True)
class Evidence:
    chosen: list[Target]
    thresholds: dict[str, np.ndarray]  # operating point -> per-finding threshold, chosen on validation
    splits: dict[str, SplitEvidence] = field(default_factory=dict)


def configured_targets(cfg: EvaluationConfig) -> list[Target]:
    return targets(cfg.operating_points.specificity, cfg.operating_points.sensitivity)


def split_evidence(
    p: Predictions, cfg: EvaluationConfig, pathologies: Sequence[str], chosen, thresholds
) -> SplitEvidence:
    b = cfg.bootstrap
    calibration, pooled = calibration_table(p.labels, p.scores, pathologies, cfg.ece_bins)
    points = target_table(
        p.labels, p.scores, p.patients, thresholds, chosen, pathologies, b.resamples, b.confidence, b.seed
    )
    groups = None
    g = cfg.subgroups
    if g.enabled and p.metadata is not None:
        groups = subgroups_of(p, pathologies, g, b.resamples, b.confidence, b.seed)
    return SplitEvidence(calibration, pooled, points, groups)


def evidence(
    predictions: dict[str, Predictions], cfg: EvaluationConfig, pathologies: Sequence[str], val: str = "val"
) -> Evidence:
    """Thresholds of every operating point on `val`, then each split's calibration, points and subgroups."""
    chosen = configured_targets(cfg)
    thresholds = choose_target_thresholds(predictions[val].labels, predictions[val].scores, chosen)
    splits = {s: split_evidence(p, cfg, pathologies, chosen, thresholds) for s, p in predictions.items()}
    return Evidence(chosen, thresholds, splits)


def evidence_metrics(ev: Evidence, pathologies: Sequence[str]) -> dict[str, float]:
    """Calibration, operating points and subgroup gaps as MLflow metrics (NaNs are dropped by the caller)."""
    out: dict[str, float] = {}
    for point, th in ev.thresholds.items():
        out.update({mn.target_threshold(point, d): float(t) for d, t in zip(pathologies, th, strict=True)})
    for split, se in ev.splits.items():
        for column in mn.CALIBRATION:
            out[mn.split_metric(split, column)] = se.pooled[column]
            out.update(
                {mn.per_disease(split, column, d): float(v) for d, v in se.calibration[column].items()}
            )
        for t in ev.chosen:
            rows = se.operating_points.loc[t.name]
            for measure in ("sensitivity", "specificity"):
                for d, row in rows.iterrows():
                    name = mn.target_metric(split, t.name, measure, d)
                    out[name] = float(row[measure])
                    if measure == t.reported and f"{measure}_ci_low" in row:
                        low, high = mn.interval(name)
                        out[low], out[high] = (
                            float(row[f"{measure}_ci_low"]),
                            float(row[f"{measure}_ci_high"]),
                        )
        if se.subgroups is not None:
            for _, gap in se.subgroups.gaps.iterrows():
                name = mn.subgroup_gap(split, gap.attribute, gap.disease)
                out[name] = float(gap.gap)
                low, high = mn.interval(name)
                out[low], out[high] = float(gap.gap_ci_low), float(gap.gap_ci_high)
            for attribute, count in se.subgroups.excluded.items():
                out[mn.subgroup_excluded(split, attribute)] = float(count)
    return out


def flagged_gaps(se: SplitEvidence) -> pd.DataFrame:
    """The flagged rows of a split's gap table (empty without subgroups)."""
    if se.subgroups is None or se.subgroups.gaps.empty:
        return pd.DataFrame()
    gaps = se.subgroups.gaps
    return gaps[gaps.flagged.astype(bool)]
