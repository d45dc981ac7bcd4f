"""Split diagnostics on the real sample images: the per-split count table, the few-positives warning,
and thresholds left undefined (with the reason) where validation lacks a finding, never NaN."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from cxr.config import BootstrapConfig, EvaluationConfig
from cxr.data.counts import count_table, scarce, scarcity_note
from cxr.data.prepared import load_prepared
from cxr.evaluation.report import evaluate_predictions
from cxr.serving.inference import Predictions
from cxr.tracking.names import COUNTS_ARTIFACT, FEW_POSITIVES_TAG, UNDEFINED_TAG
from tests.conftest import real_nih_overrides


@pytest.fixture(scope="module")
def real(real_release):
    """The real release's overrides and the prepared data a run on it (`real_run`) trains with."""
    from tests.conftest import hydra_compose

    overrides = real_nih_overrides(real_release, real_release.parent)
    with hydra_compose() as compose:
        cfg = compose(overrides)
    return overrides, cfg, load_prepared(cfg.dataset, warn=False)


def test_count_table_counts_positives_negatives_and_patients_per_split(real):
    _, _, data = real
    counts = count_table(data.labels, data.patients, data.rows, data.pathologies)
    assert list(counts.columns) == ["positives", "negatives", "patients_positive"]
    for split, rows in data.rows.items():
        part = counts.loc[split]
        np.testing.assert_array_equal(part["positives"], data.labels[rows].sum(axis=0))
        assert (part["positives"] + part["negatives"] == len(rows)).all()
    # real rows: patient 13 has two Pleural_Thickening images in test, patient 32 three Infiltration ones
    assert counts.loc[("test", "Pleural_Thickening"), ["positives", "patients_positive"]].tolist() == [2, 1]
    assert counts.loc[("test", "Infiltration"), ["positives", "patients_positive"]].tolist() == [3, 1]
    assert counts.loc[("val", "Hernia"), "positives"] == 0
    assert counts.loc[("test", "Hernia"), "positives"] == 1
    few = scarce(counts, 5)
    assert ("val", "Hernia") in few.index and ("test", "Hernia") in few.index
    assert "Hernia: 0 in train, 0 in val, 1 in test" in scarcity_note(few)
    assert scarce(counts, 0).empty


def test_thresholds_without_validation_positives_are_undefined_with_the_reason_not_nan(real):
    _, _, data = real
    rng = np.random.default_rng(0)
    predictions = {
        s: Predictions(data.labels[r], rng.random(data.labels[r].shape), data.patients[r])
        for s, r in data.rows.items()
        if s != "train"
    }
    infiltration = data.pathologies.index("Infiltration")  # both classes in val (1 of 4) and test (3 of 7)
    predictions["test"].scores[:, infiltration] = 1.0  # every test image called positive: no NPV
    cfg = OmegaConf.structured(EvaluationConfig(bootstrap=BootstrapConfig(resamples=20)))
    evaluation = evaluate_predictions(predictions, cfg, data.pathologies)
    assert "threshold/Infiltration" in evaluation.metrics
    assert "test/npv/Infiltration" not in evaluation.metrics
    none_negative = "no image called negative in test (NPV)"
    assert evaluation.tables["test"].loc["Infiltration", "undefined"] == none_negative
    assert evaluation.undefined["Infiltration"] == none_negative
    assert all(np.isfinite(v) for v in evaluation.metrics.values())
    assert "threshold/Hernia" not in evaluation.metrics and "test/auc/Hernia" in evaluation.metrics
    assert "test/sensitivity/Hernia" not in evaluation.metrics and "val/auc/Hernia" not in evaluation.metrics
    assert evaluation.thresholds["thresholds"]["Hernia"] is None
    assert evaluation.thresholds["undefined"]["Hernia"] == "no validation positives"
    assert evaluation.undefined["Hernia"] == "no validation positives"
    assert evaluation.tables["test"].loc["Hernia", "undefined"] == "threshold: no validation positives"
    assert evaluation.tables["val"].loc["Hernia", "undefined"] == "no validation positives"
    assert evaluation.tables["test"].loc["Mass", "undefined"].startswith("no test positives")


@pytest.mark.slow
@pytest.mark.backend
def test_a_real_run_logs_counts_and_warns_about_scarce_findings(real_run, tmp_path):
    out = real_run.out  # `python -m cxr.train` on the real release (tests/conftest.py)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cxr: warning: findings with fewer than dataset.min_positives=5 positive images" in out.stderr
    assert "Hernia: 0 in train, 0 in val, 1 in test" in out.stderr
    client = MlflowClient(real_run.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cxr").experiment_id])
    assert "Hernia: 0 in train, 0 in val, 1 in test" in run.data.tags[FEW_POSITIVES_TAG]
    assert "Hernia: no validation positives" in run.data.tags[UNDEFINED_TAG]
    assert all(np.isfinite(v) for v in run.data.metrics.values())
    assert "threshold/Hernia" not in run.data.metrics
    folder = client.download_artifacts(run.info.run_id, "", str(tmp_path))
    counts = (tmp_path / COUNTS_ARTIFACT).read_text()
    assert counts.startswith("split,finding,positives,negatives,patients_positive") and folder
    thresholds = json.loads((tmp_path / "evaluation" / "thresholds.json").read_text())
    assert thresholds["undefined"]["Hernia"] == "no validation positives"
