"""Scoring predictions: per-disease AUC and AUPRC with patient-level bootstrap intervals, and operating
thresholds chosen on validation then applied unchanged to another split.

Pure NumPy on (images, pathologies) arrays: no Keras, no MLflow; tables are indexed by the
dataset's own pathology names. AUC and average precision are computed
with sample weights so that a bootstrap resample is a weight vector (how many times each image's
patient was drawn) and a thousand resamples cost one sort and a few matrix passes, not a thousand sorts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr.runtime.builders import Builders
from cxr.runtime.errors import CxrError

_CHUNK_ELEMENTS = 4_000_000  # images x resamples processed at once: bounds memory to a few 100 MB


# ------------------------------------------------------------------ weighted ranking metrics
class Ranking:
    """One label's items sorted by score once, then scored under any number of weightings.

    Weights are (rows, R), one column per weighting (a bootstrap resample); item i takes row owner[i]
    (default i), so a resample can weight patients and every image of a patient follows. Integer
    weights in float32 keep the running sums exact (below 2**24) at half the memory traffic.
    """

    def __init__(self, y: np.ndarray, s: np.ndarray, owner: np.ndarray | None = None):
        order = np.argsort(s, kind="mergesort")
        ranked = s[order]
        new_group = np.r_[True, ranked[1:] != ranked[:-1]]
        group = np.cumsum(new_group) - 1
        starts = np.flatnonzero(new_group)
        ends = np.r_[starts[1:], len(ranked)]
        self.rows = order if owner is None else np.asarray(owner)[order]
        self.positive = y[order] > 0.5
        self.start, self.end = starts[group][self.positive], ends[group][self.positive]

    def _sums(self, weights: np.ndarray):
        w = weights[self.rows]
        w_pos = w[self.positive].astype(np.float64)
        return w, w_pos, w_pos.sum(axis=0)

    def auc(self, weights: np.ndarray) -> np.ndarray:
        """ROC AUC under each weighting; a tie counts one half; NaN without both classes."""
        w, w_pos, total_pos = self._sums(weights)
        neg = _cumulative(np.where(self.positive[:, None], 0, w))
        before, through = neg[self.start], neg[self.end]
        total_neg = neg[-1].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (w_pos * (before + 0.5 * (through - before))).sum(axis=0) / (total_pos * total_neg)
        return np.where((total_pos > 0) & (total_neg > 0), auc, np.nan)

    def average_precision(self, weights: np.ndarray) -> np.ndarray:
        """scikit-learn's average precision (step-wise AUPRC) under each weighting; NaN without positives.

        Read from the top score down: a positive's precision is taken where its tie group ends,
        that is at the sorted-ascending group start.
        """
        w, w_pos, total_pos = self._sums(weights)
        total = _cumulative(w)
        pos = _cumulative(np.where(self.positive[:, None], w, 0))
        called = (total[-1] - total[self.start]).astype(np.float64)
        tp = (pos[-1] - pos[self.start]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(called > 0, tp / np.where(called > 0, called, 1.0), 0.0)
            ap = (w_pos * precision).sum(axis=0) / total_pos
        return np.where(total_pos > 0, ap, np.nan)


def _cumulative(x: np.ndarray) -> np.ndarray:
    """Row k holds the sum of x's first k rows (so row 0 is zeros)."""
    out = np.zeros((x.shape[0] + 1, x.shape[1]), x.dtype)
    np.cumsum(x, axis=0, out=out[1:])
    return out


