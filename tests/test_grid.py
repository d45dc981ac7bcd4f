"""A grid multirun (Hydra's basic sweeper) gets one MLflow parent run with its jobs as children, and a
summary per swept value over the seeds in the grid."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cxr.sweep.grid import NOISE_NOTE, grid_summary, swept_keys
from cxr.tracking import names as mn
from tests.conftest import TINY, run_cli, store_overrides


@pytest.mark.slow
def test_a_grid_multirun_has_one_parent_with_its_children_and_a_summary_over_seeds(tmp_path):
    out = run_cli(
        "cxr.train",
        "-m",
        *TINY,
        "trainer.epochs=1",
        "evaluation.plots=false",
        "evaluation.bootstrap.resamples=0",
        "tracking.log_model=false",
        *store_overrides(tmp_path)[:-1],  # output_dir is each job's Hydra folder
        f"hydra.sweep.dir={tmp_path}/multirun",
        "loss=bce,dynamic_bce",
        "seed=1,2",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cxr").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("cxr.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5 and len(children) == 4
    assert parent.info.status == "FINISHED" and parent.data.tags["cxr.sweep.kind"] == "grid"
    assert parent.info.run_name == "grid-loss-seed"
    assert parent.data.metrics[mn.BEST_VALUE] == pytest.approx(
        max(
            sum(c.data.metrics[mn.OPTIMIZED] for c in children if c.data.params["loss.name"] == loss) / 2
            for loss in ("bce", "dynamic_bce")
        )
    )
    assert len({c.info.run_name for c in children}) == 4
    summary = pd.read_csv(client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path)))
    assert sorted(summary["loss"]) == ["bce", "dynamic_bce"] and summary["count"].tolist() == [2, 2]
    assert f"[cxr grid] {mn.OPTIMIZED} by loss (finished runs):" in out.stdout
    assert "seed noise" not in out.stdout  # two seeds per value: the table shows the noise


def test_a_one_seed_grid_says_its_differences_are_mostly_noise():
    frame = pd.DataFrame({"loss": ["bce", "dynamic_bce"], "value": [0.61, 0.60]})
    table, note = grid_summary(frame, ["loss"], "maximize")
    assert table.index.tolist() == ["bce", "dynamic_bce"] and table["count"].tolist() == [1, 1]
    assert note == NOISE_NOTE and "seed noise" in note


def test_the_swept_keys_are_those_with_several_values():
    assert swept_keys(["loss=bce,dynamic_bce", "trainer.epochs=2", "seed=range(3)"]) == ["loss", "seed"]
