"""The evidence every evaluation computes beyond AUC: calibration (ECE, Brier, reliability), operating
points at a target (chosen on validation, achieved on test with intervals), subgroups (AUC per group,
the largest gap with its interval, too-small groups, ages above 100 left out), all against NumPy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr.data.labels import NIH_PATHOLOGIES
from cxr.evaluation.calibration import brier, calibration_table, expected_calibration_error, reliability
from cxr.evaluation.scoring import threshold_at
from cxr.evaluation.subgroups import TOO_SMALL, age_band_labels, subgroup_report
from cxr.evaluation.targets import choose_target_thresholds, parse_target, target_table, targets


def reference_ece(y, s, bins):
    """Equal-mass ECE the slow way: sort, split into `bins` nearly equal parts, weigh |rate - mean score|."""
    order = np.argsort(s, kind="mergesort")
    parts = np.array_split(order, bins)
    return sum(len(p) * abs(y[p].mean() - s[p].mean()) for p in parts if len(p)) / len(s)


@pytest.mark.parametrize("n,bins", [(1000, 15), (97, 15), (10, 15), (500, 1)])
def test_ece_and_brier_equal_numpy_references(n, bins):
    rng = np.random.default_rng(n)
    s = rng.random(n)
    y = (rng.random(n) < s**2).astype(float)
    assert expected_calibration_error(y, s, bins) == pytest.approx(reference_ece(y, s, bins), abs=1e-12)
    assert brier(y, s) == pytest.approx(np.mean((s - y) ** 2))
    r = reliability(y, s, bins)
    assert r.count.sum() == n and r.count.max() - r.count.min() <= 1  # equal mass


def test_a_calibrated_model_has_a_small_ece_and_an_overconfident_one_a_large_one():
    rng = np.random.default_rng(0)
    s = rng.random((20000, 3))
    y = (rng.random(s.shape) < s).astype(float)
    table, pooled = calibration_table(y, s, ["a", "b", "c"])
    assert (table["ece"] < 0.02).all() and pooled["ece"] < 0.01
    logit = np.log(s / (1 - s))
    sharp = 1 / (1 + np.exp(-4 * logit))  # same ranking, overconfident
    table_sharp, _ = calibration_table(y, sharp, ["a", "b", "c"])
    assert (table_sharp["ece"] > 0.1).all()
    assert roc_auc_score(y[:, 0], sharp[:, 0]) == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]))


@pytest.mark.parametrize("target", [0.9, 0.95, 0.5])
def test_a_threshold_chosen_for_a_target_meets_it_on_validation_and_is_the_best_such(target):
    rng = np.random.default_rng(int(target * 100))
    y = (rng.random(2000) < 0.2).astype(float)
    s = np.round(y + rng.normal(size=2000), 2)  # ties
    t = threshold_at(y, s, "specificity", target)
    spec, sens = np.mean(s[y == 0] < t), np.mean(s[y == 1] >= t)
    assert spec >= target
    lower = np.max(s[s < t])  # the next threshold down calls one more score level positive
    assert np.mean(s[y == 0] < lower) < target and np.mean(s[y == 1] >= lower) >= sens
    t = threshold_at(y, s, "sensitivity", target)
    assert np.mean(s[y == 1] >= t) >= target
    higher = np.min(s[s > t])
    assert np.mean(s[y == 1] >= higher) < target
    assert np.isnan(threshold_at(np.zeros(5), s[:5], "sensitivity", target))


def test_operating_points_on_test_report_the_achieved_values_with_intervals_next_to_the_target():
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(400), 3)
    y = (rng.random((1200, 2)) < 0.25).astype(float)
    s = y + rng.normal(size=y.shape)
    val, test = slice(0, 600), slice(600, 1200)
    chosen = targets([0.9], [0.95])
    assert [t.name for t in chosen] == ["spec90", "sens95"] and parse_target("spec90") == chosen[0]
    thresholds = choose_target_thresholds(y[val], s[val], chosen)
    table = target_table(y[test], s[test], patients[test], thresholds, chosen, ["a", "b"], 200, 0.95, 0)
    row = table.loc[("spec90", "a")]
    expected_spec = np.mean(s[test][y[test][:, 0] == 0, 0] < thresholds["spec90"][0])
    assert row.target == 0.9 and row.specificity == pytest.approx(expected_spec)
    assert row.sensitivity_ci_low <= row.sensitivity <= row.sensitivity_ci_high
    assert row.specificity_ci_low < 0.9 < row.specificity_ci_high  # it transfers, within noise
    assert table.loc[("sens95", "b")].sensitivity == pytest.approx(
        np.mean(s[test][y[test][:, 1] == 1, 1] >= thresholds["sens95"][1])
    )


def planted(n_patients=1500, ap_noise=2.5, seed=0):
    """Synthetic metadata (the generator's own columns) and scores that are noisier on AP images."""
    from cxr.config import SyntheticGeneratorConfig
    from cxr.data.synthetic import sample_metadata

    meta, labels = sample_metadata(
        SyntheticGeneratorConfig(n_patients=n_patients, min_prevalence=0.1, seed=seed)
    )
    meta = meta.rename(
        columns={
            "Patient Gender": "sex",
            "Patient Age": "age",
            "View Position": "view",
            "Follow-up #": "follow_up",
        }
    )
    rng = np.random.default_rng(seed)
    noise = np.where(meta["view"] == "AP", ap_noise, 1.0)[:, None]
    scores = labels * 1.5 + noise * rng.normal(size=labels.shape)
    return meta, labels.astype(float), scores, meta["Patient ID"].to_numpy()


def report_of(meta, y, s, patients, **kw):
    settings = dict(
        attributes=["sex", "age", "view", "follow_up"],
        age_bands=[40, 60, 80],
        max_age=100,
        min_positives=10,
        flag_gap=0.02,
        resamples=200,
        confidence=0.95,
        seed=0,
    )
    return subgroup_report(y, s, patients, meta, NIH_PATHOLOGIES, **{**settings, **kw})


def test_a_planted_ap_effect_is_found_and_flagged_and_sex_is_not():
    meta, y, s, patients = planted()
    report = report_of(meta, y, s, patients)
    gaps = report.gaps.set_index(["attribute", "disease"])
    view = gaps.loc[("view", "mean")]
    assert view.high == "PA" and view.low == "AP" and view.flagged and view.gap_ci_low > 0.05
    assert not gaps.loc[("sex", "mean")].flagged
    table = report.table.set_index(["attribute", "group", "disease"])
    pa = table.loc[("view", "PA", "Effusion")]
    rows = (meta["view"] == "PA").to_numpy()
    k = NIH_PATHOLOGIES.index("Effusion")
    assert pa.auc == pytest.approx(roc_auc_score(y[rows, k], s[rows, k]))
    assert pa.auc_ci_low < pa.auc < pa.auc_ci_high


def test_a_group_below_min_positives_is_too_small_never_a_number_and_ages_over_100_are_counted():
    meta, y, s, patients = planted(n_patients=300, ap_noise=1.0)
    meta.loc[:4, "age"] = 414  # NIH has such ages: data errors
    report = report_of(meta, y, s, patients, min_positives=25)
    assert report.excluded == {"age": int((meta["age"] > 100).sum())}
    small = report.table[report.table.status == TOO_SMALL]
    assert len(small) and small["auc"].isna().all() and small["auc_ci_low"].isna().all()
    scored = report.table[report.table.status == "ok"].groupby(["attribute", "disease"]).size()
    gaps = report.gaps.set_index(["attribute", "disease"])
    unscored = [key for key in gaps.index if scored.get(key, 0) < 2]
    assert unscored and gaps.loc[unscored, "gap"].isna().all() and not gaps.loc[unscored, "flagged"].any()
    assert age_band_labels([40, 60, 80]) == ["<40", "40-59", "60-79", "80+"]
    assert set(report.table.query("attribute == 'age'").group) <= set(age_band_labels([40, 60, 80]))


def test_the_subgroup_table_on_the_real_nih_metadata_columns(shared_data):
    from cxr.data.nih import read_label_file

    table = read_label_file(shared_data / "nih-meta" / "Data_Entry_2017_v2020.csv.gz")
    test = set((shared_data / "nih-meta" / "test_list.txt").read_text().split())
    table = table[table.image_id.isin(test)].reset_index(drop=True)
    y = table[list(NIH_PATHOLOGIES)].to_numpy(float)
    s = y + np.random.default_rng(0).normal(size=y.shape)
    report = report_of(table, y, s, table.patient_id.to_numpy(), resamples=0)
    groups = report.table.groupby("attribute").group.unique().map(set).to_dict()
    assert groups["sex"] == {"M", "F"} and groups["view"] == {"PA", "AP"}
    assert groups["follow_up"] == {"first", "follow-up"} and groups["age"] == set(
        age_band_labels([40, 60, 80])
    )
    assert report.excluded.get("age", 0) == int((table.age > 100).sum())
    assert pd.api.types.is_bool_dtype(report.gaps.flagged)
