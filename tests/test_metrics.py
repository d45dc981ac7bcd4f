"""Per-epoch metrics against scikit-learn's confusion matrix on fixed data, accumulated over batches."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, hamming_loss, precision_score, recall_score

from cxr.metrics import epoch_metrics

RNG = np.random.default_rng(7)
Y = (RNG.random((50, 14)) < 0.2).astype(np.float32)
P = np.clip(Y * 0.35 + RNG.random((50, 14)) * 0.7, 0, 1).astype(np.float32)


def sklearn_values(threshold: float) -> dict[str, float]:
    truth, pred = Y.ravel().astype(int), (P.ravel() >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(truth, pred, labels=[0, 1]).ravel()
    return {
        "recall": recall_score(truth, pred),
        "precision": precision_score(truth, pred),
        "specificity": tn / (tn + fp),  # true-negative rate, not the FPR the study logged
        "npv": tn / (tn + fn),  # not the specificity the study logged
        "f1_micro": f1_score(Y.astype(int), (threshold <= P).astype(int), average="micro"),
        "hamming_loss": hamming_loss(Y.astype(int), (threshold <= P).astype(int)),
    }


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_metrics_equal_sklearn_when_accumulated_over_batches(threshold):
    expected = sklearn_values(threshold)
    for metric in epoch_metrics(14, threshold)[1:]:
        for start in range(0, len(Y), 16):  # Keras updates per batch, then reads the result
            metric.update_state(Y[start : start + 16], P[start : start + 16])
        assert float(metric.result()) == pytest.approx(expected[metric.name], rel=1e-6), metric.name
        metric.reset_state()
        assert float(metric.result()) == 0.0


def test_specificity_and_npv_are_not_the_studys_quantities():
    truth, pred = Y.ravel().astype(int), (P.ravel() >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(truth, pred).ravel()
    values = {m.name: m for m in epoch_metrics(14, 0.5)}
    for name in ("specificity", "npv"):
        values[name].update_state(Y, P)
    assert float(values["specificity"].result()) != pytest.approx(fp / (fp + tn))
    assert float(values["npv"].result()) != pytest.approx(tn / (tn + fp))


def test_undefined_ratios_are_zero_like_sklearn_zero_division():
    metrics = {m.name: m for m in epoch_metrics(14, 0.5)}
    y = np.zeros((4, 14), np.float32)
    for metric in metrics.values():
        metric.update_state(y, np.zeros((4, 14), np.float32))
    assert float(metrics["recall"].result()) == 0.0 and float(metrics["precision"].result()) == 0.0
    assert float(metrics["specificity"].result()) == 1.0 and float(metrics["hamming_loss"].result()) == 0.0
