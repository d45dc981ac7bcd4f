"""One split's predictions as a table (the run artifact `evaluation/val_predictions.csv`) and back.

Every evaluation logs its validation predictions, so promotion compares two versions on the same
validation patients (a paired bootstrap) from the registry alone, without the images or a model load.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxr.runtime.errors import CxrError
from cxr.serving.inference import Predictions

LABEL, SCORE, PATIENT = "label/", "score/", "patient_id"


def predictions_frame(p: Predictions, pathologies: Sequence[str]) -> pd.DataFrame:
    """image_id and subgroup columns (when known), patient_id, `label/<finding>`, `score/<finding>`."""
    frame = p.metadata.reset_index(drop=True).copy() if p.metadata is not None else pd.DataFrame()
    frame[PATIENT] = p.patients
    for k, d in enumerate(pathologies):
        frame[LABEL + d] = np.asarray(p.labels)[:, k].astype(np.uint8)
    for k, d in enumerate(pathologies):
        frame[SCORE + d] = np.asarray(p.scores)[:, k]
    return frame


def frame_predictions(frame: pd.DataFrame, source: str) -> tuple[Predictions, tuple[str, ...]]:
    """`predictions_frame`'s table back as Predictions and its pathologies (`source` names it in errors)."""
    pathologies = tuple(c[len(SCORE) :] for c in frame.columns if c.startswith(SCORE))
    if not pathologies or PATIENT not in frame or any(LABEL + d not in frame for d in pathologies):
        raise CxrError(f"{source} is not a predictions table (patient_id, label/<finding>, score/<finding>)")
    labels = frame[[LABEL + d for d in pathologies]].to_numpy(np.float64)
    scores = frame[[SCORE + d for d in pathologies]].to_numpy(np.float64)
    meta = frame[[c for c in frame.columns if not c.startswith((LABEL, SCORE)) and c != PATIENT]]
    return Predictions(
        labels, scores, frame[PATIENT].to_numpy(), meta if len(meta.columns) else None
    ), pathologies
