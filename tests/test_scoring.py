"""Scoring: weighted AUC/AUPRC equal scikit-learn, patient bootstrap intervals, thresholds
chosen on validation only and applied unchanged to test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from cxr.data.labels import NIH_PATHOLOGIES
from cxr.evaluation.scoring import (
    Ranking,
    choose_thresholds,
    evaluate_split,
    operating_points,
    patient_bootstrap,
)
from cxr.runtime.errors import CxrError
from cxr.tracking import names as mn


def synthetic_split(n_patients: int, seed: int, images_per_patient: int = 3):
    """Scores that carry signal, labels at 5-30% prevalence, several images per patient."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), images_per_patient)
    y = (rng.random((len(patients), 14)) < np.linspace(0.05, 0.3, 14)).astype(float)
    s = np.round(y * 0.8 + rng.normal(size=y.shape), 2)  # rounding makes ties
    return y, s, patients


@pytest.mark.parametrize("seed", range(4))
def test_weighted_auc_and_average_precision_equal_sklearn_with_ties_and_weights(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(300) < 0.2).astype(float)
    s = np.round(rng.random(300) + 0.3 * y, 1)
    weights = rng.integers(0, 4, (300, 5)).astype(np.float32)
    ranking = Ranking(y, s)
    auc, ap = ranking.auc(weights), ranking.average_precision(weights)
    for r in range(5):
        assert auc[r] == pytest.approx(roc_auc_score(y, s, sample_weight=weights[:, r]), abs=1e-12)
        assert ap[r] == pytest.approx(average_precision_score(y, s, sample_weight=weights[:, r]), abs=1e-12)


def test_point_estimates_equal_sklearn_and_undefined_diseases_are_nan():
    y, s, patients = synthetic_split(60, 0)
    y[:, 3] = 0  # no positive of one disease
    report = evaluate_split(y, s, patients, NIH_PATHOLOGIES, resamples=0, confidence=0.95, seed=0)
    table = report.table
    assert list(table.index) == list(NIH_PATHOLOGIES) and np.isnan(table.loc[NIH_PATHOLOGIES[3], "auc"])
    for k, disease in enumerate(NIH_PATHOLOGIES):
        if k == 3:
            continue
        assert table.loc[disease, "auc"] == pytest.approx(roc_auc_score(y[:, k], s[:, k]))
        assert table.loc[disease, "auprc"] == pytest.approx(average_precision_score(y[:, k], s[:, k]))
    defined = table["auc"].dropna()
    assert report.summary["auc_mean"] == pytest.approx(defined.mean())
    assert report.summary["auc_std"] == pytest.approx(defined.std(ddof=0))
    assert report.summary["auc_micro"] == pytest.approx(roc_auc_score(y.ravel(), s.ravel()))


def test_patient_bootstrap_draws_whole_patients():
    patients = np.array(["a", "a", "b", "c", "c", "c"])
    weights, owner = patient_bootstrap(patients, resamples=200, seed=1)
    image_weights = weights[owner]
    assert weights.shape == (3, 200) and np.all(weights.sum(axis=0) == 3)  # 3 patients drawn each time
    np.testing.assert_array_equal(image_weights[0], image_weights[1])  # a's two images move together
    np.testing.assert_array_equal(image_weights[3], image_weights[5])


def test_intervals_contain_the_estimate_and_narrow_with_more_data():
    widths = []
    for n_patients in (40, 400):
        y, s, patients = synthetic_split(n_patients, 1)
        report = evaluate_split(y, s, patients, NIH_PATHOLOGIES, resamples=300, confidence=0.95, seed=0)
        t, m = report.table, report.summary
        assert (t["auc_ci_low"] <= t["auc"]).all() and (t["auc"] <= t["auc_ci_high"]).all()
        assert (t["auprc_ci_low"] <= t["auprc"]).all() and (t["auprc"] <= t["auprc_ci_high"]).all()
        for name in ("auc_mean", "auprc_mean", "auc_micro"):
            assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"]
        widths.append(m["auc_mean_ci_high"] - m["auc_mean_ci_low"])
    assert widths[1] < widths[0] / 2  # ten times the patients: about a third of the width


def test_intervals_are_reproducible_from_the_seed():
    y, s, patients = synthetic_split(50, 2)
    a = evaluate_split(y, s, patients, NIH_PATHOLOGIES, 100, 0.9, seed=3).summary
    b = evaluate_split(y, s, patients, NIH_PATHOLOGIES, 100, 0.9, seed=3).summary
    c = evaluate_split(y, s, patients, NIH_PATHOLOGIES, 100, 0.9, seed=4).summary
    assert a == b and a["auc_mean_ci_low"] != c["auc_mean_ci_low"]


def test_mismatched_inputs_are_a_clear_error():
    y, s, patients = synthetic_split(10, 0)
    with pytest.raises(CxrError, match="do not match"):
        evaluate_split(y, s[:-1], patients, NIH_PATHOLOGIES, 0, 0.95, 0)


