"""AUC by subgroup (sex, age band, view position, first image or follow-up) and the largest gap per finding.

Every group of a split is scored under one patient bootstrap (the same resampled patients), so the gap
between two groups has an interval of its own, not two intervals compared by eye. A group with fewer than
`min_positives` positives (or negatives) of a finding is reported as too small, never as a number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr.evaluation.scoring import Ranking, _column_chunks, confidence_interval, patient_bootstrap

if TYPE_CHECKING:
    from cxr.config import SubgroupsConfig  # a type only: config sits above evaluation
    from cxr.serving.inference import Predictions

MEAN = "mean"  # the row of the mean AUC over findings
TOO_SMALL = "too small"


@dataclass(frozen=True)
class Grouping:
    """Each image's group under one attribute (None: left out) and how many were left out as data errors."""

    groups: pd.Series
    excluded: int = 0


def age_band_labels(edges: Sequence[int]) -> list[str]:
    """[40, 60, 80] -> ['<40', '40-59', '60-79', '80+']."""
    edges = list(edges)
    inner = [f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [f"<{edges[0]}", *inner, f"{edges[-1]}+"]


def by_sex(meta: pd.DataFrame, **_) -> Grouping:
    return Grouping(meta["sex"].astype("string").str.upper().where(lambda v: v.isin(["M", "F"])))


def by_age(meta: pd.DataFrame, age_bands: Sequence[int], max_age: int, **_) -> Grouping:
    """Bands cut at `age_bands`; ages above `max_age` are data errors in NIH (e.g. 414): left out, counted."""
    age = pd.to_numeric(meta["age"], errors="coerce")
    wrong = age > max_age
    labels = age_band_labels(age_bands)
    which = np.searchsorted(np.asarray(age_bands), age.fillna(-1).to_numpy(), side="right")
    groups = pd.Series([labels[i] for i in which], index=meta.index, dtype="string")
    return Grouping(groups.where(age.notna() & ~wrong), int(wrong.sum()))


def by_view(meta: pd.DataFrame, **_) -> Grouping:
    return Grouping(meta["view"].astype("string").str.upper())


def by_follow_up(meta: pd.DataFrame, **_) -> Grouping:
    number = pd.to_numeric(meta["follow_up"], errors="coerce")
    groups = pd.Series(np.where(number > 0, "follow-up", "first"), index=meta.index, dtype="string")
    return Grouping(groups.where(number.notna()))


# attribute -> (metadata column it needs, how it groups)
ATTRIBUTES: dict[str, tuple[str, Callable[..., Grouping]]] = {
    "sex": ("sex", by_sex),
    "age": ("age", by_age),
    "view": ("view", by_view),
    "follow_up": ("follow_up", by_follow_up),
}


@dataclass(frozen=True)
class SubgroupReport:
    table: (
        pd.DataFrame
    )  # attribute, group, disease (and `mean`): n_images, n_positive, auc, intervals, status
    gaps: pd.DataFrame  # attribute, disease: high, low groups, gap, interval, flagged
    excluded: dict[str, int]  # attribute -> images left out as data errors


def _group_auc(y, s, rows, owner, weights) -> np.ndarray:
    """(R, labels) AUC of the images `rows` under patient weights (rows of `weights` per patient)."""
    out = np.empty((weights.shape[1], y.shape[1]))
    for k in range(y.shape[1]):
        ranking = Ranking(y[rows, k], s[rows, k], owner[rows])
        for part in _column_chunks(weights.shape[1], len(rows)):
            out[part, k] = ranking.auc(weights[:, part])
    return out


def subgroup_report(
    y: np.ndarray,
    s: np.ndarray,
    patients: np.ndarray,
    metadata: pd.DataFrame,
    pathologies: Sequence[str],
    *,
    attributes: Sequence[str],
    age_bands: Sequence[int],
    max_age: int,
    min_positives: int,
    flag_gap: float,
    resamples: int,
    confidence: float,
    seed: int,
) -> SubgroupReport:
    """AUC per group and finding with intervals, the largest gap per finding and attribute, flagged when
    its interval lies above `flag_gap` (its point above it, without intervals)."""
    y, s = np.asarray(y, np.float64), np.asarray(s, np.float64)
    metadata = metadata.reset_index(drop=True)
    if resamples > 0:
        weights, owner = patient_bootstrap(patients, resamples, seed)
    else:
        owner = pd.factorize(pd.Series(patients))[0]
        weights = np.empty((int(owner.max()) + 1 if len(owner) else 0, 0), np.float32)
    ones = np.ones((weights.shape[0], 1), np.float32)
    names = [*pathologies, MEAN]
    rows_out, gaps_out, excluded = [], [], {}
    for attribute in attributes:
        column, grouping = ATTRIBUTES[attribute]
        if column not in metadata:
            continue
        found = grouping(metadata, age_bands=age_bands, max_age=max_age)
        if found.excluded:
            excluded[attribute] = found.excluded
        point, boot, enough = {}, {}, {}
        for group in sorted(found.groups.dropna().unique()):
            rows = np.flatnonzero((found.groups == group).fillna(False).to_numpy())
            positives = y[rows].sum(axis=0)
            enough[group] = (positives >= min_positives) & (len(rows) - positives >= min_positives)
            point[group] = np.where(enough[group], _group_auc(y, s, rows, owner, ones)[0], np.nan)
            if resamples > 0:
                boot[group] = np.where(enough[group], _group_auc(y, s, rows, owner, weights), np.nan)
            for k, disease in enumerate(pathologies):
                rows_out.append(
                    _row(
                        attribute,
                        group,
                        disease,
                        len(rows),
                        positives[k],
                        point[group][k],
                        boot,
                        k,
                        confidence,
                        enough[group][k],
                    )
                )
        groups = list(point)
        shared = np.all([enough[g] for g in groups], axis=0) if groups else np.zeros(len(pathologies), bool)
        for g in groups:  # the mean over the findings every group can be scored on, so means compare
            point[g] = np.append(point[g], np.mean(point[g][shared]) if shared.any() else np.nan)
            if g in boot:
                boot[g] = np.column_stack(
                    [
                        boot[g],
                        boot[g][:, shared].mean(axis=1) if shared.any() else np.full(len(boot[g]), np.nan),
                    ]
                )
            rows_out.append(
                _row(
                    attribute,
                    g,
                    MEAN,
                    int((found.groups == g).sum()),
                    np.nan,
                    point[g][-1],
                    boot,
                    -1,
                    confidence,
                    shared.any(),
                )
            )
        for k, disease in enumerate(names):
            gaps_out.append(_gap(attribute, disease, k, point, boot, confidence, flag_gap))
    table = pd.DataFrame(rows_out)
    gaps = pd.DataFrame(gaps_out)
    return SubgroupReport(table, gaps, excluded)


def _row(attribute, group, disease, n, positives, auc, boot, k, confidence, enough) -> dict:
    row = {"attribute": attribute, "group": group, "disease": disease, "n_images": int(n)}
    row["n_positive"] = positives if np.isnan(positives) else int(positives)
    row["auc"] = float(auc) if enough else np.nan
    low = high = np.nan
    if enough and group in boot:
        low, high = (float(b) for b in confidence_interval(boot[group][:, k], confidence))
    row["auc_ci_low"], row["auc_ci_high"] = low, high
    row["status"] = "ok" if enough else TOO_SMALL
    return row


def _gap(attribute, disease, k, point, boot, confidence, flag_gap) -> dict:
    """The largest gap between two scorable groups: best minus worst, with the interval of that difference."""
    scored = {g: v[k] for g, v in point.items() if np.isfinite(v[k])}
    row = {"attribute": attribute, "disease": disease, "high": None, "low": None, "gap": np.nan}
    row.update(gap_ci_low=np.nan, gap_ci_high=np.nan, flagged=False)
    if len(scored) < 2:
        return row
    high, low = max(scored, key=scored.get), min(scored, key=scored.get)
    row.update(high=high, low=low, gap=float(scored[high] - scored[low]))
    if high in boot and low in boot:
        lo, hi = confidence_interval(boot[high][:, k] - boot[low][:, k], confidence)
        row.update(gap_ci_low=float(lo), gap_ci_high=float(hi), flagged=bool(lo > flag_gap))
    else:
        row["flagged"] = bool(row["gap"] > flag_gap)
    return row


def subgroups_of(
    p: Predictions,
    pathologies: Sequence[str],
    settings: SubgroupsConfig,
    resamples: int,
    confidence: float,
    seed: int,
) -> SubgroupReport:
    """`subgroup_report` of one split's predictions with the `evaluation.subgroups` settings: what an
    evaluation reports and what promotion's gap gate compares (the caller checks `p.metadata`)."""
    return subgroup_report(
        p.labels,
        p.scores,
        p.patients,
        p.metadata,
        pathologies,
        attributes=list(settings.attributes),
        age_bands=list(settings.age_bands),
        max_age=settings.max_age,
        min_positives=settings.min_positives,
        flag_gap=settings.flag_gap,
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )
