"""Final evaluation: per-disease ROC AUC on a split, named for MLflow."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from cxr.labels import DISEASES


def per_disease_auc(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """AUC of each disease; NaN where the split holds only one class of that disease (AUC undefined)."""
    out = {}
    for k, disease in enumerate(DISEASES):
        col = y_true[:, k]
        out[disease] = float(roc_auc_score(col, y_score[:, k])) if 0 < col.sum() < len(col) else float("nan")
    return out


def auc_metrics(prefix: str, y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """`{prefix}_auc_<Disease>` for all 14 and `{prefix}_auc_mean` over the defined ones."""
    aucs = per_disease_auc(y_true, y_score)
    metrics = {f"{prefix}_auc_{d}": v for d, v in aucs.items()}
    defined = [v for v in aucs.values() if not np.isnan(v)]
    metrics[f"{prefix}_auc_mean"] = float(np.mean(defined)) if defined else float("nan")
    return metrics
