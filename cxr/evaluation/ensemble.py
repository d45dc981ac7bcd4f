"""An ensemble of registered versions: averaged, evaluated like a training run, registered.

Candidates are ranked by validation mean AUC from their version tags (never a test number), must share
one patient split, and may run at different image sizes (each member reads the cache at its own
size); the top K, or greedy selection on their validation predictions, make the members
(`cxr.evaluation.member_selection`). The ensemble's calibrator (with `evaluation.calibration` set),
thresholds and operating points are chosen on its own validation predictions; validation
and test are evaluated with the same metrics, intervals and plots as a training run; one MLflow run
(in the members' experiment unless `tracking.experiment_name` is given) holds the members, a
per-disease table of each member beside the ensemble, and the ensemble as a registered cxr pyfunc.
When the ensemble does not beat its best member on validation, it says so instead of "Promote it".
`members=folds` (`cxr.evaluation.fold_ensemble`) shares the selection filters, loading and recording.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from cxr.data.prepared import PreparedData, relocated
from cxr.data.splits import write_split_csv
from cxr.data.tta import Views
from cxr.evaluation.box_localisation import images_of, localise_and_log
from cxr.evaluation.member_selection import SELECTIONS, WEIGHTINGS, pool_size, verdict
from cxr.evaluation.report import (
    Evaluation,
    evaluate_calibrated,
    evaluate_predictions,
    log_evaluation,
    validation_and_test_line,
    write_card,
)
from cxr.evaluation.scoring import mean_auc
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
    PARENT_RUN_TAG,
    SPLIT_ARTIFACT,
    SPLIT_DIGEST_TAG,
    TTA_TAG,
    per_disease_table,
)

if TYPE_CHECKING:
    from cxr.config import DatasetConfig, EnsembleConfig


def matching_versions(client: MlflowClient, cfg: EnsembleConfig) -> list[versions.Candidate]:
    """Every single-model version that `study`, `experiment`, `tags` and `parent_run` let through, best
    validation AUC first; none is an error saying what was asked for."""
    ranked = versions.ranked_versions(
        client,
        cfg.model_name,
        study=cfg.study,
        experiment=cfg.experiment,
        kind="single",
        tags=dict(cfg.tags or {}),
    )
    if cfg.parent_run:
        ranked = [
            c for c in ranked if client.get_run(c.run_id).data.tags.get(PARENT_RUN_TAG) == cfg.parent_run
        ]
    if not ranked:
        asked = (("study", cfg.study), ("experiment", cfg.experiment), ("parent_run", cfg.parent_run))
        raise CxrError(
            f"no version of {cfg.model_name!r} matches (kind single, with a {versions.RANK_METRIC} tag"
            + "".join(f", {k}={v}" for k, v in asked if v)
            + "); train with tracking.registered_model_name set"
        )
    return ranked


def select_members(client: MlflowClient, cfg: EnsembleConfig) -> list[versions.Candidate]:
    """The candidates: the top K single-model versions by validation AUC (`selection=top_k`), or every
    matching one (`greedy`), all scored on one split."""
    ranked = matching_versions(client, cfg)
    members = ranked[: pool_size(cfg)]
    if cfg.selection == "top_k" and len(members) < cfg.top_k:
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


def load_members(candidates: list[versions.Candidate], cfg: EnsembleConfig) -> list[pyfunc.CxrModel]:
    """Each candidate's model; all single models predicting one pathology list."""
    loaded = [pyfunc.load(c.uri, cfg.tracking.trusted_imports) for c in candidates]
    if any(m.pathologies != loaded[0].pathologies for m in loaded):
        raise CxrError("ensemble members predict different pathology lists")
    if any(len(m.members) != 1 for m in loaded):
        raise CxrError("ensemble members must be single models (cxr.kind=single)")
    return loaded


def members_experiment(client: MlflowClient, run_id: str) -> str:
    """The name of the experiment a member's training run is in: where its ensemble goes by default."""
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name


@dataclass(frozen=True)
class Recording:
    """What an ensemble's run records: the model and its spec, its evaluation, the data and split it was
    scored on, its member versions and the run's name."""

    model: pyfunc.CxrModel
    spec: pyfunc.ModelSpec
    evaluation: Evaluation
    data: PreparedData
    dataset: DatasetConfig
    logged_split: pd.DataFrame
    candidates: list[versions.Candidate]
    run_name: str


