"""Two registered versions side by side (`cxr.report compare=models:/NAME/7`): per finding and for the
mean, each one's validation AUC and the paired difference with its interval, from the validation
predictions both runs logged (the promotion gates' paired patient bootstrap, `cxr.evaluation.gates`), and
each one's logged test AUC beside it (two separate numbers: test is never paired or chosen on).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cxr.evaluation.gates import aligned, paired_auc_difference
from cxr.evaluation.scoring import _nanmean_rows, bootstrap_scores, confidence_interval
from cxr.evaluation.stored_predictions import frame_predictions
from cxr.runtime.errors import CxrError
from cxr.serving.inference import Predictions
from cxr.tracking import names as mn
from cxr.tracking import promotion, versions

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

MEAN = "mean"


def paired_table(
    ours: Predictions,
    theirs: Predictions,
    pathologies: Sequence[str],
    resamples: int,
    confidence: float,
    seed: int,
) -> list[dict]:
    """One row per finding, then the mean: `auc` (ours), `other_auc`, `difference` (ours - theirs) and
    its paired patient-bootstrap interval, on the images both were validated on."""
    ours, theirs = aligned(ours, theirs)
    point, boot = paired_auc_difference(ours, theirs, resamples, seed)
    ones = np.ones((len(ours.labels), 1), np.float32)
    auc = bootstrap_scores(ours.labels, ours.scores, ones)["auc"][0]
    other = bootstrap_scores(theirs.labels, theirs.scores, ones)["auc"][0]
    lows, highs = confidence_interval(boot, confidence)
    mean_low, mean_high = confidence_interval(_nanmean_rows(boot), confidence)
    means = [float(_nanmean_rows(v[None, :])[0]) for v in (auc, other, point)]
    rows = [
        {"finding": d, "auc": auc[k], "other_auc": other[k], "difference": point[k]}
        | {"ci_low": lows[k], "ci_high": highs[k]}
        for k, d in enumerate(pathologies)
    ]
    rows.append(dict(zip(("auc", "other_auc", "difference"), means, strict=True)) | {"finding": MEAN})
    rows[-1] |= {"ci_low": float(mean_low), "ci_high": float(mean_high)}
    return [{k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()} for row in rows]


def _validation(client: MlflowClient, version: ModelVersion) -> tuple[Predictions, tuple[str, ...]]:
    run_id = version.tags.get(mn.RUN_TAG) or version.run_id
    frame = promotion.validation_predictions(client, run_id)
    uri = f"models:/{version.name}/{version.version}"
    if frame is None:
        raise CxrError(
            f"{uri} (run {run_id}) has no {mn.VAL_PREDICTIONS_ARTIFACT} to pair on: it was evaluated before "
            f"cxr logged them; re-evaluate it first: python -m cxr.evaluate model_uri={uri}"
        )
    return frame_predictions(frame, f"{mn.VAL_PREDICTIONS_ARTIFACT} of run {run_id}")


def compare_versions(
    client: MlflowClient,
    ours: ModelVersion,
    theirs: ModelVersion,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict:
    """The card's `comparison`: who the other version is, and the paired table with test AUCs beside."""
    (p_ours, names), (p_theirs, their_names) = _validation(client, ours), _validation(client, theirs)
    if names != their_names:
        found = f"{', '.join(names)} against {', '.join(their_names)}"
        raise CxrError(f"the two versions predict different findings: {found}")
    # a fold ensemble's out-of-fold scores pair on the other's validation images (gates.aligned)
    p_ours, p_theirs = aligned(p_ours, p_theirs, versions.any_out_of_fold(ours, theirs))
    rows = paired_table(p_ours, p_theirs, names, resamples, confidence, seed)
    tests = [client.get_run(v.tags.get(mn.RUN_TAG) or v.run_id).data.metrics for v in (ours, theirs)]
    for row in rows:
        name = (
            mn.split_metric(mn.TEST, mn.AUC_MEAN)
            if row["finding"] == MEAN
            else mn.per_disease(mn.TEST, mn.AUC, row["finding"])
        )
        row["test_auc"], row["other_test_auc"] = (m.get(name) for m in tests)
    return {
        "other": f"models:/{theirs.name}/{theirs.version}",
        "other_run": theirs.tags.get(mn.RUN_TAG) or theirs.run_id,
        "other_aliases": ", ".join(getattr(theirs, "aliases", []) or []),
        "n_images": int(len(p_ours.labels)),
        "resamples": resamples,
        "confidence": confidence,
        "rows": rows,
    }
