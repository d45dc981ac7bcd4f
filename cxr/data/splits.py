"""Assign every image to train, val or test; no patient ever spans two splits.

Patients carry different numbers of images and of positive images, so stratifying patient-level
0/1 label vectors (what a library call does) leaves rare findings badly unbalanced at image level.
`stratify_patients` instead balances, for every split, the image count and each finding's count of
positive images, assigning whole patients greedily, rarest findings first; and when a finding's
positive patients still to place are no more than the splits without one, the next goes to such a
split, so every split gets a positive patient of each finding where there are enough (a finding
absent from validation has no threshold).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr.runtime.builders import Builders
from cxr.runtime.errors import CxrError

if TYPE_CHECKING:
    from cxr.config import DatasetConfig  # a type only: config sits above data

SPLIT_NAMES = ("train", "val", "test")
SPLIT_TITLES = {"train": "training", "val": "validation", "test": "test"}  # in words, as messages say them
SPLIT_METHODS: Builders = Builders("split")
# split.csv, saved with every run, keeps the NIH column names users know
SPLIT_CSV_COLUMNS = {"image_id": "Image Index", "patient_id": "Patient ID", "split": "split"}


def valid_fractions(fractions: Sequence[float]) -> bool:
    """Shares of a split: positive and summing to 1 (the one rule, for configs and callers alike)."""
    shares = np.asarray(fractions, dtype=np.float64)
    return shares.ndim == 1 and bool(np.all(shares > 0)) and bool(np.isclose(shares.sum(), 1.0))


def stratify_patients(
    meta: pd.DataFrame, pathologies: Sequence[str], fractions: Sequence[float], seed: int
) -> np.ndarray:
    """Index into `fractions` for every row of `meta`, whole patients at a time."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if not valid_fractions(fractions):
        raise CxrError(f"split fractions must be positive and sum to 1, got {fractions.tolist()}")
    codes, patients = pd.factorize(meta["patient_id"])
    labels = meta[list(pathologies)].to_numpy(np.float64)
    per_image = np.concatenate([np.ones((len(meta), 1)), labels], axis=1)
    counts = np.zeros((len(patients), per_image.shape[1]))
    np.add.at(counts, codes, per_image)  # per patient: images, positive images of each finding
    totals = counts.sum(axis=0)
    target = fractions[:, None] * totals[None, :]
    current = np.zeros_like(target)
    inv_totals = 1.0 / np.maximum(totals, 1.0)
    inv_target = 1.0 / np.maximum(target, 1e-9)

    rng = np.random.default_rng(seed)
    rarity = np.where(counts[:, 1:] > 0, inv_totals[None, 1:], 0.0).max(axis=1)
    order = np.lexsort((rng.random(len(patients)), -counts[:, 0], -rarity))
    assignment = np.empty(len(patients), dtype=np.int64)
    left = (counts[:, 1:] > 0).sum(axis=0)  # per finding: positive patients not yet placed
    for p in order:
        c = counts[p]
        need = (target - current) * inv_target  # share of each split's quota still open
        score = (need * (c * inv_totals)).sum(axis=1)
        # A finding is urgent when its positive patients still to place are no more than the splits
        # without one: this patient must then go to such a split, or one will end without any.
        lacking = current[:, 1:] == 0
        urgent = (c[1:] > 0) & (left <= lacking.sum(axis=0))
        covers = (lacking & urgent[None, :]).sum(axis=1)
        split = int(np.argmax(np.where(covers == covers.max(), score, -np.inf)))
        left -= c[1:] > 0
        assignment[p] = split
        current[split] += c
    return assignment[codes]


def _check_known(names: list[str], known: pd.Series, list_name: str) -> None:
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise CxrError(
            f"{list_name} names {len(unknown)} image(s) absent from the label file "
            f"(first: {', '.join(unknown[:5])}); is it the list of the same release?"
        )


