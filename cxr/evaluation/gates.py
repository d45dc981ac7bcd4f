"""Promotion gates: a candidate against the champion on the same validation patients.

A paired patient bootstrap (both models scored under the same resampled patients) gives the interval of
the difference in AUC, which is much narrower than comparing two separate intervals by eye. Four gates,
each one pass/fail line with its numbers:

- `mean_auc`: the mean-AUC difference (candidate - champion) is above 0 and its interval above -margin;
- `finding_drop`: no finding's AUC drops by more than `max_finding_drop` beyond noise (the drop's point
  estimate exceeds it and its whole interval is below 0);
- `subgroup_gap`: no attribute's gap in mean AUC between its groups widens by more than `max_gap_increase`;
- `calibration`: the pooled expected calibration error rises by at most `max_ece_increase`.

Pure numbers on `Predictions`; reading them from the registry and moving the alias are the callers'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr.evaluation.calibration import expected_calibration_error
from cxr.evaluation.scoring import _nanmean_rows, bootstrap_scores, confidence_interval, patient_bootstrap
from cxr.evaluation.subgroups import MEAN, subgroups_of
from cxr.runtime.errors import CxrError
from cxr.serving.inference import Predictions

if TYPE_CHECKING:
    from cxr.config import GatesConfig  # a type only: config sits above evaluation


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    line: str  # `mean_auc: pass: +0.0123 [-0.0040, +0.0290] (needs > 0, interval above -0.0000)`

    def as_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "line": self.line}


def aligned(
    candidate: Predictions, baseline: Predictions, out_of_fold: bool = False
) -> tuple[Predictions, Predictions]:
    """Both on the same validation images, in one order (by `image_id` in their metadata).

    `out_of_fold`: one side is a fold ensemble's out-of-fold scores (tag cxr.validation), which cover
    all of train_val, each image scored by a member that did not train on it; they are paired on the
    other side's validation images, which must lie among them."""
    if candidate.metadata is None or baseline.metadata is None:
        raise CxrError("validation predictions without image ids cannot be paired")
    if out_of_fold:
        candidate, baseline = _on_common_images(candidate, baseline)
    ids_c = candidate.metadata["image_id"].to_numpy()
    ids_b = pd.Index(baseline.metadata["image_id"].to_numpy())
    if len(ids_c) != len(ids_b) or not ids_b.isin(ids_c).all():
        raise CxrError(
            f"the two versions were validated on different images ({len(ids_c)} and {len(ids_b)}): "
            "compare versions trained on one patient split (tag split_digest), or a fold ensemble "
            "(cxr.ensemble members=folds) with a model trained on the same train_val list"
        )
    order = ids_b.get_indexer(ids_c)
    b = Predictions(
        baseline.labels[order], baseline.scores[order], baseline.patients[order], candidate.metadata
    )
    return candidate, b


def _on_common_images(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions]:
    """Both cut to the smaller side's images when the larger holds them all; else unchanged."""
    ids_a, ids_b = (pd.Index(p.metadata["image_id"].to_numpy()) for p in (a, b))
    small = ids_a if len(ids_a) <= len(ids_b) else ids_b
    large = ids_b if small is ids_a else ids_a
    if not small.isin(large).all():
        return a, b
    return a.take(ids_a.isin(small)), b.take(ids_b.isin(small))


def _signed(x: float) -> str:
    return f"{x:+.4f}"


