"""`python -m cxr.evaluate`: re-evaluate a logged model and log the results back to its run.

The model's run logged its resolved config and its patient split; evaluation reloads that dataset,
assigns the logged split (not a recomputed one), predicts validation (where thresholds are chosen)
and the requested split, and writes the same metrics, tables and plots `cxr.train` writes.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cxr.config import CONF_DIR, check_evaluation, register_configs
from cxr.console import announce, log
from cxr.errors import CxrError, exit_on_user_error, run_command

register_configs()

SPLITS = ("train", "val", "test")


def resolve_model(client, run_id: str | None, model_uri: str | None) -> tuple[str, str]:
    """(run id, model URI) from either one; registry URIs are followed to the run that logged them."""
    from mlflow.exceptions import MlflowException

    from cxr import pyfunc

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


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in SPLITS:
        raise CxrError(f"split={cfg.split!r}: choose one of {', '.join(SPLITS)}")
    check_evaluation(cfg.evaluation)
    import mlflow
    from mlflow.tracking import MlflowClient

    from cxr import pyfunc, tracking
    from cxr.data.prepared import relocated
    from cxr.predict import predict_model_splits
    from cxr.reporting import evaluate_predictions, log_evaluation, summary_line

    mlflow.set_tracking_uri(cfg.tracking.uri)
    run_id, model_uri = resolve_model(MlflowClient(cfg.tracking.uri), cfg.run_id, cfg.model_uri)
    run_cfg, logged_split = tracking.logged_run_inputs(run_id)
    dataset = relocated(run_cfg.dataset, cfg.dataset_root, cfg.cache_dir)
    model = pyfunc.load(model_uri)
    splits = ["val", cfg.split]
    predictions, data = predict_model_splits(
        model, dataset, splits, cfg.evaluation.batch_size, logged_split, split_source=f"run {run_id}"
    )
    evaluation = evaluate_predictions(predictions, cfg.evaluation, data.pathologies)
    with mlflow.start_run(run_id=run_id):
        log_evaluation(evaluation, cfg.evaluation.plots)
        mlflow.set_tag("cxr.reevaluated_with", model_uri)

    results = evaluation.metrics
    log.info(f"\nEvaluated {model_uri} on the {cfg.split} split ({len(data.rows[cfg.split])} images)")
    log.info(f"mean AUC [{cfg.evaluation.bootstrap.confidence:.0%} CI]: {summary_line(results, cfg.split)}")
    log.info(
        f"Logged to MLflow run {run_id} (store {cfg.tracking.uri}); {tracking.ui_command(cfg.tracking.uri)}"
    )
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    announce("evaluate", cfg)
    evaluate(cfg)


if __name__ == "__main__":
    run_command(main)
