"""`cxr.ensemble members=folds`: the fold models of one configuration, averaged, scored honestly.

Test (shared by every fold model) is scored by the members' mean. Validation is the out-of-fold
predictions (`cxr.evaluation.fold_members`): every train_val image by the member that did not train on
it, so `val/*` with its intervals is the configuration's validation estimate, and the calibrator,
thresholds and operating points are chosen on those scores. The members' mean on images they trained
on is never reported. A member's own validation AUC is on one fold only and the OOF AUC on all of
them, so there is no "beats its best member" verdict: the output says why instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from cxr.data.prepared import relocated
from cxr.data.tta import Views
from cxr.evaluation.ensemble import Recording, load_members, matching_versions, member_imports, record
from cxr.evaluation.fold_members import FoldMember, check_folds, out_of_fold, validation_split
from cxr.evaluation.report import evaluate_calibrated, evaluate_predictions, validation_and_test_line
from cxr.evaluation.scoring import mean_auc
from cxr.runtime.console import log
from cxr.runtime.errors import CxrError
from cxr.serving import pyfunc
from cxr.serving.inference import Predictions, combined, predict_members, split_metadata
from cxr.tracking import runs, versions
from cxr.tracking.names import OUT_OF_FOLD, VALIDATION_TAG

if TYPE_CHECKING:
    from cxr.config import EnsembleConfig


def fold_members(
    client: MlflowClient, cfg: EnsembleConfig
) -> tuple[list[versions.Candidate], list[FoldMember]]:
    """The matching versions with their runs' config and split, in fold order; checked to be one
    complete set of folds of one configuration (`mixed_folds=true`: warned instead)."""
    candidates = matching_versions(client, cfg)
    members = [FoldMember(c.version, c.run_id, *runs.logged_run_inputs(c.run_id)) for c in candidates]
    order = sorted(range(len(members)), key=lambda i: (members[i].fold[2], int(members[i].version)))
    candidates, members = [candidates[i] for i in order], [members[i] for i in order]
    check_folds(members, cfg.mixed_folds)
    return candidates, members


def fold_note(oof_auc: float, fold_aucs: list[float], versions_: list[str]) -> str:
    """Why the ensemble is not compared with its best member on validation, and what is comparable."""
    best = int(np.nanargmax(fold_aucs))
    return (
        f"cxr: note: validation here is out of fold (every train_val image scored by the member that did "
        f"not train on it): mean AUC {oof_auc:.4f}, against a mean of the members' own-fold AUCs of "
        f"{np.nanmean(fold_aucs):.4f}. A member's validation AUC (best: version {versions_[best]}, "
        f"{fold_aucs[best]:.4f}) is on its one fold only and not comparable with either, so there is no "
        "'beats its best member' verdict: compare configurations by their out-of-fold AUC."
    )


def build(cfg: EnsembleConfig) -> dict[str, float]:
    """Builds, evaluates (test: members' mean; validation: out of fold), logs and registers the fold
    ensemble `cfg` selects; says where it went."""
    client = MlflowClient(cfg.tracking.uri)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    candidates, members = fold_members(client, cfg)
    loaded = load_members(candidates, cfg)
    dataset = relocated(members[0].config.dataset, cfg.dataset_root, cfg.cache_dir)
    k = len(members)
    views = Views.of(cfg.evaluation.tta)  # every member over the same views; the ensemble keeps them
    spec = pyfunc.ModelSpec(
        pathologies=list(loaded[0].pathologies),
        thresholds={},  # chosen below, on the out-of-fold predictions
        image_sizes=[size for m in loaded for size in m.spec.image_sizes],
        weights=[1.0 / k] * k,
        kind="ensemble",
        members=[
            {"version": c.version, "run_id": c.run_id, versions.RANK_METRIC: c.score, "weight": 1.0 / k}
            | {"fold": m.fold[2]}
            for c, m in zip(candidates, members, strict=True)
        ],
        imports=member_imports(loaded),
        tta=views.spec(),
    )
    model = pyfunc.CxrModel.of([m.members[0] for m in loaded], spec)
    # each member scores test and the one fold it validated on (NaN on its training images: out_of_fold
    # below reads only a member's validated ones); rows as the first member's split loads them
    first = members[0].split
    test_ids = set(first.loc[first["split"] == "test", "image_id"])
    scores, data = predict_members(
        model,
        dataset,
        ["train", "val", "test"],
        cfg.evaluation.batch_size,
        first,
        f"run {candidates[0].run_id}",
        only=[m.validated() | test_ids for m in members],
    )
    train_val = np.sort(np.concatenate([data.rows["train"], data.rows["val"]]))
    full = []
    for member in scores:
        every = np.full((len(data.table), len(data.pathologies)), np.nan)
        for split, rows in data.rows.items():
            every[rows] = member[split]
        full.append(every)
    ids = data.table["image_id"].to_numpy()[train_val]
    oof, count = out_of_fold(ids, members, [f[train_val] for f in full])
    if (count == 0).any():
        log.warning(
            f"cxr: warning: {int((count == 0).sum())} train_val image(s) no member validated are left out"
        )
    val_rows = train_val[count > 0]
    if not len(val_rows):
        raise CxrError("no train_val image was validated by any member: nothing to score out of fold")
    ours = validation_split(members).set_index("image_id")["split"]
    data = replace(
        data,
        table=data.table.assign(split=data.table["image_id"].map(ours).to_numpy()),
        rows={"val": val_rows, "test": data.rows["test"]},
    )
    test = combined(model, [{"test": member["test"]} for member in scores], data)["test"]
    labels, patients = data.labels, data.patients
    oof_val = Predictions(
        labels[val_rows], oof[count > 0], patients[val_rows], split_metadata(data, val_rows)
    )
    evaluation, spec.calibration = evaluate_calibrated(
        {"val": oof_val, "test": test}, cfg.evaluation, data.pathologies
    )
    spec.thresholds = evaluation.thresholds["thresholds"]
    spec.operating_points = evaluation.thresholds["operating_points"]

    member_tables, fold_aucs = {}, []
    for c, m, every, member in zip(candidates, members, full, scores, strict=True):
        own = val_rows[np.isin(data.table["image_id"].to_numpy()[val_rows], list(m.validated()))]
        preds = {
            "val": Predictions(labels[own], every[own], patients[own]),
            "test": Predictions(labels[data.rows["test"]], member["test"], patients[data.rows["test"]]),
        }
        fold_aucs.append(mean_auc(labels[own], every[own]))
        member_tables[f"v{c.version} fold {m.fold[2]}"] = evaluate_predictions(
            preds, cfg.evaluation, data.pathologies
        ).tables

    name = cfg.ensemble_name or cfg.model_name
    recording = Recording(
        model, spec, evaluation, data, dataset, members[0].split, candidates, f"ensemble-{name}-folds{k}"
    )
    evaluation, run_id, version, logged_cfg = record(
        cfg, client, recording, member_tables, {VALIDATION_TAG: OUT_OF_FOLD}
    )
    metrics = evaluation.metrics
    log.info(f"\nEnsemble of the {k} fold model(s) of {cfg.model_name!r} (mean weights):")
    for c, m, auc in zip(candidates, members, fold_aucs, strict=True):
        log.info(
            f"  version {c.version}: fold {m.fold[2]}, own-fold validation mean AUC {auc:.4f}, run {c.run_id}"
        )
    log.info(f"ensemble {validation_and_test_line(metrics, cfg.evaluation.bootstrap.confidence)}")
    log.info("  (validation: out of fold; test: the members' mean)")
    where = f"experiment {logged_cfg.tracking.experiment_name!r}"
    log.info(f"registered as models:/{name}/{version} (MLflow run {run_id}, {where})")
    log.info(fold_note(metrics[versions.RANK_METRIC], fold_aucs, [c.version for c in candidates]))
    return metrics
