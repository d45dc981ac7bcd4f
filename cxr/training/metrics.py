"""Per-epoch Keras metrics with their textbook definitions.

The threshold metrics are micro-averaged (pooled over every image and label), so an absent finding
adds only true negatives. The AUC is the mean over findings with both classes present, as evaluation's
`val/auc_mean`, so what early stopping, checkpoints and the pruner read is the number a run reports.

The 2025 study's "specificity" computed the false-positive rate and its "NPV" computed specificity;
each metric here is one ratio of the pooled confusion counts, named for what it is.
"""

from __future__ import annotations

import keras
from keras import ops

from cxr.tracking import names

# Thresholds of the per-epoch AUC's Riemann sum: at 1000 it is within 0.001 of the exact (rank) AUC that
# evaluation computes, even on an untrained model's crowded scores, for a cost within noise (Keras's 200:
# 0.008 off); bench/epoch_auc.py measures both.
AUC_THRESHOLDS = 1000


@keras.saving.register_keras_serializable(package="cxr")
class PresentLabelsAUC(keras.metrics.AUC):
    """Multi-label ROC AUC averaged over the labels that have positives and negatives in the data seen.

    Keras's `AUC(multi_label=True)` averages over every label and scores one without positives as 0
    (two perfect labels and an absent one: 0.667); a finding missing from a small validation set would
    pull the epoch's AUC down by 1/14. Here such a label is left out of the mean, as evaluation does.
    """

    def __init__(self, num_labels: int | None = None, num_thresholds: int = AUC_THRESHOLDS, **kwargs):
        kwargs.update(multi_label=True, label_weights=None)
        super().__init__(num_thresholds=num_thresholds, num_labels=num_labels, **kwargs)

    def result(self):
        # tp + fn (and tn + fp) are the same at every threshold: the label's positives (negatives)
        positives = self.true_positives[0] + self.false_negatives[0]
        negatives = self.true_negatives[0] + self.false_positives[0]
        present = ops.cast(ops.logical_and(positives > 0, negatives > 0), self.dtype)
        self.label_weights = present  # Keras's weighted mean over labels, weights 0 or 1
        try:
            return super().result()
        finally:
            self.label_weights = None


class ConfusionRatio(keras.metrics.Metric):
    """Accumulates TP, FP, TN, FN at a threshold over every (image, disease) pair; `ratio` reads them."""

    def __init__(self, threshold: float = 0.5, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = float(threshold)
        self.counts = {
            k: self.add_variable(shape=(), initializer="zeros", name=k) for k in ("tp", "fp", "tn", "fn")
        }

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = ops.cast(y_true, "float32") > 0.5
        pred = ops.cast(y_pred, "float32") >= self.threshold
        cells = {
            "tp": truth & pred,
            "fp": ~truth & pred,
            "tn": ~truth & ~pred,
            "fn": truth & ~pred,
        }
        for key, cell in cells.items():
            self.counts[key].assign_add(ops.sum(ops.cast(cell, "float32")))

    def result(self):
        return self.ratio(**{k: ops.convert_to_tensor(v) for k, v in self.counts.items()})

    @staticmethod
    def ratio(tp, fp, tn, fn):
        raise NotImplementedError

    def reset_state(self):
        for variable in self.counts.values():
            variable.assign(0.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "threshold": self.threshold}


def _safe_divide(num, den):
    """0 where the denominator is 0, as scikit-learn's zero_division=0."""
    return ops.where(den > 0, num / ops.maximum(den, 1.0), 0.0)


@keras.saving.register_keras_serializable(package="cxr")
class Sensitivity(ConfusionRatio):
    """Recall, sensitivity: TP / (TP + FN)."""

    @staticmethod
    def ratio(tp, fp, tn, fn):
        return _safe_divide(tp, tp + fn)


@keras.saving.register_keras_serializable(package="cxr")
class PositivePredictiveValue(ConfusionRatio):
    """Precision, PPV: TP / (TP + FP)."""

    @staticmethod
    def ratio(tp, fp, tn, fn):
        return _safe_divide(tp, tp + fp)


@keras.saving.register_keras_serializable(package="cxr")
class Specificity(ConfusionRatio):
    """True-negative rate: TN / (TN + FP) (not the false-positive rate the study reported under this name)."""

    @staticmethod
    def ratio(tp, fp, tn, fn):
        return _safe_divide(tn, tn + fp)


@keras.saving.register_keras_serializable(package="cxr")
class NegativePredictiveValue(ConfusionRatio):
    """NPV: TN / (TN + FN) (not the specificity the study reported under this name)."""

    @staticmethod
    def ratio(tp, fp, tn, fn):
        return _safe_divide(tn, tn + fn)


@keras.saving.register_keras_serializable(package="cxr")
class MicroF1(ConfusionRatio):
    """F1 of the pooled counts: 2TP / (2TP + FP + FN)."""

    @staticmethod
    def ratio(tp, fp, tn, fn):
        return _safe_divide(2.0 * tp, 2.0 * tp + fp + fn)


@keras.saving.register_keras_serializable(package="cxr")
class HammingLoss(ConfusionRatio):
    """Share of wrong (image, disease) decisions: (FP + FN) / all."""

    @staticmethod
    def ratio(tp, fp, tn, fn):
        return _safe_divide(fp + fn, tp + fp + tn + fn)


def epoch_metrics(num_classes: int, threshold: float) -> list[keras.metrics.Metric]:
    """What every training run tracks each epoch, on training and validation data."""
    return [
        PresentLabelsAUC(num_classes, name=names.AUC),
        Sensitivity(threshold, name=names.RECALL),
        PositivePredictiveValue(threshold, name=names.PRECISION),
        Specificity(threshold, name=names.SPECIFICITY),
        NegativePredictiveValue(threshold, name=names.NPV),
        MicroF1(threshold, name=names.F1_MICRO),
        HammingLoss(threshold, name=names.HAMMING_LOSS),
    ]
