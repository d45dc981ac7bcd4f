"""Post-hoc calibrators fitted on validation: temperature scaling leaves every AUC as it was and brings an
over-confident model's test ECE down; isotonic too; the calibrator travels in the logged model and is
applied when it is loaded in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr.data.labels import NIH_PATHOLOGIES
from cxr.evaluation.calibration import expected_calibration_error
from cxr.evaluation.calibrators import calibrated, fit_temperature
from cxr.serving.calibrators import apply_calibration
from cxr.serving.inference import Predictions
from tests.conftest import TINY, hydra_compose, store_overrides

NAMES = ["a", "b", "c"]


def overconfident(n: int, seed: int) -> Predictions:
    """Calibrated probabilities p, reported as sigmoid(3 logit p): the same ranking, far too sure."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, (n, len(NAMES)))
    y = (rng.random(p.shape) < p).astype(float)
    sharp = 1 / (1 + np.exp(-3 * np.log(p / (1 - p))))
    return Predictions(y, sharp, np.arange(n))


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_a_calibrator_fitted_on_validation_brings_test_ece_down(method):
    splits = {"val": overconfident(3000, 0), "test": overconfident(3000, 1)}
    out, document, before = calibrated(splits, NAMES, method)
    test = out["test"]
    after = expected_calibration_error(test.labels.ravel(), test.scores.ravel())
    assert before["test/ece_uncalibrated"] > 0.1 and after < 0.03 and document["fitted_on"] == "val"
    if method == "temperature":
        assert all(t["temperature"] == pytest.approx(3.0, rel=0.15) for t in document["findings"].values())
        for k in range(len(NAMES)):  # a monotone map: every AUC exactly as before
            raw = splits["test"]
            assert roc_auc_score(test.labels[:, k], test.scores[:, k]) == roc_auc_score(
                raw.labels[:, k], raw.scores[:, k]
            )


def test_temperature_of_a_calibrated_model_is_one_and_a_finding_without_params_keeps_its_scores():
    rng = np.random.default_rng(2)
    p = rng.uniform(0.02, 0.98, 20000)
    y = (rng.random(20000) < p).astype(float)
    assert fit_temperature(y, p) == pytest.approx(1.0, abs=0.05)
    scores = rng.random((5, 3))
    document = {"method": "temperature", "findings": {"a": {"temperature": 2.0}}}
    out = apply_calibration(scores, document, NAMES)
    np.testing.assert_array_equal(out[:, 1:], scores[:, 1:])
    assert json.loads(json.dumps(document)) == document  # data only


@pytest.mark.slow  # not `backend`: the calibrator is NumPy after the members, the same on every backend
def test_the_calibrator_travels_in_the_logged_model_and_applies_in_a_fresh_process(tiny_data, tmp_path):
    from mlflow.tracking import MlflowClient

    from cxr.train import train

    with hydra_compose() as compose:
        cfg = compose(
            [
                *TINY,
                *store_overrides(tmp_path, tiny_data),
                "evaluation.calibration=temperature",
                "evaluation.bootstrap.resamples=0",
                "evaluation.plots=false",
            ]
        )
    train(cfg, [])
    client = MlflowClient(cfg.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment_name).experiment_id])
    assert "test/ece_uncalibrated" in run.data.metrics and "test/ece" in run.data.metrics
    script = f"""
import json
import numpy as np
from cxr.data.images import resize
from cxr.serving import pyfunc

model = pyfunc.load("runs:/{run.info.run_id}")
images = [np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8) for _ in range(3)]
raw = model.members[0].predict_on_batch(np.stack([resize(i, 32) for i in images])[..., None])
out = model.probabilities(images)
print(json.dumps({{"spec": model.spec.calibration, "raw": np.asarray(raw).tolist(), "out": out.tolist()}}))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.tracking.uri}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["spec"]["method"] == "temperature" and found["spec"]["findings"]
    expected = apply_calibration(np.asarray(found["raw"], np.float32), found["spec"], NIH_PATHOLOGIES)
    np.testing.assert_allclose(found["out"], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(found["out"], found["raw"])  # it did change the probabilities
