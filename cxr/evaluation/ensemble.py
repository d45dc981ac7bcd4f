"""An ensemble of the top K registered versions: averaged, evaluated like a training run, registered.

Members are ranked by validation mean AUC from their version tags (never a test number), must share
one patient split, and may run at different image sizes (each member reads the cache at its own
size). The ensemble's thresholds are chosen on validation; validation and test are evaluated with
the same metrics, intervals and plots as a training run; one MLflow run holds the members, a
per-disease table of each member beside the ensemble, and the ensemble as a registered cxr pyfunc.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from cxr.data.prepared import relocated
from cxr.data.splits import write_split_csv
from cxr.evaluation.report import evaluate_predictions, log_evaluation, validation_and_test_line, write_card
from cxr.runtime.console import log
from cxr.runtime.errors import CxrError
from cxr.serving import pyfunc
from cxr.serving.inference import Predictions, combined, predict_members
from cxr.serving.registration import log_and_register
from cxr.tracking import runs, versions
from cxr.tracking.dataset_inputs import log_dataset_inputs
from cxr.tracking.names import (
    MEMBERS_TAG,
    MEMBERS_VERSION_TAG,
    MODEL_KIND_TAG,
    SPLIT_ARTIFACT,
    SPLIT_DIGEST_TAG,
    per_disease_table,
)

if TYPE_CHECKING:
    from cxr.config import EnsembleConfig

WEIGHTINGS = ("mean", "val_auc")


def member_weights(scores: Sequence[float], method: str) -> list[float]:
    """Each member's share: equal, or proportional to its validation AUC above chance (0.5)."""
    if method == "mean":
        return [1.0 / len(scores)] * len(scores)
    if method == "val_auc":
        skill = np.clip(np.asarray(scores, np.float64) - 0.5, 1e-6, None)
        return (skill / skill.sum()).tolist()
    raise CxrError(f"weights={method!r}: choose one of {', '.join(WEIGHTINGS)}")


def select_members(client: MlflowClient, cfg: EnsembleConfig) -> list[versions.Candidate]:
    """The top K single-model versions by validation AUC, all scored on one split."""
    ranked = versions.ranked_versions(
        client,
        cfg.model_name,
        study=cfg.study,
        experiment=cfg.experiment,
        kind="single",
        tags=dict(cfg.tags or {}),
    )
    if not ranked:
        raise CxrError(
            f"no version of {cfg.model_name!r} matches (kind single, with a {versions.RANK_METRIC} tag"
            + "".join(f", {k}={v}" for k, v in (("study", cfg.study), ("experiment", cfg.experiment)) if v)
            + "); train with tracking.registered_model_name set"
        )
    members = ranked[: cfg.top_k]
    if len(members) < cfg.top_k:
        log.warning(f"cxr: warning: only {len(members)} version(s) match; the ensemble has {len(members)}")
    splits = {m.tags.get(SPLIT_DIGEST_TAG) for m in members}
    if len(splits) > 1:
        first = members[0].tags.get(SPLIT_DIGEST_TAG)
        differ = [m.version for m in members if m.tags.get(SPLIT_DIGEST_TAG) != first]
        raise CxrError(
            f"versions {', '.join(differ)} of {cfg.model_name!r} were evaluated on another patient split "
            f"than version {members[0].version}; members must share one (filter with study= or tags=)"
        )
    return members


def side_by_side(member_tables: dict[str, pd.DataFrame], ensemble: pd.DataFrame) -> pd.DataFrame:
    """Per disease: each member's and the ensemble's AUC with its interval, and AUPRC."""
    columns = [c for c in ("auc", "auc_ci_low", "auc_ci_high", "auprc") if c in ensemble]
    parts = {label: table[columns] for label, table in member_tables.items()}
    parts["ensemble"] = ensemble[columns]
    return pd.concat(parts, axis=1)


