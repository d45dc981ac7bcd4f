"""`python -m cxr.promote model_name=NAME version=N`: move the champion alias to a better version.

Promotion is by alias (`models:/NAME@champion`), MLflow 3's replacement for stages. A version takes
the alias only if its validation mean AUC beats the current champion's (or `force=true`); the
version records what it replaced and why. Without `version`, the command only shows the champion
and the top candidates. Single models and ensembles are promoted alike.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import hydra
import pandas as pd

from cxr.config import CONF_DIR, PromoteConfig, register_configs
from cxr.runtime.console import announce
from cxr.runtime.errors import CxrError, exit_on_user_error, run_command
from cxr.tracking import names as metric_names
from cxr.tracking import versions as model_registry

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

register_configs()


def candidates_table(candidates: list[model_registry.Candidate], metric: str) -> pd.DataFrame:
    """One row per version: rank, kind, the metric with its interval, aliases, study/trial, run."""
    rows = []
    for rank, c in enumerate(candidates, start=1):
        low, high = (c.tags.get(bound) for bound in metric_names.interval(metric))
        interval = f"[{float(low):.4f}, {float(high):.4f}]" if low and high else ""
        trial = (
            f"{c.tags[metric_names.STUDY_TAG]}#{c.tags.get(metric_names.TRIAL_TAG)}"
            if metric_names.STUDY_TAG in c.tags
            else ""
        )
        rows.append(
            {
                "rank": rank,
                "version": c.version,
                "kind": c.tags.get(metric_names.MODEL_KIND_TAG, ""),
                metric: f"{c.score:.4f}",
                "95% CI" if metric == model_registry.RANK_METRIC else "CI": interval,
                "aliases": ",".join(c.aliases),
                "trial": trial,
                "run_id": c.run_id,
            }
        )
    return pd.DataFrame(rows).set_index("rank")


def show(client: MlflowClient, cfg: PromoteConfig) -> None:
    ranked = model_registry.ranked_versions(client, cfg.model_name, metric=cfg.metric)
    champion = model_registry.get_candidate(client, cfg.model_name, alias=cfg.alias, metric=cfg.metric)
    if champion is None:
        print(f"{cfg.model_name}: no version has the alias {cfg.alias!r} yet")
    else:
        print(f"{cfg.model_name}@{cfg.alias}: version {champion.version}, {cfg.metric} {champion.score:.4f}")
    if not ranked:
        print(f"no version of {cfg.model_name!r} carries a {cfg.metric} tag")
        return
    print(f"\ntop {min(cfg.top, len(ranked))} of {len(ranked)} version(s) by {cfg.metric}:")
    print(candidates_table(ranked[: cfg.top], cfg.metric).to_string())


def promote(client: MlflowClient, cfg: PromoteConfig) -> str:
    """Move the alias to `cfg.version` if it beats the holder; returns what happened, in one line."""
    version = str(cfg.version)
    challenger = model_registry.get_candidate(client, cfg.model_name, version=version, metric=cfg.metric)
    holder = model_registry.get_candidate(client, cfg.model_name, alias=cfg.alias, metric=cfg.metric)
    if holder is not None and holder.version == version:
        return f"version {version} already holds {cfg.model_name}@{cfg.alias}; nothing changed"
    if holder is not None and challenger.score <= holder.score and not cfg.force:
        raise CxrError(
            f"version {version} ({cfg.metric} {challenger.score:.4f}) does not beat "
            f"{cfg.model_name}@{cfg.alias}, version {holder.version} ({holder.score:.4f}); "
            "pass force=true to promote it anyway"
        )
    if holder is None:
        reason = f"first {cfg.alias}"
    elif challenger.score > holder.score:
        reason = f"{cfg.metric} {challenger.score:.4f} > {holder.score:.4f}"
    else:
        reason = f"forced: {cfg.metric} {challenger.score:.4f} <= {holder.score:.4f}"
    client.set_registered_model_alias(cfg.model_name, cfg.alias, version)
    record = {
        f"cxr.{cfg.alias}.replaced": holder.version if holder else "none",
        f"cxr.{cfg.alias}.reason": reason,
        f"cxr.{cfg.alias}.since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    model_registry.tag_version(client, cfg.model_name, version, record)
    replaced = f", replacing version {holder.version}" if holder else ""
    return f"{cfg.model_name}@{cfg.alias} -> version {version}{replaced} ({reason})"


def run(cfg: PromoteConfig) -> None:
    from mlflow.tracking import MlflowClient  # heavy: MLflow, after Hydra has composed the config

    metric_names.check_validation(cfg.metric, "metric", "compare versions on validation, never on test")
    client = MlflowClient(cfg.tracking.uri)
    if cfg.version is None:
        show(client, cfg)
        return
    print(promote(client, cfg))
    serve = f"mlflow models serve -m models:/{cfg.model_name}@{cfg.alias} --env-manager local"
    print(f"Serve it: MLFLOW_TRACKING_URI={cfg.tracking.uri} {serve}", flush=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="promote")
@exit_on_user_error
def main(cfg: PromoteConfig) -> None:
    announce("promote", cfg)
    run(cfg)


if __name__ == "__main__":
    run_command(main)
