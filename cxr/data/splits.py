"""Assign every image to train, val or test; no patient ever spans two splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.errors import CxrError
from cxr.registry import Registry

SPLIT_NAMES = ("train", "val", "test")
SPLITS: Registry = Registry("split")


def _check_known(names: list[str], known: pd.Series, list_name: str) -> None:
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise CxrError(
            f"{list_name} names {len(unknown)} image(s) absent from the label file (first: {', '.join(unknown[:5])})"
        )


def carve_patients(patients: np.ndarray, fraction: float, seed: int) -> set:
    """A random share of distinct patients, so held-out images never share a patient with training."""
    if not 0.0 < fraction < 1.0:
        raise CxrError(f"dataset.val_fraction must be between 0 and 1, got {fraction}")
    unique = np.unique(patients)
    n = max(1, int(round(len(unique) * fraction)))
    return set(np.random.default_rng(seed).permutation(unique)[:n].tolist())


@SPLITS.register("official")
def official_split(
    meta: pd.DataFrame, train_val: list[str], test: list[str], val_fraction: float, seed: int
) -> pd.Series:
    """The NIH test list is the test set; validation patients are carved out of train_val."""
    _check_known(train_val, meta["Image Index"], "train_val_list.txt")
    _check_known(test, meta["Image Index"], "test_list.txt")
    split = pd.Series(pd.NA, index=meta.index, dtype="object")
    split[meta["Image Index"].isin(test)] = "test"
    in_train_val = meta["Image Index"].isin(train_val) & split.isna()
    val_patients = carve_patients(meta.loc[in_train_val, "Patient ID"].to_numpy(), val_fraction, seed)
    split[in_train_val] = np.where(meta.loc[in_train_val, "Patient ID"].isin(val_patients), "val", "train")
    return split


def assign(name: str, meta: pd.DataFrame, train_val: list[str], test: list[str], val_fraction: float, seed: int):
    split = SPLITS.get(name)(meta, train_val, test, val_fraction, seed)
    counts = split.value_counts()
    empty = [s for s in SPLIT_NAMES if counts.get(s, 0) == 0]
    if empty:
        raise CxrError(f"split {name!r} left {', '.join(empty)} empty ({dict(counts)}); use a larger dataset")
    shared = meta.assign(split=split).dropna(subset=["split"]).groupby("Patient ID")["split"].nunique()
    if (shared > 1).any():  # a guard on the invariant, not a user error
        raise AssertionError(f"patients in two splits: {list(shared[shared > 1].index[:5])}")
    return split
