"""A model logged as cxr's pyfunc into the active run and, when a name is given, registered as a
version tagged with what ranking, ensembling and prediction need (its validation numbers, split,
sweep and trial). Training and the ensemble step register the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import keras
import mlflow
from mlflow.tracking import MlflowClient

from cxr.data.prepared import PreparedData
from cxr.data.splits import split_digest
from cxr.data.tta import Views
from cxr.runtime.console import log
from cxr.serving import pyfunc
from cxr.tracking import versions
from cxr.tracking.names import REPORT_HTML_ARTIFACT, REPORT_TAG

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

    from cxr.config import Config, TrackingConfig
    from cxr.evaluation.report import Evaluation


def log_and_register(
    members: Sequence[keras.Model],
    spec: pyfunc.ModelSpec,
    evaluation: Evaluation,
    data: PreparedData,
    tracking: TrackingConfig,
    name: str | None,
    *,
    study: str | None = None,
    trial: int | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> ModelInfo:
    """Logs the model into the active run; with a `name`, tags the new version for ranking and use."""
    info = pyfunc.log_model(members, spec, registered_model_name=name)
    if name:
        run = mlflow.active_run().info
        tags = versions.version_tags(
            evaluation.metrics,
            run.run_id,
            spec,
            split_digest(data.table),
            tracking.experiment_name,
            study=study,
            trial=trial,
            run_name=run.run_name,
        )
        tags[REPORT_TAG] = f"runs:/{run.run_id}/{REPORT_HTML_ARTIFACT}"  # its report card
        tags.update(extra_tags or {})
        versions.tag_version(MlflowClient(tracking.uri), name, str(info.registered_model_version), tags)
    return info


def log_trained_model(
    cfg: Config,
    model: keras.Model,
    data: PreparedData,
    evaluation: Evaluation,
    run_id: str,
    reporter: Any = None,
    calibration: dict | None = None,
) -> ModelInfo:
    """One trained member into the active run (`run_id`); `reporter` (a sweep trial's) adds the study and
    trial to the version's tags; `calibration`, a calibrator fitted on validation, travels in its spec."""
    spec = pyfunc.ModelSpec(
        pathologies=list(data.pathologies),
        thresholds=evaluation.thresholds["thresholds"],
        image_sizes=[data.image_size],
        weights=[1.0],
        members=[{"run_id": run_id}],
        imports=sorted(
            {node._target_.rsplit(".", 1)[0] for node in (cfg.model, cfg.loss) if "_target_" in node}
        ),
        calibration=calibration or {},
        operating_points=evaluation.thresholds.get("operating_points", {}),
        tta=Views.of(cfg.evaluation.tta).spec(),  # the views its thresholds and calibrator were chosen on
    )
    name = cfg.tracking.registered_model_name
    trial = {} if reporter is None else {"study": reporter.study_name, "trial": reporter.number}
    info = log_and_register([model], spec, evaluation, data, cfg.tracking, name, **trial)
    log.info(
        f"model: runs:/{run_id}/{info.name}"
        + (f", models:/{name}/{info.registered_model_version}" if name else "")
    )
    return info
