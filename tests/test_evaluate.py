"""`python -m cxr.evaluate`: a logged model re-evaluated by run id and by registry alias, results
logged back to its run, bad input a one-line error."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cxr.tracking import names as mn
from cxr.tracking.naming import model_name
from tests.conftest import TINY_MODEL, run_cli

pytestmark = pytest.mark.slow  # the command in its own process, on a copy of the session's tiny run


@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory):
    """A copy of the session's tiny run (re-evaluation logs to it), its version 1 the champion."""
    cfg = tiny_store.copy(tmp_path_factory.mktemp("evaluate"))
    client = MlflowClient(cfg.tracking.uri)
    client.set_registered_model_alias(TINY_MODEL, "champion", "1")
    return cfg, client, client.get_run(tiny_store.run_id)


def evaluate_cli(cfg, *args):
    return run_cli(
        "cxr.evaluate", f"tracking.uri={cfg.tracking.uri}", f"hydra.run.dir={cfg.output_dir}/eval", *args
    )


@pytest.mark.backend  # loads and predicts with the logged model
def test_evaluate_by_run_id_reproduces_the_training_evaluation(trained):
    cfg, client, run = trained
    out = evaluate_cli(cfg, f"run_id={run.info.run_id}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Logged to MLflow run {run.info.run_id}" in out.stdout and "mean AUC [95% CI]: 0." in out.stdout
    assert "Downloading artifacts" not in out.stderr  # MLflow's progress bars are off (carriage returns)
    history = client.get_metric_history(run.info.run_id, "test/auc_mean")
    assert len(history) == 2  # training's value, then the re-evaluation's
    assert history[1].value == pytest.approx(history[0].value, abs=1e-6)  # same model, same split, same data
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED"
    assert after.info.end_time == run.info.end_time  # the training's duration, not the re-evaluation's
    logged_model = f"runs:/{run.info.run_id}/{model_name(run.info.run_name)}"
    assert after.data.tags["cxr.reevaluated_with"] == logged_model


@pytest.mark.backend
def test_evaluate_a_registered_alias_on_the_validation_split(trained):
    cfg, client, run = trained
    before = len(client.get_metric_history(run.info.run_id, mn.RANK))
    out = evaluate_cli(cfg, f"model_uri=models:/{TINY_MODEL}@champion", "split=val", "evaluation.plots=false")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "on the val split" in out.stdout
    assert len(client.get_metric_history(run.info.run_id, mn.RANK)) == before + 1
    mlflow.set_tracking_uri(cfg.tracking.uri)
    assert "evaluation/val_per_disease.csv" in {
        a.path for a in client.list_artifacts(run.info.run_id, "evaluation")
    }


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one of run_id="),
        (["run_id=0123456789abcdef"], "cannot find '0123456789abcdef'"),
        (["model_uri=models:/no-such-model@champion"], "cannot find 'models:/no-such-model@champion'"),
        (["model_uri=s3://bucket/model"], "use runs:/<id>,"),
        (["run_id=x", "split=holdout"], "split='holdout'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(trained, args, message):
    cfg, _, _ = trained
    out = evaluate_cli(cfg, *args)
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()[-1:]
    assert line.startswith("cxr: error:") and message in line
    assert "Traceback" not in out.stderr
