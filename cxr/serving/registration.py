"""A trained model logged as cxr's pyfunc and, when a name is configured, registered as a version
tagged with what ranking, ensembling and prediction need (its validation numbers, split, sweep, trial).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
import mlflow
from mlflow.tracking import MlflowClient

from cxr.data.prepared import PreparedData
from cxr.data.splits import split_digest
from cxr.runtime.console import log
from cxr.serving import pyfunc
from cxr.tracking import versions

if TYPE_CHECKING:
    from cxr.config import Config
    from cxr.evaluation.report import Evaluation


def log_trained_model(
    cfg: Config,
    model: keras.Model,
    data: PreparedData,
    evaluation: Evaluation,
    run_id: str,
    reporter: Any = None,
) -> None:
    """Into the active run; `reporter` (a sweep trial's) adds the study and trial to the version's tags."""
    spec = pyfunc.ModelSpec(
        pathologies=list(data.pathologies),
        thresholds=evaluation.thresholds["thresholds"],
        image_sizes=[data.image_size],
        weights=[1.0],
        members=[{"run_id": run_id}],
        imports=sorted(
            {node._target_.rsplit(".", 1)[0] for node in (cfg.model, cfg.loss) if "_target_" in node}
        ),
    )
    name = cfg.tracking.registered_model_name
    info = pyfunc.log_model([model], spec, registered_model_name=name)
    log.info(
        f"model: runs:/{run_id}/{info.name}"
        + (f", models:/{name}/{info.registered_model_version}" if name else "")
    )
    if name:
        tags = versions.version_tags(
            evaluation.metrics,
            run_id,
            spec,
            split_digest(data.table),
            cfg.tracking.experiment_name,
            study=reporter.study_name if reporter is not None else None,
            trial=reporter.number if reporter is not None else None,
            run_name=mlflow.active_run().info.run_name,
        )
        versions.tag_version(MlflowClient(cfg.tracking.uri), name, str(info.registered_model_version), tags)