def _evaluation_cfg(method: str):
    from omegaconf import OmegaConf

    from cxr.config import EvaluationConfig

    cfg = OmegaConf.structured(EvaluationConfig(threshold_method=method))
    cfg.bootstrap.resamples = 0
    return cfg


@pytest.mark.parametrize("method", ["youden", "f1"])
def test_thresholds_never_see_test_labels(method):
    """Through the evaluation train and evaluate log: scrambling test labels changes the test numbers
    and nothing that was chosen; changing validation labels does change the thresholds."""
    from cxr.evaluation.report import evaluate_predictions
    from cxr.serving.inference import Predictions

    def predictions(val_seed: int, test_labels=None):
        y_val, s_val, p_val = synthetic_split(80, val_seed)
        y_test, s_test, p_test = synthetic_split(80, 4)
        y_test = y_test if test_labels is None else test_labels
        return {"val": Predictions(y_val, s_val, p_val), "test": Predictions(y_test, s_test, p_test)}

    cfg = _evaluation_cfg(method)
    honest = evaluate_predictions(predictions(3), cfg, NIH_PATHOLOGIES)
    scrambled_labels = np.random.default_rng(0).permutation(synthetic_split(80, 4)[0])
    scrambled = evaluate_predictions(predictions(3, scrambled_labels), cfg, NIH_PATHOLOGIES)
    assert honest.thresholds == scrambled.thresholds
    np.testing.assert_array_equal(honest.tables["test"]["threshold"], scrambled.tables["test"]["threshold"])
    assert honest.metrics["test/auc_mean"] != scrambled.metrics["test/auc_mean"]  # test labels did change
    other_val = evaluate_predictions(predictions(5), cfg, NIH_PATHOLOGIES)
    assert other_val.thresholds["thresholds"] != honest.thresholds["thresholds"]
    expected = choose_thresholds(predictions(3)["val"].labels, predictions(3)["val"].scores, method)
    np.testing.assert_array_equal(honest.tables["test"]["threshold"], expected)
    assert honest.thresholds["chosen_on"] == "val"


def test_tables_carry_the_datasets_own_pathology_names():
    """No global label list: a dataset with other findings gets its own names in every table."""
    from cxr.evaluation.report import evaluate_predictions
    from cxr.serving.inference import Predictions

    y, s, patients = synthetic_split(40, 8)
    names = ("Lung Opacity", "Support Devices", "Fracture")
    split = Predictions(y[:, :3], s[:, :3], patients)
    evaluation = evaluate_predictions({"val": split, "test": split}, _evaluation_cfg("youden"), names)
    assert list(evaluation.tables["test"].index) == list(names)
    assert set(evaluation.thresholds["thresholds"]) == set(names)
    assert mn.per_disease("test", "auc", "Support Devices") in evaluation.metrics
    with pytest.raises(CxrError, match="2 pathology names for 3 label columns"):
        evaluate_split(y[:, :3], s[:, :3], patients, names[:2], 0, 0.95, 0)


def test_youden_threshold_maximises_sensitivity_plus_specificity_on_validation():
    y, s, _ = synthetic_split(80, 5)
    thresholds = choose_thresholds(y, s, "youden")
    k = 6
    best = operating_points(y, s, thresholds, NIH_PATHOLOGIES).iloc[k]
    for t in np.unique(s[:, k]):
        tn, fp, fn, tp = confusion_matrix(y[:, k], s[:, k] >= t, labels=[0, 1]).ravel()
        assert tp / (tp + fn) + tn / (tn + fp) <= best["sensitivity"] + best["specificity"] + 1e-12


def test_operating_points_equal_sklearn_confusion_matrices():
    y, s, _ = synthetic_split(50, 6)
    thresholds = np.linspace(-0.5, 1.0, 14)
    table = operating_points(y, s, thresholds, NIH_PATHOLOGIES)
    for k, disease in enumerate(NIH_PATHOLOGIES):
        tn, fp, fn, tp = confusion_matrix(y[:, k], s[:, k] >= thresholds[k], labels=[0, 1]).ravel()
        row = table.loc[disease]
        assert (row.tp, row.fp, row.tn, row.fn) == (tp, fp, tn, fn)
        assert row.sensitivity == pytest.approx(tp / (tp + fn)) and row.specificity == pytest.approx(
            tn / (tn + fp)
        )
        assert row.ppv == pytest.approx(tp / (tp + fp)) and row.npv == pytest.approx(tn / (tn + fn))


def test_a_disease_without_both_classes_in_validation_gets_no_threshold():
    y, s, _ = synthetic_split(30, 7)
    y[:, 0] = 0
    thresholds = choose_thresholds(y, s, "youden")
    assert np.isnan(thresholds[0]) and np.isfinite(thresholds[1:]).all()
    assert operating_points(y, s, thresholds, NIH_PATHOLOGIES).iloc[0][["sensitivity", "ppv"]].isna().all()
    with pytest.raises(CxrError, match="unknown threshold method 'best'"):
        choose_thresholds(y, s, "best")
