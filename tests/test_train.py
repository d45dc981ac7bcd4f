"""End to end: a tiny `cxr.train` run lands in a real SQLite MLflow store with everything logged."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cxr.data.labels import NIH_PATHOLOGIES
from cxr.runtime.errors import CxrError
from cxr.tracking import names as mn
from cxr.tracking import naming
from cxr.train import train
from tests.conftest import TINY, run_cli, store_overrides

pytestmark = pytest.mark.slow  # each test trains, or starts a process


@pytest.fixture(scope="module")
def finished(tiny_store):
    """The session's one tiny training run (tests/conftest.py), shared by the assertions below."""
    client = MlflowClient(tiny_store.cfg.tracking.uri)
    return tiny_store.cfg, client, client.get_run(tiny_store.run_id), tiny_store.objective


@pytest.mark.backend
def test_run_finished_with_all_disease_aucs(finished):
    _, _, run, objective = finished
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for split in ("val", "test"):
        for disease in NIH_PATHOLOGIES:
            assert mn.per_disease(split, "auc", disease) in metrics
        defined = [v for d in NIH_PATHOLOGIES if not np.isnan(v := metrics[mn.per_disease(split, "auc", d)])]
        assert metrics[mn.split_metric(split, "auc_mean")] == pytest.approx(np.mean(defined))
        assert 0.0 <= metrics[mn.split_metric(split, "auc_mean")] <= 1.0
    assert objective == pytest.approx(metrics["val/auprc_mean"])  # the configured optimized_metric
    assert objective != pytest.approx(metrics[mn.RANK])
    assert all(name.startswith(("train/", "val/", "test/", "threshold/", "time/")) for name in metrics)


@pytest.mark.backend
def test_run_logs_config_params_tags_and_epoch_history(finished):
    cfg, client, run, _ = finished
    params = run.data.params
    assert params["loss.name"] == "dynamic_bce"
    assert params["loss.smoothing_factor"] == "0.1"
    assert params["trainer.epochs"] == "2"
    assert run.data.tags["hydra.overrides"] == "loss=dynamic_bce"
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert [m.step for m in history] == [0, 1]
    assert len(client.get_metric_history(run.info.run_id, "train/auc")) == 2


@pytest.mark.backend
def test_run_logs_config_split_and_history_artifacts(finished, tmp_path):
    cfg, client, run, _ = finished
    mlflow.set_tracking_uri(cfg.tracking.uri)  # runs:/ URIs resolve against it; other tests set theirs
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "split.csv", "history.csv"} <= names
    config_text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    assert "dynamic_bce" in config_text
    split = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/split.csv", dst_path=str(tmp_path))
    import pandas as pd

    table = pd.read_csv(split)
    assert list(table.columns) == ["Image Index", "Patient ID", "split"]
    assert table.groupby("Patient ID")["split"].nunique().max() == 1


@pytest.mark.backend
def test_logged_model_is_cxrs_pyfunc_with_its_thresholds(finished):
    import json

    from cxr.serving import pyfunc

    cfg, _, run, _ = finished
    mlflow.set_tracking_uri(cfg.tracking.uri)
    model = pyfunc.load(f"runs:/{run.info.run_id}")
    size = cfg.dataset.image_size
    assert model.spec.image_sizes == [size] and model.pathologies == NIH_PATHOLOGIES
    out = model.probabilities([np.zeros((size, size), np.uint8), np.full((100, 80), 200, np.uint8)])
    assert out.shape == (2, len(NIH_PATHOLOGIES)) and np.all((out >= 0) & (out <= 1))
    logged = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/thresholds.json"))
    assert model.spec.thresholds == logged["thresholds"]  # the validation-chosen thresholds ship with it
    info = mlflow.models.get_model_info(pyfunc.run_model_uri(run.info.run_id))
    assert info.name == naming.model_name(run.info.run_name)  # named after the run, not "model"
    assert info.signature.inputs.input_names() == ["image"]


def _only_run(cfg):
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def test_a_run_that_raises_ends_failed(compose_cfg, tmp_path, tiny_data):
    # a bad value is refused before the run starts (tests/test_config.py); this name is known only
    # once the run has its metrics
    cheap = ["trainer.epochs=1", "evaluation.bootstrap.resamples=0", "evaluation.plots=false"]
    overrides = [*TINY, *store_overrides(tmp_path, tiny_data), *cheap]
    cfg = compose_cfg([*overrides, "optimized_metric=val/auc/Nosuch"])
    with pytest.raises(CxrError, match="val/auc/Nosuch"):
        train(cfg)
    assert _only_run(cfg).info.status == "FAILED"


def test_a_run_with_a_bug_ends_failed(compose_cfg, tmp_path, tiny_data):
    cfg = compose_cfg([*TINY, *store_overrides(tmp_path, tiny_data), "model.dropout=1.5"])
    with pytest.raises(ValueError):
        train(cfg)
    assert _only_run(cfg).info.status == "FAILED"