def _check_patients_in_one_list(meta: pd.DataFrame, train_val: list[str], test: list[str]) -> None:
    """An image or a patient in both lists would be trained on and tested on: name the first such one."""
    twice = sorted(set(train_val) & set(test))
    if twice:
        raise CxrError(
            f"image {twice[0]} is in both train_val_list.txt and test_list.txt ({len(twice)} such "
            "image(s)); each image belongs in one list: remove it from the other"
        )
    in_test = meta["image_id"].isin(test)
    in_train_val = meta["image_id"].isin(train_val) & ~in_test
    shared = sorted(set(meta.loc[in_test, "patient_id"]) & set(meta.loc[in_train_val, "patient_id"]))
    if shared:
        patient = shared[0]
        mine = meta["patient_id"] == patient
        first_tv = meta.loc[mine & in_train_val, "image_id"].iloc[0]
        first_test = meta.loc[mine & in_test, "image_id"].iloc[0]
        raise CxrError(
            f"patient {patient} has images in both train_val_list.txt ({first_tv}) and test_list.txt "
            f"({first_test}) ({len(shared)} such patient(s)); the lists must split by patient: "
            "move all of a patient's images into one list"
        )


def _warn_unlisted(meta: pd.DataFrame, train_val: list[str], test: list[str]) -> None:
    """Images in the label file but in neither list are left out of the official split; say so."""
    unlisted = meta.loc[~meta["image_id"].isin(train_val) & ~meta["image_id"].isin(test), "image_id"]
    if len(unlisted):
        print(
            f"cxr: warning: {len(unlisted)} of {len(meta)} images in the label file are in neither "
            f"train_val_list.txt nor test_list.txt and are left out (first: {', '.join(unlisted.iloc[:5])}); "
            "add them to a list, or use dataset.split=random to split all images",
            file=sys.stderr,
        )


@SPLIT_METHODS.register("official")
def official_split(
    meta: pd.DataFrame,
    pathologies: Sequence[str],
    train_val: list[str],
    test: list[str],
    cfg: DatasetConfig,
) -> pd.Series:
    """The NIH test list is the test set; validation patients are carved out of train_val, stratified."""
    split, in_train_val = _test_from_list(meta, train_val, test)
    if not 0.0 < cfg.val_fraction < 1.0:
        raise CxrError(f"dataset.val_fraction must be between 0 and 1, got {cfg.val_fraction}")
    if in_train_val.any():
        fractions = [1 - cfg.val_fraction, cfg.val_fraction]
        part = stratify_patients(meta[in_train_val], pathologies, fractions, cfg.split_seed)
        split[in_train_val] = np.array(["train", "val"])[part]
    return split


def _test_from_list(meta: pd.DataFrame, train_val: list[str], test: list[str]) -> tuple[pd.Series, pd.Series]:
    """(the split column with test_list.txt's images as test and the rest unset, the train_val mask)."""
    _check_known(train_val, meta["image_id"], "train_val_list.txt")
    _check_known(test, meta["image_id"], "test_list.txt")
    _check_patients_in_one_list(meta, train_val, test)
    _warn_unlisted(meta, train_val, test)
    split = pd.Series(pd.NA, index=meta.index, dtype="object")
    split[meta["image_id"].isin(test)] = "test"
    return split, meta["image_id"].isin(train_val) & split.isna()


@SPLIT_METHODS.register("kfold")
def kfold_split(
    meta: pd.DataFrame,
    pathologies: Sequence[str],
    train_val: list[str],
    test: list[str],
    cfg: DatasetConfig,
) -> pd.Series:
    """The NIH test list stays the test set; train_val's patients fall into `dataset.folds` stratified
    folds, fold `dataset.fold` validates and the others train. A validation set of a few dozen images
    picks models by noise; `-m dataset.fold=0,1,2,3,4` validates each of five models on its own fold,
    so every train_val image is validated on once."""
    if not 0 <= cfg.fold < cfg.folds:
        raise CxrError(f"dataset.fold={cfg.fold}: give 0 to dataset.folds - 1 ({cfg.folds - 1})")
    split, in_train_val = _test_from_list(meta, train_val, test)
    if in_train_val.any():
        part = stratify_patients(meta[in_train_val], pathologies, [1 / cfg.folds] * cfg.folds, cfg.split_seed)
        split[in_train_val] = np.where(part == cfg.fold, "val", "train")
    return split