def build(cfg: EnsembleConfig) -> dict[str, float]:
    """Builds, evaluates, logs and registers the ensemble `cfg` describes; says where it went."""
    if cfg.weights not in WEIGHTINGS:
        raise CxrError(f"weights={cfg.weights!r}: choose one of {', '.join(WEIGHTINGS)}")
    if cfg.top_k < 1:
        raise CxrError(f"top_k={cfg.top_k}: an ensemble needs at least one member")

    client = MlflowClient(cfg.tracking.uri)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    candidates = select_members(client, cfg)
    weights = member_weights([c.score for c in candidates], cfg.weights)
    loaded = [pyfunc.load(c.uri) for c in candidates]
    run_cfg, logged_split = runs.logged_run_inputs(candidates[0].run_id)
    dataset = relocated(run_cfg.dataset, cfg.dataset_root, cfg.cache_dir)
    spec = pyfunc.ModelSpec(
        pathologies=list(loaded[0].pathologies),
        thresholds={},  # chosen below, on validation, for the ensemble itself
        image_sizes=[size for m in loaded for size in m.spec.image_sizes],
        weights=[w * mw for w, m in zip(weights, loaded, strict=True) for mw in m.spec.weights],
        kind="ensemble",
        members=[
            {"version": c.version, "run_id": c.run_id, versions.RANK_METRIC: c.score, "weight": w}
            for c, w in zip(candidates, weights, strict=True)
        ],
    )
    if any(m.pathologies != loaded[0].pathologies for m in loaded):
        raise CxrError("ensemble members predict different pathology lists")
    if any(len(m.members) != 1 for m in loaded):
        raise CxrError("ensemble members must be single models (cxr.kind=single)")
    model = pyfunc.CxrModel.of([k for m in loaded for k in m.members], spec)
    splits = ["val", "test"]
    member_scores, data = predict_members(
        model, dataset, splits, cfg.evaluation.batch_size, logged_split, f"run {candidates[0].run_id}"
    )
    predictions = combined(model, member_scores, data)
    evaluation = evaluate_predictions(predictions, cfg.evaluation, data.pathologies)
    spec.thresholds = evaluation.thresholds["thresholds"]
    member_tables = {}
    for c, scores in zip(candidates, member_scores, strict=True):
        preds = {s: Predictions(predictions[s].labels, scores[s], predictions[s].patients) for s in splits}
        member_tables[c.version] = evaluate_predictions(preds, cfg.evaluation, data.pathologies).tables

    logged_cfg = OmegaConf.create(
        {
            **OmegaConf.to_container(cfg, resolve=True),
            "dataset": OmegaConf.to_container(dataset, resolve=True),
        }
    )
    name = cfg.ensemble_name or cfg.model_name
    with runs.tracked_run(logged_cfg, [], run_name=f"ensemble-{name}-top{len(candidates)}") as run_id:
        mlflow.set_tags({MODEL_KIND_TAG: "ensemble", MEMBERS_TAG: ",".join(c.version for c in candidates)})
        mlflow.log_params({f"member.{i}.version": c.version for i, c in enumerate(candidates)})
        mlflow.log_params({f"member.{i}.run_id": c.run_id for i, c in enumerate(candidates)})
        with tempfile.TemporaryDirectory() as folder:
            mlflow.log_artifact(str(write_split_csv(data.table, Path(folder) / SPLIT_ARTIFACT)))
        log_dataset_inputs(data, dataset.name)
        log_evaluation(evaluation, cfg.evaluation.plots)
        for split in splits:
            table = side_by_side(
                {f"v{v}": t[split] for v, t in member_tables.items()}, evaluation.tables[split]
            )
            mlflow.log_text(
                table.to_csv(float_format="%.6g"), per_disease_table(split, "members_per_disease")
            )
        members = ",".join(f"{cfg.model_name}/{c.version}" for c in candidates)
        info = log_and_register(
            model.members,
            spec,
            evaluation,
            data,
            cfg.tracking,
            name,
            extra_tags={MEMBERS_VERSION_TAG: members},
        )
        write_card(
            evaluation, {"version": f"models:/{name}/{info.registered_model_version}", "members": members}
        )

    metrics = evaluation.metrics
    log.info(f"\nEnsemble of {len(candidates)} version(s) of {cfg.model_name!r} ({cfg.weights} weights):")
    for c, w in zip(candidates, weights, strict=True):
        log.info(f"  version {c.version}: validation mean AUC {c.score:.4f}, weight {w:.3f}, run {c.run_id}")
    log.info(f"ensemble {validation_and_test_line(metrics, cfg.evaluation.bootstrap.confidence)}")
    log.info(f"registered as models:/{name}/{info.registered_model_version} (MLflow run {run_id})")
    log.info(f"Promote it: python -m cxr.promote model_name={name} version={info.registered_model_version}")
    return metrics
