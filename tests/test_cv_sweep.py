"""`optuna.cv_folds=K`: a job (a sweep trial, or a plain run) trains one model per fold and returns the
mean of the folds' validation metric; a trial's pruner sees the running mean after each fold.

Real SQLite MLflow and Optuna stores, tiny synthetic images and small_cnn.
"""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from cxr.config import check_training
from cxr.runtime.errors import CxrError
from cxr.tracking import names as mn
from tests.conftest import run_cli
from tests.test_sweep import pruned_at_first_step, sweep_args

CV = ["optuna.cv_folds=2", "trainer.epochs=1"]


def runs_of(tmp):
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("cxr")
    return client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optuna.cv_folds=1"], "optuna.cv_folds"),
        (["optuna.cv_folds=3", "dataset.split=random"], "dataset.split"),
    ],
)
def test_cv_folds_values_are_checked(compose_cfg, overrides, key):
    with pytest.raises(CxrError, match=key):
        check_training(compose_cfg(overrides))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cv-sweep-data")


@pytest.mark.slow
def test_a_cv_sweep_trial_optimises_the_mean_fold_auc_with_folds_nested(tmp_path, data_root):
    args = sweep_args(
        tmp_path, data_root, "cv", "hydra/sweeper=cxr_optuna", "model.dropout=interval(0.1,0.3)", *CV
    )
    out = run_cli("cxr.train", *args, "hydra.sweeper.n_trials=1")
    assert out.returncode == 0, out.stderr[-3000:]
    (trial,) = optuna.load_study(study_name="cv", storage=f"sqlite:///{tmp_path}/optuna.db").trials
    everything = runs_of(tmp_path)
    (parent,) = [r for r in everything if r.data.tags.get(mn.SWEEP_TAG) == "true"]
    (cv,) = [r for r in everything if r.data.tags.get(mn.CV_FOLDS_TAG) == "2"]
    folds = [r for r in everything if r.data.tags.get(mn.PARENT_RUN_TAG) == cv.info.run_id]
    assert cv.data.tags[mn.PARENT_RUN_TAG] == parent.info.run_id and len(folds) == 2
    values = {int(r.data.params["dataset.fold"]): r.data.metrics[mn.OPTIMIZED] for r in folds}
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx((values[0] + values[1]) / 2)
    assert trial.intermediate_values == pytest.approx({0: values[0], 1: trial.value})
    assert trial.user_attrs["mlflow_run_id"] == cv.info.run_id
    assert {r.info.run_name for r in folds} == {"cv-trial-0-fold0", "cv-trial-0-fold1"}
    assert all(r.data.params["dataset.split"] == "kfold" for r in folds)
    assert cv.data.metrics[mn.OPTIMIZED] == pytest.approx(trial.value) and cv.info.status == "FINISHED"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    history = client.get_metric_history(cv.info.run_id, mn.per_fold(mn.OPTIMIZED))
    assert sorted(m.step for m in history) == [0, 1]


@pytest.mark.slow
def test_a_cv_trial_trailing_the_median_is_pruned_after_its_first_fold(tmp_path, data_root):
    pruned_at_first_step(tmp_path, data_root, "cvp", *CV)  # the running mean after fold 0
    (cv,) = [r for r in runs_of(tmp_path) if r.data.tags.get(mn.CV_FOLDS_TAG) == "2"]
    assert cv.info.status == "KILLED" and cv.data.tags[mn.STATE_TAG] == "PRUNED"
    assert len([r for r in runs_of(tmp_path) if r.data.tags.get(mn.PARENT_RUN_TAG) == cv.info.run_id]) == 1
