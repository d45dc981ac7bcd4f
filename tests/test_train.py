"""End to end: a tiny `cxr.train` run lands in a real SQLite MLflow store with everything logged."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cxr.errors import CxrError
from cxr.labels import DISEASES
from cxr.train import train
from tests.conftest import TINY, hydra_compose, run_cli, store_overrides


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny training run shared by the assertions below (training is the slow part)."""
    tmp = tmp_path_factory.mktemp("run")
    with hydra_compose() as compose_cfg:
        cfg = compose_cfg(["loss=dynamic_bce", *TINY, *store_overrides(tmp)])
    val_auc = train(cfg, ["loss=dynamic_bce"])
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])
    return cfg, client, run, val_auc


def test_run_finished_with_all_disease_aucs(finished):
    _, _, run, val_auc = finished
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for split in ("val", "test"):
        for disease in DISEASES:
            assert f"{split}_auc_{disease}" in metrics
        defined = [metrics[f"{split}_auc_{d}"] for d in DISEASES if not np.isnan(metrics[f"{split}_auc_{d}"])]
        assert metrics[f"{split}_auc_mean"] == pytest.approx(np.mean(defined))
        assert 0.0 <= metrics[f"{split}_auc_mean"] <= 1.0
    assert val_auc == pytest.approx(metrics["val_auc_mean"])


def test_run_logs_config_params_tags_and_epoch_history(finished):
    cfg, client, run, _ = finished
    params = run.data.params
    assert params["loss.name"] == "dynamic_bce"
    assert params["loss.smoothing_factor"] == "0.1"
    assert params["trainer.epochs"] == "2"
    assert run.data.tags["hydra.overrides"] == "loss=dynamic_bce"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1]
    assert len(client.get_metric_history(run.info.run_id, "train_auc")) == 2


def test_run_logs_config_split_and_history_artifacts(finished, tmp_path):
    cfg, client, run, _ = finished
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "split.csv", "history.csv"} <= names
    config_text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    assert "dynamic_bce" in config_text
    split = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/split.csv", dst_path=str(tmp_path))
    import pandas as pd

    table = pd.read_csv(split)
    assert list(table.columns) == ["Image Index", "Patient ID", "split"]
    assert table.groupby("Patient ID")["split"].nunique().max() == 1


def test_logged_model_loads_and_predicts(finished):
    cfg, _, run, _ = finished
    mlflow.set_tracking_uri(cfg.tracking.uri)
    model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    size = cfg.dataset.image_size
    out = model.predict(np.zeros((2, size, size, 1), np.uint8), verbose=0)
    assert out.shape == (2, len(DISEASES)) and np.all((out >= 0) & (out <= 1))
    info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert info.signature.inputs.inputs[0].shape == (-1, size, size, 1)


def _only_run(cfg):
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def test_a_run_that_raises_ends_failed(compose_cfg, tmp_path):
    cfg = compose_cfg([*TINY, *store_overrides(tmp_path), "trainer.optimizer.name=adamq"])
    with pytest.raises(CxrError, match="adamq"):
        train(cfg)
    assert _only_run(cfg).info.status == "FAILED"


def test_a_run_with_a_bug_ends_failed(compose_cfg, tmp_path):
    cfg = compose_cfg([*TINY, *store_overrides(tmp_path), "model.dropout=1.5"])
    with pytest.raises(ValueError):
        train(cfg)
    assert _only_run(cfg).info.status == "FAILED"


def test_cli_runs_and_prints_run_id_auc_and_ui_command(tmp_path):
    out = run_cli(
        "cxr.train", "experiment=demo", *TINY, *store_overrides(tmp_path), f"hydra.run.dir={tmp_path}/hydra"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = out.stdout.split("MLflow run ")[1].split()[0]
    assert MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(run_id).info.status == "FINISHED"
    assert "mean AUC: validation" in out.stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlruns/mlflow.db" in out.stdout


def test_cli_user_error_is_one_line_and_exit_2(tmp_path):
    out = run_cli(
        "cxr.train", "dataset=nih", f"dataset.root={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/hydra"
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"cxr: error: dataset folder {tmp_path}/nowhere does not exist")
