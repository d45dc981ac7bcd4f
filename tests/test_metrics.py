"""Per-epoch metrics against scikit-learn's confusion matrix on fixed data, accumulated over batches."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import confusion_matrix, f1_score, hamming_loss, precision_score, recall_score

from cxr.config import SmallCnnConfig
from cxr.data.labels import NIH_PATHOLOGIES
from cxr.evaluation.scoring import evaluate_split
from cxr.models import build_model
from cxr.training.callbacks import monitored
from cxr.training.metrics import epoch_metrics
from tests.conftest import load_resized

pytestmark = pytest.mark.backend  # Keras metrics accumulate in backend ops: CI runs them again on JAX

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


# ------------------------------------------------------------------ AUC over findings present
def test_epoch_auc_leaves_out_a_finding_without_positives():
    """Keras's multi-label AUC scores the all-negative third label as 0 (0.667); ours averages the two."""
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], np.float32)
    p = np.array([[0.9, 0.1, 0.2], [0.2, 0.8, 0.3], [0.7, 0.9, 0.1], [0.1, 0.2, 0.4]], np.float32)
    auc = epoch_metrics(3, 0.5)[0]
    auc.update_state(y, p)
    assert float(auc.result()) == pytest.approx(1.0)


def real_sample_labels(shared_data) -> tuple[pd.DataFrame, np.ndarray]:
    """The real sample images (one row per file) and their 14 real label columns."""
    table = pd.read_csv(shared_data / "nih-samples" / "labels.csv")
    table = table.drop_duplicates("Image Index").reset_index(drop=True)  # one resolution per image
    return table, table[list(NIH_PATHOLOGIES)].to_numpy(np.float32)


def test_epoch_auc_equals_evaluations_mean_auc_on_real_images_with_absent_findings(shared_data):
    """A model validated in `fit` logs the val_auc that evaluation reports as val_auc_mean for the same
    predictions, though most findings have no positive among the real images. The epoch AUC is Keras's
    thresholded approximation (1000 buckets) and evaluation's is exact; a barely trained model's scores
    crowd into a few buckets, hence 0.01 here (0.002 on spread scores, the test below)."""
    table, y = real_sample_labels(shared_data)
    absent = y.sum(axis=0) == 0
    assert absent.any() and not absent.all()
    x = np.stack([load_resized(shared_data / "nih-samples" / p, 32) for p in table["path"]])[..., None]
    keras.utils.set_random_seed(0)
    model = build_model(OmegaConf.structured(SmallCnnConfig(filters=[4], dense_units=8)), 32, 14)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=epoch_metrics(14, 0.5))
    history = model.fit(x, y, validation_data=(x, y), batch_size=4, epochs=1, verbose=0)
    scores = model.predict(x, verbose=0)
    exact = evaluate_split(y, scores, table["Patient ID"].to_numpy(), NIH_PATHOLOGIES, 0, 0.95, 0)
    assert history.history["val_auc"][-1] == pytest.approx(exact.summary["auc_mean"], abs=0.01)
    keras_auc = keras.metrics.AUC(multi_label=True, num_labels=14, num_thresholds=1000)
    keras_auc.update_state(y, scores)  # the old per-epoch number: each absent finding counted as 0
    present = (~absent).sum()
    assert float(keras_auc.result()) == pytest.approx(history.history["val_auc"][-1] * present / 14, abs=1e-3)


def test_epoch_auc_is_within_0002_of_the_exact_mean_on_spread_scores(shared_data):
    """Real NIH labels of 2,000 images (Hernia absent from them), scores of a fair classifier, in batches."""
    meta = pd.read_csv(shared_data / "nih-meta" / "Data_Entry_2017_v2020.csv.gz", nrows=3000)
    meta = meta[~meta["Finding Labels"].str.contains("Hernia")].head(2000)
    y = np.stack([meta["Finding Labels"].str.contains(d).to_numpy() for d in NIH_PATHOLOGIES], 1)
    y = y.astype(np.float32)
    assert y[:, NIH_PATHOLOGIES.index("Hernia")].sum() == 0
    s = np.clip(0.25 * y + np.random.default_rng(0).beta(2, 5, y.shape), 0, 1).astype(np.float32)
    auc = epoch_metrics(14, 0.5)[0]
    for start in range(0, len(y), 64):
        auc.update_state(y[start : start + 64], s[start : start + 64])
    exact = evaluate_split(y, s, meta["Patient ID"].to_numpy(), NIH_PATHOLOGIES, 0, 0.95, 0)
    assert float(auc.result()) == pytest.approx(exact.summary["auc_mean"], abs=2e-3)


def test_the_banner_names_what_each_callback_and_the_pruner_monitor(compose_cfg):
    cfg = compose_cfg(["callbacks.early_stopping.monitor=val_auc", "callbacks.early_stopping.mode=max"])
    line = monitored(cfg.callbacks, "val_auc")
    assert "early stopping: val_auc (max)" in line and "checkpoint: val_loss (min)" in line
    assert "pruner: val_auc" in line and "findings with positives and negatives" in line
    cfg = compose_cfg(["callbacks.early_stopping.enabled=false", "callbacks.reduce_lr.enabled=false"])
    assert monitored(cfg.callbacks) == "monitored checkpoint: val_loss (min)"