# ------------------------------------------------------------------ bootstrap by patient
def patient_bootstrap(patients: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(patient weights (patients, resamples), each image's patient row).

    A weight is how often the patient is drawn when patients are resampled with replacement. Images of
    one patient are correlated (follow-ups), so resampling images would understate the spread.
    """
    codes, uniques = pd.factorize(pd.Series(patients))
    n = len(uniques)
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    return np.ascontiguousarray(draws.T, dtype=np.float32), codes


def _column_chunks(columns: int, rows: int):
    step = max(1, _CHUNK_ELEMENTS // max(rows, 1))
    return [slice(i, i + step) for i in range(0, columns, step)]


def bootstrap_scores(
    y: np.ndarray, s: np.ndarray, weights: np.ndarray, owner: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """{'auc': (R, labels), 'auprc': (R, labels), 'auc_micro': (R,)} under the R columns of `weights`."""
    n, labels = y.shape
    resamples = weights.shape[1]
    owner = np.arange(n) if owner is None else np.asarray(owner)
    out = {"auc": np.empty((resamples, labels)), "auprc": np.empty((resamples, labels))}
    for k in range(labels):
        ranking = Ranking(y[:, k], s[:, k], owner)
        for part in _column_chunks(resamples, n):
            out["auc"][part, k] = ranking.auc(weights[:, part])
            out["auprc"][part, k] = ranking.average_precision(weights[:, part])
    # y.ravel() lists each image's labels together, so each item's owner is its image's
    micro = Ranking(y.ravel(), s.ravel(), np.repeat(owner, labels))
    out["auc_micro"] = np.concatenate(
        [micro.auc(weights[:, p]) for p in _column_chunks(resamples, n * labels)]
    )
    return out


def _interval(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: the disease is absent
        return np.nanquantile(samples, alpha, axis=0), np.nanquantile(samples, 1.0 - alpha, axis=0)


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(x)
    counts = defined.sum(axis=-1)
    return np.where(counts > 0, np.where(defined, x, 0.0).sum(axis=-1) / np.maximum(counts, 1), np.nan)


def mean_auc(y: np.ndarray, s: np.ndarray) -> float:
    """The point estimate of `auc_mean` (`evaluate_split`'s) without the rest: what greedy ensemble
    selection compares many times over (labels without both classes are left out)."""
    y, s = np.asarray(y, np.float64), np.asarray(s, np.float64)
    ones = np.ones((len(y), 1))
    aucs = np.array([[Ranking(y[:, k], s[:, k]).auc(ones)[0] for k in range(y.shape[1])]])
    return float(_nanmean_rows(aucs)[0])


# ------------------------------------------------------------------ one split's report
@dataclass
class SplitReport:
    """Point estimates and intervals of one split: a per-disease table and scalar summaries."""

    table: pd.DataFrame  # index: disease; columns: n_images, n_positive, prevalence, auc, auc_ci_low, ...
    summary: dict[str, float]  # auc_mean, auc_std, auc_micro, auprc_mean (+ _ci_low/_ci_high)


def _index(pathologies: Sequence[str], y: np.ndarray) -> pd.Index:
    if len(pathologies) != y.shape[1]:
        raise CxrError(f"{len(pathologies)} pathology names for {y.shape[1]} label columns")
    return pd.Index(list(pathologies), name="disease")


def evaluate_split(
    y: np.ndarray,
    s: np.ndarray,
    patients: np.ndarray,
    pathologies: Sequence[str],
    resamples: int,
    confidence: float,
    seed: int,
) -> SplitReport:
    y, s = np.asarray(y, np.float64), np.asarray(s, np.float64)
    if y.shape != s.shape or y.ndim != 2 or len(patients) != len(y):
        raise CxrError(f"labels {y.shape}, scores {s.shape} and {len(patients)} patient ids do not match")
    point = bootstrap_scores(y, s, np.ones((len(y), 1)))
    table = pd.DataFrame(index=_index(pathologies, y))
    table["n_images"] = len(y)
    table["n_positive"] = y.sum(axis=0).astype(int)
    table["prevalence"] = y.mean(axis=0)
    summary: dict[str, float] = {}
    for name in ("auc", "auprc"):
        table[name] = point[name][0]
        summary[f"{name}_mean"] = float(_nanmean_rows(point[name])[0])
        defined = point[name][0][~np.isnan(point[name][0])]
        summary[f"{name}_std"] = float(np.std(defined)) if len(defined) else float("nan")
    summary["auc_micro"] = float(point["auc_micro"][0])
    if resamples > 0:
        boot = bootstrap_scores(y, s, *patient_bootstrap(patients, resamples, seed))
        for name in ("auc", "auprc"):
            low, high = _interval(boot[name], confidence)
            table[f"{name}_ci_low"], table[f"{name}_ci_high"] = low, high
            mean_low, mean_high = _interval(_nanmean_rows(boot[name]), confidence)
            summary[f"{name}_mean_ci_low"] = float(mean_low)
            summary[f"{name}_mean_ci_high"] = float(mean_high)
        low, high = _interval(boot["auc_micro"], confidence)
        summary["auc_micro_ci_low"], summary["auc_micro_ci_high"] = float(low), float(high)
    return SplitReport(table, summary)


# ------------------------------------------------------------------ operating thresholds
THRESHOLD_METHODS: Builders = Builders("threshold method")


@THRESHOLD_METHODS.register("youden")
def youden_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """Maximises sensitivity + specificity - 1."""
    from sklearn.metrics import roc_curve  # here, not at the top: config validation lists these methods

    fpr, tpr, thresholds = roc_curve(y, s)
    best = int(np.argmax(tpr[1:] - fpr[1:])) + 1  # thresholds[0] is +inf: predicts nothing positive
    return float(thresholds[best])


@THRESHOLD_METHODS.register("f1")
def f1_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """Maximises F1 of the positive class."""
    from sklearn.metrics import precision_recall_curve  # here, not at the top: as above

    precision, recall, thresholds = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1]))
    return float(thresholds[int(np.argmax(f1))])


def choose_thresholds(y_val: np.ndarray, s_val: np.ndarray, method: str) -> np.ndarray:
    """Per-disease thresholds from validation labels and scores only; NaN where validation lacks a class."""
    choose = THRESHOLD_METHODS.get(method)
    out = np.full(y_val.shape[1], np.nan)
    for k in range(y_val.shape[1]):
        if 0 < y_val[:, k].sum() < len(y_val):
            out[k] = choose(y_val[:, k], s_val[:, k])
    return out


def confusion_counts(
    y: np.ndarray, s: np.ndarray, thresholds: np.ndarray, pathologies: Sequence[str]
) -> pd.DataFrame:
    """TP, FP, TN, FN per disease when score >= threshold is called positive."""
    truth = np.asarray(y) > 0.5
    pred = np.asarray(s) >= thresholds[None, :]
    counts = {
        "tp": (truth & pred).sum(axis=0),
        "fp": (~truth & pred).sum(axis=0),
        "tn": (~truth & ~pred).sum(axis=0),
        "fn": (truth & ~pred).sum(axis=0),
    }
    return pd.DataFrame(counts, index=_index(pathologies, y))


def operating_points(
    y: np.ndarray, s: np.ndarray, thresholds: np.ndarray, pathologies: Sequence[str]
) -> pd.DataFrame:
    """Sensitivity, specificity, PPV and NPV at the given thresholds; NaN where undefined."""
    c = confusion_counts(y, s, thresholds, pathologies).astype(float)

    def ratio(num, den):
        return np.where(den > 0, num / den.where(den > 0, 1.0), np.nan)

    out = pd.DataFrame(index=c.index)
    out["threshold"] = thresholds
    out["sensitivity"] = ratio(c.tp, c.tp + c.fn)
    out["specificity"] = ratio(c.tn, c.tn + c.fp)
    out["ppv"] = ratio(c.tp, c.tp + c.fp)
    out["npv"] = ratio(c.tn, c.tn + c.fn)
    out.loc[np.isnan(thresholds), ["sensitivity", "specificity", "ppv", "npv"]] = np.nan
    return pd.concat([out, c.astype(int)], axis=1)


def confidence_interval(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis (bootstrap resamples), NaNs ignored."""
    return _interval(samples, confidence)


# ------------------------------------------------------------------ operating points at a target
def threshold_at(y: np.ndarray, s: np.ndarray, measure: str, target: float) -> float:
    """The threshold (score >= threshold is positive) that holds `measure` at `target` or above on (y, s)
    and gives the other measure its best value: for `specificity`, the lowest threshold that leaves at least
    `target` of the negatives below it; for `sensitivity`, the highest that keeps `target` of the positives
    at or above it. NaN when (y, s) lacks the class the measure counts."""
    y, s = np.asarray(y) > 0.5, np.asarray(s, np.float64)
    counted = np.sort(s[~y]) if measure == "specificity" else np.sort(s[y])[::-1]
    if not len(counted):
        return float("nan")
    k = max(1, int(np.ceil(target * len(counted) - 1e-9)))
    if measure == "specificity":
        return float(np.nextafter(counted[k - 1], np.inf))  # k negatives sit below it
    return float(counted[k - 1])  # k positives sit at or above it


def weighted_rates(
    y: np.ndarray, s: np.ndarray, thresholds: np.ndarray, weights: np.ndarray, owner: np.ndarray
) -> dict[str, np.ndarray]:
    """{'sensitivity', 'specificity'}: (R, labels) at fixed thresholds under the R columns of `weights`
    (patient weights; image i takes row owner[i]); NaN where a weighting leaves a class empty."""
    truth = np.asarray(y) > 0.5
    called = np.asarray(s, np.float64) >= thresholds[None, :]
    parts: dict[str, list[np.ndarray]] = {"sensitivity": [], "specificity": []}
    for chunk in _column_chunks(weights.shape[1], len(y)):
        w = weights[owner][:, chunk].T.astype(np.float64)  # (R, N)
        with np.errstate(invalid="ignore", divide="ignore"):
            parts["sensitivity"].append((w @ (truth & called)) / (w @ truth))
            parts["specificity"].append((w @ (~truth & ~called)) / (w @ ~truth))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["sensitivity"][:, np.isnan(thresholds)] = np.nan
    out["specificity"][:, np.isnan(thresholds)] = np.nan
    return out