@SPLIT_METHODS.register("random")
def random_split(
    meta: pd.DataFrame,
    pathologies: Sequence[str],
    train_val: list[str],
    test: list[str],
    cfg: DatasetConfig,
) -> pd.Series:
    """The 2025 study's 90/5/5 (or `dataset.split_fractions`), patient-level and stratified."""
    part = stratify_patients(meta, pathologies, cfg.split_fractions, cfg.split_seed)
    return pd.Series(np.array(SPLIT_NAMES)[part], index=meta.index, dtype="object")


def assign(
    meta: pd.DataFrame,
    pathologies: Sequence[str],
    train_val: list[str],
    test: list[str],
    cfg: DatasetConfig,
) -> pd.Series:
    """The split column for `meta` as configured; errors if a split ends empty."""
    split = SPLIT_METHODS.get(cfg.split)(meta, pathologies, train_val, test, cfg)
    counts = split.value_counts()
    empty = [s for s in SPLIT_NAMES if counts.get(s, 0) == 0]
    if empty:
        raise CxrError(
            f"dataset.split={cfg.split} leaves {', '.join(empty)} empty "
            f"(train/val/test images: {[int(counts.get(s, 0)) for s in SPLIT_NAMES]}); "
            "use more images or other fractions"
        )
    shared = meta.assign(split=split).dropna(subset=["split"]).groupby("patient_id")["split"].nunique()
    if (shared > 1).any():  # a guard on the invariant (user lists are checked above), not a user error
        raise AssertionError(f"patients in two splits: {list(shared[shared > 1].index[:5])}")
    return split


# ------------------------------------------------------------------ split.csv
def write_split_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """`Image Index, Patient ID, split` for every image: the record of who was trained on."""
    path = Path(path)
    table[list(SPLIT_CSV_COLUMNS)].rename(columns=SPLIT_CSV_COLUMNS).to_csv(path, index=False)
    return path


def read_split_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A split.csv back as image_id, patient_id, split."""
    try:
        raw = pd.read_csv(path, dtype={"Image Index": str})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise CxrError(f"cannot read split file {path}: {err}") from None
    missing = [c for c in SPLIT_CSV_COLUMNS.values() if c not in raw.columns]
    bad = sorted(set(raw.get("split", pd.Series(dtype=str)).dropna()) - set(SPLIT_NAMES))
    if missing or bad:
        raise CxrError(
            f"{path} is not a cxr split file: it needs columns {list(SPLIT_CSV_COLUMNS.values())} "
            f"with splits {', '.join(SPLIT_NAMES)}" + (f"; found split(s) {bad}" if bad else "")
        )
    return raw.rename(columns={v: k for k, v in SPLIT_CSV_COLUMNS.items()})[list(SPLIT_CSV_COLUMNS)]


def apply_split(table: pd.DataFrame, logged: pd.DataFrame, source: str) -> pd.DataFrame:
    """Give each image the split it had in training, so no training image is ever scored as test.

    Images added to the dataset since are left out; images of the logged split that are gone are an
    error naming `source` (where the split came from).
    """
    split = logged.set_index("image_id")["split"]
    absent = split.index.difference(table["image_id"])
    if len(absent):
        raise CxrError(
            f"{len(absent)} images of {source}'s split are not in the dataset (first: "
            f"{', '.join(absent[:3])}); point the dataset root at the dataset the run used"
        )
    table = table[table["image_id"].isin(split.index)].reset_index(drop=True)
    return table.assign(split=table["image_id"].map(split).to_numpy())


def split_digest(table: pd.DataFrame) -> str:
    """A short fingerprint of who is in which split: models scored on different splits differ here."""
    pairs = table[["image_id", "split"]].astype(str).sort_values("image_id")
    text = "\n".join(pairs["image_id"] + "," + pairs["split"])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