def member_imports(loaded: list[pyfunc.CxrModel]) -> list[str]:
    """The user modules any member's layers need (`ModelSpec.imports`): the ensemble loads them all."""
    return sorted({module for m in loaded for module in m.spec.imports})


def record(
    cfg: EnsembleConfig,
    client: MlflowClient,
    r: Recording,
    member_tables: dict[str, dict[str, pd.DataFrame]],
    tags: dict[str, str] | None = None,
) -> tuple[Evaluation, str, str, DictConfig]:
    """One MLflow run for the ensemble (beside its members unless `tracking.experiment_name` is given):
    members, split, evaluation, localisation, each member's per-disease table beside the ensemble's
    (`member_tables`: column label -> split -> table), the registered model and its report card.
    Returns (the evaluation with localisation, the run id, the registered version, the logged config)."""
    candidates, data, spec, evaluation = r.candidates, r.data, r.spec, r.evaluation
    logged_cfg = OmegaConf.create(
        {
            **OmegaConf.to_container(cfg, resolve=True),
            "dataset": OmegaConf.to_container(r.dataset, resolve=True),
        }
    )
    if not logged_cfg.tracking.experiment_name:  # beside its members, unless given
        logged_cfg.tracking.experiment_name = members_experiment(client, candidates[0].run_id)
    name = cfg.ensemble_name or cfg.model_name
    extra = dict(tags or {})
    with runs.tracked_run(logged_cfg, [], run_name=r.run_name) as run_id:
        mlflow.set_tags(
            {
                MODEL_KIND_TAG: "ensemble",
                MEMBERS_TAG: ",".join(c.version for c in candidates),
                TTA_TAG: Views.of(spec.tta).describe(),
                **extra,
            }
        )
        mlflow.log_params({f"member.{i}.version": c.version for i, c in enumerate(candidates)})
        mlflow.log_params({f"member.{i}.run_id": c.run_id for i, c in enumerate(candidates)})
        with tempfile.TemporaryDirectory() as folder:
            mlflow.log_artifact(str(write_split_csv(data.table, Path(folder) / SPLIT_ARTIFACT)))
        log_dataset_inputs(data, r.dataset.name)
        log_evaluation(evaluation, cfg.evaluation.plots)
        source = {"logged_split": r.logged_split, "split_source": f"run {candidates[0].run_id}"}
        images_at = images_of(data, r.dataset, **source)
        located = localise_and_log(r.model.members, spec.weights, images_at, data, cfg.evaluation)
        evaluation = replace(evaluation, metrics={**evaluation.metrics, **located})
        for split in evaluation.tables:
            table = side_by_side({k: t[split] for k, t in member_tables.items()}, evaluation.tables[split])
            mlflow.log_text(
                table.to_csv(float_format="%.6g"), per_disease_table(split, "members_per_disease")
            )
        members = ",".join(f"{cfg.model_name}/{c.version}" for c in candidates)
        info = log_and_register(
            r.model.members,
            spec,
            evaluation,
            data,
            logged_cfg.tracking,
            name,
            extra_tags={MEMBERS_VERSION_TAG: members, **extra},
        )
        write_card(
            evaluation, {"version": f"models:/{name}/{info.registered_model_version}", "members": members}
        )
    return evaluation, run_id, str(info.registered_model_version), logged_cfg


