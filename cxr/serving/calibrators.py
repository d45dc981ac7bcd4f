"""Applying a post-hoc calibrator per finding: pure NumPy, its parameters data only (in cxr_model.json).

`temperature` divides a finding's logit by its temperature (a monotone map: rankings, hence AUCs, stay
as they were); `isotonic` maps a probability through a fitted non-decreasing step function (linear
between its knots). Fitting is `cxr.evaluation.calibrators`'s, on validation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cxr.runtime.errors import CxrError

METHODS = ("none", "temperature", "isotonic")
_EPS = 1e-7


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def apply_calibration(scores: np.ndarray, calibration: Mapping, pathologies: Sequence[str]) -> np.ndarray:
    """`scores` (N, findings) through the calibration document `{"method": ..., "findings": {finding:
    params}}`; a finding without params (no validation positives when fitted) keeps its scores."""
    method = calibration.get("method", "none") if calibration else "none"
    if method == "none":
        return scores
    if method not in METHODS:
        raise CxrError(f"unknown calibration method {method!r} in the model's cxr_model.json")
    out = np.array(scores, np.float64, copy=True)
    for k, finding in enumerate(pathologies):
        params = calibration["findings"].get(finding)
        if not params:
            continue
        if method == "temperature":
            out[:, k] = 1 / (1 + np.exp(-logit(out[:, k]) / params["temperature"]))
        else:
            out[:, k] = np.interp(out[:, k], params["x"], params["y"])
    return out.astype(np.asarray(scores).dtype)
