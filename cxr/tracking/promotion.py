"""Promotion by alias (`models:/NAME@champion`), MLflow 3's replacement for stages.

A version takes the alias only if its validation metric beats the current holder's (or when forced);
the version records what it replaced, why and since when. Single models and ensembles alike.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from typing import Protocol

import pandas as pd
from mlflow.tracking import MlflowClient

from cxr.runtime.errors import CxrError
from cxr.tracking import names, versions
from cxr.tracking.names import alias_record_tags


def candidates_table(candidates: list[versions.Candidate], metric: str) -> pd.DataFrame:
    """One row per version: rank, kind, the metric with its interval, aliases, study/trial, run."""
    rows = []
    for rank, c in enumerate(candidates, start=1):
        low, high = (c.tags.get(bound) for bound in names.interval(metric))
        interval = f"[{float(low):.4f}, {float(high):.4f}]" if low and high else ""
        trial = (
            f"{c.tags[names.STUDY_TAG]}#{c.tags.get(names.TRIAL_TAG)}" if names.STUDY_TAG in c.tags else ""
        )
        rows.append(
            {
                "rank": rank,
                "version": c.version,
                "kind": c.tags.get(names.MODEL_KIND_TAG, ""),
                metric: f"{c.score:.4f}",
                "95% CI" if metric == versions.RANK_METRIC else "CI": interval,
                **_localisation_column(c),
                "aliases": ",".join(c.aliases),
                "trial": trial,
                "run_id": c.run_id,
            }
        )
    return pd.DataFrame(rows).set_index("rank").fillna("")


def _localisation_column(candidate: versions.Candidate) -> dict[str, str]:
    """`test pointing`: the test pointing-game rate with its interval, for versions whose evaluation
    scored localisation; shown beside the ranking metric, never compared (it is a test measure)."""
    point, low, high = (candidate.tags.get(tag) for tag in versions.LOCALISATION_TAGS)
    if point is None:
        return {}
    interval = f" [{float(low):.2f}, {float(high):.2f}]" if low and high else ""
    return {"test pointing": f"{float(point):.2f}{interval}"}


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    alias: str,
    metric: str,
    force: bool = False,
    gates: Sequence[GateResult] | None = None,
) -> str:
    """Move `alias` to `version` if it beats the holder on `metric` (or, given `gates`, if every gate
    passed: `promote_gated`); returns what happened, in one line."""
    if gates is not None:
        return promote_gated(client, name, version, alias, metric, gates, force)
    challenger = versions.get_candidate(client, name, version=version, metric=metric)
    holder = versions.get_candidate(client, name, alias=alias, metric=metric)
    if holder is not None and holder.version == version:
        return f"version {version} already holds {name}@{alias}; nothing changed"
    if holder is not None and challenger.score <= holder.score and not force:
        raise CxrError(
            f"version {version} ({metric} {challenger.score:.4f}) does not beat "
            f"{name}@{alias}, version {holder.version} ({holder.score:.4f}); "
            "pass force=true to promote it anyway"
        )
    if holder is None:
        reason = f"first {alias}"
    elif challenger.score > holder.score:
        reason = f"{metric} {challenger.score:.4f} > {holder.score:.4f}"
    else:
        reason = f"forced: {metric} {challenger.score:.4f} <= {holder.score:.4f}"
    return _move(client, name, version, alias, holder, reason)


def _move(client, name: str, version: str, alias: str, holder, reason: str, extra: dict | None = None) -> str:
    """Set the alias and the version's record of what it replaced, why and since when."""
    client.set_registered_model_alias(name, alias, version)
    replaced_tag, reason_tag, since_tag = alias_record_tags(alias)
    record = {
        replaced_tag: holder.version if holder else "none",
        reason_tag: reason,
        since_tag: time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    versions.tag_version(client, name, version, record)
    replaced = f", replacing version {holder.version}" if holder else ""
    return f"{name}@{alias} -> version {version}{replaced} ({reason})"


# ---------------------------------------------------------------- gated promotion (issue 21)
class GateResult(Protocol):
    """One gate's outcome (cxr.evaluation.gates.Gate): tracking stores it, evaluation computes it."""

    name: str
    passed: bool
    line: str


def baseline(
    client: MlflowClient, name: str, version: str, alias: str, metric: str
) -> tuple[versions.Candidate | None, str]:
    """What `version` is compared with, and how to say so: the alias's holder; with none yet, the best
    other registered version by `metric` (a first champion must still beat what is there)."""
    holder = versions.get_candidate(client, name, alias=alias, metric=metric)
    if holder is not None:
        return holder, f"{name}@{alias}, version {holder.version}"
    others = [c for c in versions.ranked_versions(client, name, metric=metric) if c.version != str(version)]
    if not others:
        return None, f"no {alias} and no other version of {name}"
    best = others[0]
    return best, f"no {alias} yet: the best registered version by {metric}, version {best.version}"


def validation_predictions(client: MlflowClient, run_id: str) -> pd.DataFrame | None:
    """The validation predictions a run's evaluation logged (`evaluation/val_predictions.csv`), or None
    for a run evaluated before they were logged."""
    from mlflow.exceptions import MlflowException

    try:
        path = client.download_artifacts(run_id, names.VAL_PREDICTIONS_ARTIFACT, tempfile.mkdtemp())
    except (MlflowException, OSError):
        return None
    return pd.read_csv(path)


def promote_gated(
    client: MlflowClient,
    name: str,
    version: str,
    alias: str,
    metric: str,
    gates: Sequence[GateResult],
    force: bool = False,
) -> str:
    """Move `alias` to `version` if every gate passed (or `force`: the overridden gates are recorded as
    `cxr.<alias>.overridden_gates`); each gate's line becomes a tag of the version (`cxr.gate.<name>`)."""
    challenger = versions.get_candidate(client, name, version=version, metric=metric)
    holder = versions.get_candidate(client, name, alias=alias, metric=metric)
    if holder is not None and holder.version == version:
        return f"version {version} already holds {name}@{alias}; nothing changed"
    results = {f"{names.GATE_TAG_PREFIX}{g.name}": g.line[:4900] for g in gates}  # MLflow: 5000 at most
    versions.tag_version(client, name, version, results)
    failed = [g.name for g in gates if not g.passed]
    if failed and not force:
        raise CxrError(
            f"version {version} of {name} was refused: the gate(s) {', '.join(failed)} failed "
            f"(lines above; tags {names.GATE_TAG_PREFIX}*); pass force=true to promote it anyway"
        )
    against = f" vs {holder.score:.4f}" if holder else ""
    if failed:
        reason = (
            f"forced past the failed gate(s) {', '.join(failed)}: {metric} {challenger.score:.4f}{against}"
        )
        extra = {names.overridden_gates_tag(alias): ",".join(failed)}
    else:
        reason = f"{metric} {challenger.score:.4f}{against}; every gate passed" if gates else f"first {alias}"
        extra = {}
    return _move(client, name, version, alias, holder, reason, extra)