def build(cfg: EnsembleConfig) -> dict[str, float]:
    """Builds, evaluates, logs and registers the ensemble `cfg` describes; says where it went."""
    if cfg.weights not in WEIGHTINGS:
        raise CxrError(f"weights={cfg.weights!r}: choose one of {', '.join(WEIGHTINGS)}")
    if cfg.top_k < 1:
        raise CxrError(f"top_k={cfg.top_k}: an ensemble needs at least one member")
    select = SELECTIONS.get(cfg.selection)

    client = MlflowClient(cfg.tracking.uri)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    candidates = select_members(client, cfg)
    loaded = load_members(candidates, cfg)
    run_cfg, logged_split = runs.logged_run_inputs(candidates[0].run_id)
    dataset = relocated(run_cfg.dataset, cfg.dataset_root, cfg.cache_dir)
    # every candidate scored once on validation and test: selection reads validation, the report both
    views = Views.of(cfg.evaluation.tta)  # every member over the same views; the ensemble keeps them
    pool = pyfunc.CxrModel.of(
        [m.members[0] for m in loaded],
        pyfunc.ModelSpec(
            list(loaded[0].pathologies), {}, [m.spec.image_sizes[0] for m in loaded], [], tta=views.spec()
        ),
    )
    splits = ["val", "test"]
    pool_scores, data = predict_members(
        pool, dataset, splits, cfg.evaluation.batch_size, logged_split, f"run {candidates[0].run_id}"
    )
    y_val = data.labels[data.rows["val"]]
    val_means = [mean_auc(y_val, scores["val"]) for scores in pool_scores]
    choice = select([c.score for c in candidates], y_val, [scores["val"] for scores in pool_scores], cfg)
    best = int(np.nanargmax(val_means))
    best_version, best_val = candidates[best].version, val_means[best]
    kept = [i for i, w in enumerate(choice.weights) if w > 0]
    candidates = [candidates[i] for i in kept]
    loaded = [loaded[i] for i in kept]
    member_scores = [pool_scores[i] for i in kept]
    weights = [choice.weights[i] for i in kept]
    picks = [choice.picks[i] for i in kept] if choice.picks else [None] * len(kept)
    member_vals = [val_means[i] for i in kept]
    spec = pyfunc.ModelSpec(
        pathologies=list(loaded[0].pathologies),
        thresholds={},  # chosen below, on validation, for the ensemble itself
        image_sizes=[size for m in loaded for size in m.spec.image_sizes],
        weights=[w * mw for w, m in zip(weights, loaded, strict=True) for mw in m.spec.weights],
        kind="ensemble",
        members=[
            {"version": c.version, "run_id": c.run_id, versions.RANK_METRIC: c.score, "weight": w}
            | ({"picks": p} if p is not None else {})
            for c, w, p in zip(candidates, weights, picks, strict=True)
        ],
        imports=member_imports(loaded),
        tta=views.spec(),
    )
    model = pyfunc.CxrModel.of([k for m in loaded for k in m.members], spec)
    # the ensemble's own calibrator, thresholds and operating points, all chosen on its validation scores
    evaluation, spec.calibration = evaluate_calibrated(
        combined(model, member_scores, data), cfg.evaluation, data.pathologies
    )
    predictions = evaluation.predictions
    spec.thresholds = evaluation.thresholds["thresholds"]
    spec.operating_points = evaluation.thresholds["operating_points"]
    member_tables = {}
    for c, scores in zip(candidates, member_scores, strict=True):
        preds = {s: Predictions(predictions[s].labels, scores[s], predictions[s].patients) for s in splits}
        member_tables[c.version] = evaluate_predictions(preds, cfg.evaluation, data.pathologies).tables

    name = cfg.ensemble_name or cfg.model_name
    label = f"top{len(candidates)}" if cfg.selection == "top_k" else f"greedy{len(candidates)}"
    recorded = record(
        cfg,
        client,
        Recording(
            model, spec, evaluation, data, dataset, logged_split, candidates, f"ensemble-{name}-{label}"
        ),
        {f"v{v}": t for v, t in member_tables.items()},
    )
    evaluation, run_id, version, logged_cfg = recorded
    metrics = evaluation.metrics
    how = f"{cfg.weights} weights" if cfg.selection == "top_k" else f"greedy selection, {sum(picks)} picks"
    log.info(f"\nEnsemble of {len(candidates)} version(s) of {cfg.model_name!r} ({how}):")
    for c, v, w, p in zip(candidates, member_vals, weights, picks, strict=True):
        picked = f" ({p} pick{'s' if p > 1 else ''})" if p is not None else ""
        log.info(
            f"  version {c.version}: validation mean AUC {v:.4f}, weight {w:.3f}{picked}, run {c.run_id}"
        )
    log.info(f"ensemble {validation_and_test_line(metrics, cfg.evaluation.bootstrap.confidence)}")
    where = f"experiment {logged_cfg.tracking.experiment_name!r}"
    log.info(f"registered as models:/{name}/{version} (MLflow run {run_id}, {where})")
    warning = verdict(metrics[versions.RANK_METRIC], best_val, best_version, cfg.model_name, cfg.selection)
    if warning:
        log.warning(warning)
    else:
        log.info(f"Promote it: python -m cxr.promote model_name={name} version={version}")
    return metrics
