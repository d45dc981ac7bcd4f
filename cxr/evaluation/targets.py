"""Operating points at a target: sensitivity at specificity 0.90 (`spec90`), specificity at sensitivity
0.95 (`sens95`), ...

Each threshold is chosen on validation so that the held measure reaches its target there, then applied
unchanged to test, where the achieved values are reported with patient-bootstrap intervals next to the
target: how well a validation threshold transfers is itself a finding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr.evaluation.scoring import confidence_interval, patient_bootstrap, threshold_at, weighted_rates
from cxr.runtime.errors import CxrError

_SHORT = {"specificity": "spec", "sensitivity": "sens"}
OTHER = {"specificity": "sensitivity", "sensitivity": "specificity"}


@dataclass(frozen=True)
class Target:
    """Hold `measure` at `value` (chosen on validation); the other measure is what the point buys."""

    measure: str  # specificity | sensitivity
    value: float

    @property
    def name(self) -> str:
        """`spec90`, `sens95`, `spec97.5`: the name `operating_point=` and the metric names use."""
        return f"{_SHORT[self.measure]}{self.value * 100:g}"

    @property
    def reported(self) -> str:
        return OTHER[self.measure]


def targets(specificity: Sequence[float], sensitivity: Sequence[float]) -> list[Target]:
    """The configured targets, specificity ones first."""
    return [Target("specificity", float(v)) for v in specificity] + [
        Target("sensitivity", float(v)) for v in sensitivity
    ]


def parse_target(name: str) -> Target:
    """`spec90` -> Target('specificity', 0.9); a CxrError names the form otherwise."""
    found = re.fullmatch(r"(spec|sens)(\d+(?:\.\d+)?)", name)
    if not found or not 0 < float(found.group(2)) < 100:
        raise CxrError(f"operating point {name!r}: write spec<percent> or sens<percent>, e.g. spec90, sens95")
    measure = {v: k for k, v in _SHORT.items()}[found.group(1)]
    return Target(measure, float(found.group(2)) / 100)


def choose_target_thresholds(
    y_val: np.ndarray, s_val: np.ndarray, chosen: Sequence[Target]
) -> dict[str, np.ndarray]:
    """{target name: per-finding threshold} from validation only; NaN where validation lacks the class."""
    return {
        t.name: np.array(
            [threshold_at(y_val[:, k], s_val[:, k], t.measure, t.value) for k in range(y_val.shape[1])]
        )
        for t in chosen
    }


def target_table(
    y: np.ndarray,
    s: np.ndarray,
    patients: np.ndarray,
    thresholds: dict[str, np.ndarray],
    chosen: Sequence[Target],
    pathologies: Sequence[str],
    resamples: int,
    confidence: float,
    seed: int,
) -> pd.DataFrame:
    """One row per (operating point, finding): target, threshold, achieved sensitivity and specificity,
    with their intervals when `resamples` > 0 (one patient bootstrap shared by every point)."""
    y, s = np.asarray(y, np.float64), np.asarray(s, np.float64)
    boot = patient_bootstrap(patients, resamples, seed) if resamples > 0 else None
    owner = boot[1] if boot else pd.factorize(pd.Series(patients))[0]
    point_weights = np.ones((int(owner.max()) + 1 if len(owner) else 0, 1), np.float32)
    frames = []
    for t in chosen:
        th = thresholds[t.name]
        point = weighted_rates(y, s, th, point_weights, owner)
        frame = pd.DataFrame(
            {"operating_point": t.name, "disease": list(pathologies), "measure_held": t.measure},
        )
        frame["target"] = t.value
        frame["threshold"] = th
        for measure in ("sensitivity", "specificity"):
            frame[measure] = point[measure][0]
        if boot:
            rates = weighted_rates(y, s, th, boot[0], owner)
            for measure in ("sensitivity", "specificity"):
                low, high = confidence_interval(rates[measure], confidence)
                frame[f"{measure}_ci_low"], frame[f"{measure}_ci_high"] = low, high
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).set_index(["operating_point", "disease"])