def paired_auc_difference(
    candidate: Predictions, baseline: Predictions, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(point (labels,), bootstrap (R, labels)) of AUC(candidate) - AUC(baseline), same patients drawn."""
    ones = np.ones((len(candidate.labels), 1), np.float32)
    point = (
        bootstrap_scores(candidate.labels, candidate.scores, ones)["auc"][0]
        - (bootstrap_scores(baseline.labels, baseline.scores, ones)["auc"][0])
    )
    weights, owner = patient_bootstrap(candidate.patients, max(resamples, 1), seed)
    boot = (
        bootstrap_scores(candidate.labels, candidate.scores, weights, owner)["auc"]
        - (bootstrap_scores(baseline.labels, baseline.scores, weights, owner)["auc"])
    )
    return point, boot


def _gap_of_means(p: Predictions, pathologies: Sequence[str], cfg: GatesConfig) -> dict[str, float]:
    """Per attribute: the largest gap in mean AUC between its groups (point estimate)."""
    if p.metadata is None:
        return {}
    report = subgroups_of(p, pathologies, cfg.subgroups, 0, cfg.confidence, cfg.seed)  # points only
    if report.gaps.empty:
        return {}
    means = report.gaps[report.gaps.disease == MEAN]
    return {row.attribute: float(row.gap) for row in means.itertuples() if np.isfinite(row.gap)}


def check_gates(
    candidate: Predictions,
    baseline: Predictions,
    pathologies: Sequence[str],
    cfg: GatesConfig,
    out_of_fold: bool = False,
) -> list[Gate]:
    """The four gates of `candidate` against `baseline` (aligned first, `aligned`), one Gate each."""
    candidate, baseline = aligned(candidate, baseline, out_of_fold)
    point, boot = paired_auc_difference(candidate, baseline, cfg.resamples, cfg.seed)
    low, high = confidence_interval(_nanmean_rows(boot), cfg.confidence)
    mean = float(_nanmean_rows(point[None, :])[0])
    ok = mean > 0 and float(low) > -cfg.margin
    verdict = "pass" if ok else "fail: the candidate does not beat the baseline"
    gates = [
        Gate(
            "mean_auc",
            ok,
            f"{verdict}: mean AUC difference {_signed(mean)} [{_signed(float(low))}, {_signed(float(high))}]"
            f" (needs > 0 with the interval above {_signed(-cfg.margin or 0.0)})",
        )
    ]
    lows, highs = confidence_interval(boot, cfg.confidence)
    dropped = [
        f"{d} {_signed(float(point[k]))} [{_signed(float(lows[k]))}, {_signed(float(highs[k]))}]"
        for k, d in enumerate(pathologies)
        if np.isfinite(point[k]) and -point[k] > cfg.max_finding_drop and highs[k] < 0
    ]
    worst = int(np.nanargmin(point)) if np.isfinite(point).any() else 0
    gates.append(
        Gate(
            "finding_drop",
            not dropped,
            (f"fail: {'; '.join(dropped)}" if dropped else "pass")
            + f" (no finding may drop by more than {cfg.max_finding_drop} beyond noise; "
            f"largest change down: {pathologies[worst]} {_signed(float(point[worst]))})",
        )
    )
    gap_c, gap_b = _gap_of_means(candidate, pathologies, cfg), _gap_of_means(baseline, pathologies, cfg)
    widened = {a: gap_c[a] - gap_b[a] for a in gap_c if a in gap_b}
    over = [f"{a} {gap_b[a]:.4f} -> {gap_c[a]:.4f}" for a, d in widened.items() if d > cfg.max_gap_increase]
    shown = ", ".join(f"{a} {_signed(d)}" for a, d in widened.items()) or "no subgroup scorable"
    gates.append(
        Gate(
            "subgroup_gap",
            not over,
            (f"fail: {'; '.join(over)}" if over else "pass")
            + f" (gap in mean AUC may widen by at most {cfg.max_gap_increase}; changes: {shown})",
        )
    )
    ece_c = expected_calibration_error(candidate.labels.ravel(), candidate.scores.ravel(), cfg.ece_bins)
    ece_b = expected_calibration_error(baseline.labels.ravel(), baseline.scores.ravel(), cfg.ece_bins)
    rise = ece_c - ece_b
    gates.append(
        Gate(
            "calibration",
            rise <= cfg.max_ece_increase,
            ("pass" if rise <= cfg.max_ece_increase else "fail")
            + f": ECE {ece_b:.4f} -> {ece_c:.4f} ({_signed(rise)}; "
            f"may rise by at most {cfg.max_ece_increase})",
        )
    )
    return gates
