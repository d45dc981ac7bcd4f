"""The one module of MLflow metric names: `/` groups, Keras's per-epoch keys, the old spellings."""

from __future__ import annotations

import pytest

from cxr.runtime.errors import CxrError
from cxr.tracking import names as mn


@pytest.mark.parametrize(
    "keras_key, name",
    [("loss", "train/loss"), ("val_loss", "val/loss"), ("auc", "train/auc"), ("val_auc", "val/auc"),
     ("learning_rate", "train/lr"), ("val_f1_micro", "val/f1_micro")],
)  # fmt: skip
def test_keras_log_keys_map_to_grouped_names_and_back(keras_key, name):
    assert mn.from_keras(keras_key) == name and mn.to_keras(name) == keras_key


def test_names_group_by_split_then_quantity_then_disease():
    assert mn.per_disease("val", "auc", "Pleural_Thickening") == "val/auc/Pleural_Thickening"
    assert (mn.RANK, mn.interval(mn.RANK)) == (
        "val/auc_mean",
        ("val/auc_mean_ci_low", "val/auc_mean_ci_high"),
    )
    assert (mn.threshold("Hernia"), mn.timing("fit"), mn.trials("pruned")) == (
        "threshold/Hernia",
        "time/fit_s",
        "sweep/trials_pruned",
    )
    assert mn.legacy("val/auc/Atelectasis") == "val_auc_Atelectasis"  # how versions were tagged before


@pytest.mark.parametrize(
    "old, new",
    [("val_auc_mean", "val/auc_mean"), ("val_auc_Pleural_Thickening", "val/auc/Pleural_Thickening")],
)
def test_an_old_spelling_is_an_error_that_names_the_new_one(old, new):
    with pytest.raises(CxrError, match=f"optimized_metric='{old}': .* write {new} "):
        mn.check_validation(old, "optimized_metric", "")


def test_a_test_metric_is_refused_for_selection():
    with pytest.raises(CxrError, match="choose a validation metric"):
        mn.check_validation("test/auc_mean", "metric", "never select on test")
