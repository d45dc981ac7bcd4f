"""dataset.split=kfold: NIH's test list fixed, train_val's patients in k stratified validation folds."""

from __future__ import annotations

import pandas as pd
import pytest
from omegaconf import OmegaConf

from cxr.config import NihDatasetConfig, check_dataset
from cxr.data import splits
from cxr.data.labels import NIH_PATHOLOGIES
from cxr.runtime.errors import CxrError


@pytest.fixture(scope="module")
def nih_dev(shared_data) -> tuple[pd.DataFrame, list[str], list[str]]:
    """nih-dev's 1,218 real rows: image, patient, the 14 labels; its official train_val and test lists."""
    labels = pd.read_csv(shared_data / "nih-dev" / "labels.csv")
    meta = labels.rename(columns={"Image Index": "image_id", "Patient ID": "patient_id"})
    lists = [meta.loc[labels["official_split"] == s, "image_id"].tolist() for s in ("train_val", "test")]
    return meta[["image_id", "patient_id", *NIH_PATHOLOGIES]], *lists


def kfold(fold: int, folds: int = 5):
    return OmegaConf.structured(NihDatasetConfig(split="kfold", folds=folds, fold=fold))


def test_each_train_val_patient_validates_in_exactly_one_fold_and_test_stays(nih_dev):
    meta, train_val, test = nih_dev
    columns = [splits.assign(meta, NIH_PATHOLOGIES, train_val, test, kfold(f)) for f in range(5)]
    is_test = meta["image_id"].isin(test)
    for split in columns:
        assert (split[is_test] == "test").all() and (split[~is_test] != "test").all()
        assert meta.assign(split=split).groupby("patient_id")["split"].nunique().max() == 1
    validated = sum((split == "val").astype(int) for split in columns)
    assert (validated[~is_test] == 1).all()
    sizes = [int((split == "val").sum()) for split in columns]
    assert max(sizes) - min(sizes) <= 0.1 * len(train_val) / 5, sizes
    cardiomegaly = [int(meta.loc[split == "val", "Cardiomegaly"].sum()) for split in columns]
    assert max(cardiomegaly) - min(cardiomegaly) <= 5, cardiomegaly  # stratified


@pytest.mark.parametrize(("folds", "fold", "key"), [(1, 0, "dataset.folds"), (5, 5, "dataset.fold")])
def test_fold_values_are_checked(folds, fold, key):
    with pytest.raises(CxrError, match=key):
        check_dataset(kfold(fold, folds))