@pytest.mark.backend
def test_cli_runs_and_prints_run_id_auc_and_ui_command(tmp_path, tiny_data):
    tiny = [o for o in TINY if not o.startswith("trainer.verbose")]  # auto: one line per epoch, no TTY
    stores = store_overrides(tmp_path, tiny_data)  # TINY's data: TINY overrides the demo's
    out = run_cli("cxr.train", "experiment=demo", *tiny, *stores, f"hydra.run.dir={tmp_path}/hydra")
    assert out.returncode == 0, out.stderr[-3000:]
    banner = out.stdout.splitlines()[0]
    assert (
        banner.startswith("cxr.train: synthetic data (generated, not X-rays") and "model small_cnn" in banner
    )
    assert "on synthetic data" in out.stdout  # the summary says it again
    log = (tmp_path / "hydra" / "train.log").read_text()
    assert "cxr.train: synthetic data" in log and "mean AUC [95% CI]" in log
    assert "\r" not in log and "\x1b" not in log and "\r" not in out.stdout  # no progress-bar control codes
    assert "Epoch 2/2" in out.stdout
    run_id = out.stdout.split("MLflow run ")[1].split()[0]
    run = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["tracking.experiment_name"] == "cxr-demo"
    m = run.data.metrics
    printed = "mean AUC [95% CI]: validation {:.4f} [{:.4f}, {:.4f}], test {:.4f} [{:.4f}, {:.4f}]".format(
        *(m[f"{s}/auc_mean{c}"] for s in ("val", "test") for c in ("", mn.CI_LOW, mn.CI_HIGH))
    )
    assert printed in out.stdout  # the numbers printed are the numbers logged
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlruns/mlflow.db" in out.stdout


def test_choosing_on_test_is_refused_before_any_work(compose_cfg, tmp_path):
    cfg = compose_cfg([*TINY, *store_overrides(tmp_path), "optimized_metric=test/auc_mean"])
    with pytest.raises(CxrError, match="optimized_metric='test/auc_mean': choose a validation metric"):
        train(cfg)
    assert not (tmp_path / "synthetic").exists() and not (tmp_path / "mlruns").exists()


def test_cli_user_error_is_one_line_and_exit_2(tmp_path):
    out = run_cli(
        "cxr.train", "dataset=nih", f"dataset.root={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/hydra"
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"cxr: error: dataset folder {tmp_path}/nowhere does not exist")


@pytest.mark.backend
def test_run_logs_clinical_metrics_each_epoch(finished):
    _, client, run, _ = finished
    for name in ("auc", "recall", "precision", "specificity", "npv", "f1_micro", "hamming_loss"):
        for prefix in ("train/", "val/"):
            values = [m.value for m in client.get_metric_history(run.info.run_id, prefix + name)]
            assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values), prefix + name


@pytest.mark.backend
def test_run_logs_intervals_thresholds_operating_points_and_plots(finished, tmp_path):
    cfg, client, run, _ = finished
    mlflow.set_tracking_uri(cfg.tracking.uri)
    m = run.data.metrics
    for split in ("val", "test"):
        low, high = mn.interval(f"{split}/auc_mean")
        assert m[low] <= m[f"{split}/auc_mean"] <= m[high]
        assert 0.0 <= m[f"{split}/auc_micro"] <= 1.0 and 0.0 <= m[f"{split}/auprc_mean"] <= 1.0
        assert m[f"{split}/auc_std"] >= 0.0
    uri = f"runs:/{run.info.run_id}"
    thresholds = json.loads(mlflow.artifacts.load_text(f"{uri}/evaluation/thresholds.json"))
    assert thresholds["chosen_on"] == "val" and thresholds["method"] == "youden"
    assert set(thresholds["thresholds"]) == set(NIH_PATHOLOGIES)
    table = pd.read_csv(mlflow.artifacts.download_artifacts(f"{uri}/evaluation/test_per_disease.csv"))
    by_disease = table.set_index("disease")
    for disease in NIH_PATHOLOGIES:
        assert mn.threshold(disease) in m
        for quantity in ("sensitivity", "specificity", "ppv", "npv", "auprc"):
            # logged where defined; undefined (e.g. an NPV with nothing called negative) is left out, not NaN
            defined = np.isfinite(by_disease.loc[disease, quantity])
            assert (mn.per_disease("test", quantity, disease) in m) == defined, (quantity, disease)
    assert all(np.isfinite(v) for v in m.values())
    assert list(table["disease"]) == list(NIH_PATHOLOGIES)
    for column in (
        "auc",
        "auc_ci_low",
        "auc_ci_high",
        "auprc",
        "threshold",
        "sensitivity",
        "npv",
        "tp",
        "fn",
    ):
        assert column in table.columns
    assert (table["tp"] + table["fn"] == table["n_positive"]).all()
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    expected = {
        f"plots/{kind}_{split}.png"
        for kind in ("roc", "precision_recall", "confusion")
        for split in ("val", "test")
    }
    assert expected | {"plots/history.png"} <= plots
    png = mlflow.artifacts.download_artifacts(f"{uri}/plots/roc_test.png", dst_path=str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.backend
def test_run_logs_each_split_as_an_mlflow_dataset_input(finished):
    cfg, client, run, _ = finished
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    by_context = {{t.key: t.value for t in i.tags}.get("mlflow.data.context"): i for i in inputs}
    assert set(by_context) == {"training", "validation", "test"}, [i.tags for i in inputs]
    for split, context in (("train", "training"), ("val", "validation"), ("test", "test")):
        entry = by_context[context]
        dataset = entry.dataset
        assert dataset.name == f"synthetic-{split}" and dataset.digest
        assert str(cfg.dataset.root) in dataset.source
        assert json.loads(dataset.profile)["num_rows"] == int(run.data.params[f"data.n_{split}_images"])
        tags = {t.key: t.value for t in entry.tags}
        assert len(tags["split_digest"]) == 16 and tags["image_size"] == "32"
