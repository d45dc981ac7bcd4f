"""A grid multirun (Hydra's basic sweeper, `-m loss=bce,dynamic_bce seed=0,1,2`) as one MLflow parent
run with its jobs as children, and the same end-of-sweep summary as an Optuna sweep: mean, standard
deviation and count of the optimized metric per swept value, over the seeds in the grid.

A Hydra callback (conf/config.yaml, `hydra.callbacks.grid_parent`) creates the parent before the
first job and writes its id into the sweep folder, where each job (`cxr.train` in multirun mode)
reads it; at the end it summarises the children. Optuna sweeps have their own parent: it stays out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cxr.runtime.masking import mask
from cxr.sweep.parent_run import ParentRun, mean_std_count
from cxr.tracking import names as metric_names

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

PARENT_FILE = "mlflow_parent_run_id"  # in the sweep folder
NOISE_NOTE = (
    "one seed per value: a difference between these values is mostly seed noise; "
    "add seeds to the grid (seed=0,1,2) to read it against that noise"
)


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The grid parent a job of this sweep folder belongs to (None outside a grid multirun)."""
    path = Path(sweep_dir) / PARENT_FILE
    return path.read_text().strip() if path.is_file() else None


def swept_keys(task_overrides: list[str]) -> list[str]:
    """The keys a grid sweeps (`loss=bce,dynamic_bce` -> loss), in command-line order."""
    parsed = OverridesParser.create().parse_overrides(task_overrides)
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def is_grid(config: DictConfig) -> bool:
    """A basic-sweeper multirun of cxr.train (other commands share its config, and log no runs).

    `config` is what Hydra hands its callbacks: the job's config with its `hydra` node, which no cxr
    schema describes, hence `DictConfig`."""
    return config.hydra.sweeper._target_.endswith("BasicSweeper") and config.hydra.job.name == "train"


def children_frame(
    client: MlflowClient, parent: str, experiment_id: str, keys: list[str], metric: str
) -> pd.DataFrame:
    """One row per finished child: its value of each swept key (a group's option name) and `metric`."""
    runs = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'FINISHED'"
    )
    rows = []
    for run in runs:
        params = run.data.params
        row: dict[str, Any] = {k: params.get(k, params.get(f"{k}.name")) for k in keys}
        rows.append({**row, "value": run.data.metrics.get(metric)})
    return pd.DataFrame(rows, columns=[*keys, "value"])


def grid_summary(frame: pd.DataFrame, keys: list[str], direction: str) -> tuple[pd.DataFrame | None, str]:
    """(mean, std and count of `value` per combination of the swept keys other than the seed, best first;
    a note when each combination has one seed). None when nothing finished or only seeds were swept."""
    by = [k for k in keys if k != "seed"]
    if frame.empty or not by:
        return None, ""
    table = mean_std_count(frame.dropna(subset=["value"]), by, direction)
    note = "" if "seed" in keys and (table["count"] > 1).any() else NOISE_NOTE
    return table, note


class GridParent(Callback):
    """Hydra callback: a parent run around a basic-sweeper multirun of `cxr.train`."""

    def __init__(self) -> None:
        self.parent: ParentRun | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_grid(config):
            return
        arguments = list(config.hydra.overrides.task)
        self.parent = ParentRun.create(
            config.tracking,
            name=f"grid-{'-'.join(swept_keys(arguments)) or 'multirun'}",
            tags={
                metric_names.SWEEP_TAG: "true",
                metric_names.SWEEP_KIND_TAG: "grid",
                metric_names.OVERRIDES_TAG: mask(" ".join(arguments)),
            },
        )
        folder = Path(config.hydra.sweep.dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PARENT_FILE).write_text(self.parent.run_id)
        print(f"[cxr grid] MLflow parent run {self.parent.run_id}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is None:
            return
        keys = swept_keys(list(config.hydra.overrides.task))
        metric = config.optimized_metric
        direction = "minimize" if "loss" in metric else "maximize"
        experiment_id = self.parent.client.get_run(self.parent.run_id).info.experiment_id
        frame = children_frame(self.parent.client, self.parent.run_id, experiment_id, keys, metric)
        table, note = grid_summary(frame, keys, direction)
        if table is not None:
            # the collapsed parent row then charts something in the UI's runs view
            self.parent.client.log_metric(self.parent.run_id, metric_names.BEST_VALUE, table["mean"].iloc[0])
            by = ", ".join(k for k in keys if k != "seed")
            print(f"\n[cxr grid] {metric} by {by} (finished runs):")
            print(table.to_string(float_format=lambda v: f"{v:.4f}"))
        if note:
            print(f"[cxr grid] {note}")
            self.parent.set_tags({metric_names.NOTE_TAG: note})
        self.parent.finish(table)
        print(f"[cxr grid] {len(frame)} finished run(s); MLflow parent run {self.parent.run_id}; ", end="")
        print(self.parent.ui_command(), flush=True)
