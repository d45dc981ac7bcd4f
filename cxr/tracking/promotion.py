"""Promotion by alias (`models:/NAME@champion`), MLflow 3's replacement for stages.

A version takes the alias only if its validation metric beats the current holder's (or when forced);
the version records what it replaced, why and since when. Single models and ensembles alike.
"""

from __future__ import annotations

import time

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
    client: MlflowClient, name: str, version: str, alias: str, metric: str, force: bool = False
) -> str:
    """Move `alias` to `version` if it beats the holder on `metric`; returns what happened, in one line."""
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
    client.set_registered_model_alias(name, alias, version)
    replaced_tag, reason_tag, since_tag = alias_record_tags(alias)
    record = {
        replaced_tag: holder.version if holder else "none",
        reason_tag: reason,
        since_tag: time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    versions.tag_version(client, name, version, record)
    replaced = f", replacing version {holder.version}" if holder else ""
    return f"{name}@{alias} -> version {version}{replaced} ({reason})"
