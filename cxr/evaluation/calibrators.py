"""Fitting a post-hoc calibrator per finding on validation (`evaluation.calibration=temperature|isotonic`).

The fitted parameters are data (a temperature, or isotonic knots) stored in the logged model's
`cxr_model.json`; `cxr.serving.calibrators.apply_calibration` applies them wherever the model predicts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from cxr.evaluation.calibration import expected_calibration_error
from cxr.serving.calibrators import apply_calibration, logit
from cxr.serving.inference import Predictions
from cxr.tracking import names as mn


def fit_temperature(y: np.ndarray, s: np.ndarray) -> float:
    """The temperature T minimising the log loss of sigmoid(logit(s) / T) on (y, s)."""
    z, y = logit(s), np.asarray(y, np.float64)

    def loss(log_t: float) -> float:
        p = np.clip(1 / (1 + np.exp(-z / np.exp(log_t))), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    return float(np.exp(minimize_scalar(loss, bounds=(-4.0, 4.0), method="bounded").x))


def fit_isotonic(y: np.ndarray, s: np.ndarray) -> dict[str, list[float]]:
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
    return {"x": fitted.X_thresholds_.tolist(), "y": fitted.y_thresholds_.tolist()}


def fit_calibration(y_val: np.ndarray, s_val: np.ndarray, pathologies: Sequence[str], method: str) -> dict:
    """The calibration document of `method`, fitted per finding on validation (findings without both
    classes there are left out, and keep their scores)."""
    if method == "none":
        return {}
    findings = {}
    for k, finding in enumerate(pathologies):
        if 0 < y_val[:, k].sum() < len(y_val):
            fit = fit_temperature if method == "temperature" else fit_isotonic
            params = fit(y_val[:, k], s_val[:, k])
            findings[finding] = {"temperature": params} if method == "temperature" else params
    return {"method": method, "fitted_on": "val", "findings": findings}


def calibrated(
    predictions: dict[str, Predictions], pathologies: Sequence[str], method: str, bins: int = 15
) -> tuple[dict[str, Predictions], dict, dict[str, float]]:
    """(predictions through a calibrator fitted on val, the calibration document, each split's pooled ECE
    before it as `<split>/ece_uncalibrated`)."""
    if method == "none":
        return predictions, {}, {}
    val = predictions["val"]
    document = fit_calibration(val.labels, val.scores, pathologies, method)
    out, before = {}, {}
    for split, p in predictions.items():
        before[mn.split_metric(split, mn.ECE_UNCALIBRATED)] = expected_calibration_error(
            p.labels.ravel(), p.scores.ravel(), bins
        )
        scores = apply_calibration(p.scores, document, pathologies)
        out[split] = Predictions(p.labels, scores, p.patients, p.metadata)
    return out, document, before
