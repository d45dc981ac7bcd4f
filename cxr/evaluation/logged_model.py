"""Re-evaluating a logged model: its run's dataset and patient split, scored again, logged to that run.

The model's run logged its resolved config and its patient split; evaluation reloads that dataset,
assigns the logged split (not a recomputed one), predicts validation (where thresholds are chosen)
and the requested split, and writes the same metrics, tables and plots training writes. Used by
`python -m cxr.evaluate` and by a sweep's full evaluation of its best trials.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cxr.data.prepared import relocated
from cxr.data.splits import SPLIT_NAMES
from cxr.data.tta import chosen
from cxr.evaluation.box_localisation import SPLIT, images_of, localise_and_log
from cxr.evaluation.report import evaluate_predictions, log_evaluation, summary_line, write_card
from cxr.runtime.console import log
from cxr.runtime.errors import CxrError
from cxr.serving import pyfunc
from cxr.serving.inference import predict_model_splits
from cxr.tracking import runs
from cxr.tracking.names import OUT_OF_FOLD, REEVALUATED_TAG, REEVALUATED_TTA_TAG, VALIDATION_TAG

if TYPE_CHECKING:
    from cxr.config import EvaluateConfig


def resolve_model(client: MlflowClient, run_id: str | None, model_uri: str | None) -> tuple[str, str]:
    """(run id, model URI) from either one; registry URIs are followed to the run that logged them."""
    if bool(run_id) == bool(model_uri):
        raise CxrError("give exactly one of run_id=<training run id> or model_uri=<MLflow model URI>")
    try:
        if run_id:
            return run_id, pyfunc.run_model_uri(run_id, client)
        if model_uri.startswith("runs:/"):
            run_id = model_uri[len("runs:/") :].split("/")[0]
            client.get_run(run_id)
            return run_id, pyfunc.expand_uri(model_uri, client)
        if model_uri.startswith("models:/"):
            ref = model_uri[len("models:/") :]
            if "@" in ref:
                name, alias = ref.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = ref.partition("/")
                version = client.get_model_version(name, number)
            return version.run_id, model_uri
    except MlflowException as err:
        raise CxrError(f"cannot find {run_id or model_uri!r} in the MLflow store: {err.message}") from None
    raise CxrError(
        f"model_uri={model_uri!r}: use runs:/<id>, models:/<name>/<version> or models:/<name>@<alias>"
    )


def evaluate(cfg: EvaluateConfig) -> dict[str, float]:
    """Scores the model `cfg` names on validation and `cfg.split`, logs them to its run, says where."""
    if cfg.split not in SPLIT_NAMES:
        raise CxrError(f"split={cfg.split!r}: choose one of {', '.join(SPLIT_NAMES)}")
    mlflow.set_tracking_uri(cfg.tracking.uri)
    client = MlflowClient(cfg.tracking.uri)
    run_id, model_uri = resolve_model(client, cfg.run_id, cfg.model_uri)
    if client.get_run(run_id).data.tags.get(VALIDATION_TAG) == OUT_OF_FOLD:
        raise CxrError(
            f"run {run_id} is a fold ensemble (cxr.ensemble members=folds): its validation is out of fold, "
            "and the whole ensemble on train_val would score images its members trained on; its run holds "
            "the out-of-fold and test numbers already, and each member re-evaluates on its own run"
        )
    run_cfg, logged_split = runs.logged_run_inputs(run_id)
    dataset = relocated(run_cfg.dataset, cfg.dataset_root, cfg.cache_dir)
    model = pyfunc.load(model_uri, cfg.tracking.trusted_imports)
    views = chosen(cfg.evaluation.tta, model.spec.tta)
    if views.spec() != model.spec.tta and model.spec.calibration:
        log.warning(
            f"cxr: the model's calibrator was fitted over {model.views.describe()}; "
            f"scoring {views.describe()}"
        )
    model.spec.tta = views.spec()  # validation and the split alike, through the model's own scoring
    splits = ["val", cfg.split]
    predictions, data = predict_model_splits(
        model, dataset, splits, cfg.evaluation.batch_size, logged_split, split_source=f"run {run_id}"
    )
    evaluation = evaluate_predictions(predictions, cfg.evaluation, data.pathologies)
    source = {"logged_split": logged_split, "split_source": f"run {run_id}"}
    images_at = images_of(data, dataset, **source)
    with runs.reopened(run_id):  # its status and end time stay the training's
        mlflow.set_tags({REEVALUATED_TAG: model_uri, REEVALUATED_TTA_TAG: views.describe()})  # the card's
        log_evaluation(evaluation, cfg.evaluation.plots)
        located = {}
        if cfg.split == SPLIT:
            located = localise_and_log(model.members, model.spec.weights, images_at, data, cfg.evaluation)
        if located:  # the card again, with the localisation scores
            write_card(replace(evaluation, metrics={**evaluation.metrics, **located}))

    results = {**evaluation.metrics, **located}
    log.info(
        f"\nEvaluated {model_uri} on the {cfg.split} split ({len(data.rows[cfg.split])} images, "
        f"{views.describe()} each)"
    )
    log.info(f"mean AUC [{cfg.evaluation.bootstrap.confidence:.0%} CI]: {summary_line(results, cfg.split)}")
    log.info(f"Logged to MLflow run {run_id} (store {cfg.tracking.uri}); {runs.ui_command(cfg.tracking.uri)}")
    return results
