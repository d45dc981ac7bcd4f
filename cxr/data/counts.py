"""How many positives each finding has in each split, and which are too few to trust.

A small or unlucky split can leave a finding with no validation positives (its threshold cannot be
chosen) or one training positive (nothing to learn from); the run says so instead of logging NaN.
Pure pandas on the prepared data's arrays: the train command logs the table and the warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxr.data.splits import SPLIT_TITLES

COLUMNS = ("positives", "negatives", "patients_positive")


def count_table(
    labels: np.ndarray, patients: np.ndarray, rows: Mapping[str, np.ndarray], pathologies: Sequence[str]
) -> pd.DataFrame:
    """Index (split, finding); columns positives, negatives, and patients with a positive image."""
    parts = []
    for split, index in rows.items():
        y = np.asarray(labels)[index] > 0.5
        who = pd.Series(np.asarray(patients)[index])
        parts.append(
            pd.DataFrame(
                {
                    "split": split,
                    "finding": list(pathologies),
                    "positives": y.sum(axis=0),
                    "negatives": (~y).sum(axis=0),
                    "patients_positive": [who[y[:, k]].nunique() for k in range(y.shape[1])],
                }
            )
        )
    return pd.concat(parts).set_index(["split", "finding"])


def scarce(counts: pd.DataFrame, min_positives: int) -> pd.Series:
    """Positives of each (split, finding) below `min_positives`, in the table's order."""
    positives = counts["positives"]
    return positives[positives < min_positives]


def scarcity_note(few: pd.Series) -> str:
    """`Hernia: 0 in val, 2 in test; Edema: 1 in train` (findings in the order first met)."""
    by_finding: dict[str, list[str]] = {}
    for (split, finding), n in few.items():
        by_finding.setdefault(finding, []).append(f"{n} in {split}")
    return "; ".join(f"{finding}: {', '.join(parts)}" for finding, parts in by_finding.items())


def scarcity_warning(few: pd.Series, min_positives: int, table: str) -> str:
    """The console's warning; `table` is where the run keeps the whole count table."""
    return (
        f"findings with fewer than dataset.min_positives={min_positives} positive images: "
        f"{scarcity_note(few)}. "
        "Their AUCs and thresholds are unreliable, or undefined where a split has none; use more data or "
        f"another split (see {table} in the run)"
    )


def undefined_reason(y: np.ndarray, split: str) -> str | None:
    """Why a finding's AUC or threshold cannot be computed on a split, or None when it can."""
    title = SPLIT_TITLES.get(split, split)
    if not (y > 0.5).any():
        return f"no {title} positives"
    if (y > 0.5).all():
        return f"no {title} negatives"
    return None
