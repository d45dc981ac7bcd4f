"""`python -m cxr.promote model_name=NAME version=N`: move the champion alias to a better version.

Promotion is by alias (`models:/NAME@champion`), MLflow 3's replacement for stages. A version takes
the alias only if it passes the gates against the current champion (with none yet, the best other
registered version) on the same validation patients: a paired bootstrap of the mean-AUC difference,
no finding collapsed, no subgroup gap widened, calibration kept (`gates.*`; docs/promotion.md); or
with `force=true`, which records the gates it overrode. The version records what it replaced and
why. Without `version`, the command only shows the champion and the top candidates. Single models
and ensembles are promoted alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import hydra

from cxr.config import CONF_DIR, PromoteConfig, check_gates, register_configs
from cxr.runtime.console import announce
from cxr.runtime.errors import exit_on_user_error, run_command
from cxr.runtime.known_keys import check_known_keys
from cxr.tracking import names as metric_names
from cxr.tracking import versions as model_registry

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

register_configs()


def show(client: MlflowClient, cfg: PromoteConfig) -> None:
    from cxr.tracking.promotion import candidates_table  # heavy: MLflow, after the config

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


def run(cfg: PromoteConfig) -> None:
    from mlflow.tracking import MlflowClient  # heavy: MLflow, after Hydra has composed the config

    from cxr.tracking import promotion  # MLflow too

    check_known_keys(cfg)  # a key a '+' added beside the schema's is refused, not ignored
    metric_names.check_validation(cfg.metric, "metric", "compare versions on validation, never on test")
    check_gates(cfg.gates)
    client = MlflowClient(cfg.tracking.uri)
    if cfg.version is None:
        show(client, cfg)
        return
    gates = None
    if cfg.gates.enabled:
        from cxr.evaluation.gated_promotion import gate_version  # heavy: the numbers, after the config

        gates, against = gate_version(
            client, cfg.model_name, str(cfg.version), cfg.alias, cfg.metric, cfg.gates
        )
        print(f"{cfg.model_name} version {cfg.version} against {against}:")
        for gate in gates:
            print(f"  {gate.name}: {gate.line}")
    print(
        promotion.promote(client, cfg.model_name, str(cfg.version), cfg.alias, cfg.metric, cfg.force, gates)
    )
    serve = f"mlflow models serve -m models:/{cfg.model_name}@{cfg.alias} --env-manager local"
    print(f"Serve it: MLFLOW_TRACKING_URI={cfg.tracking.uri} {serve}", flush=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="promote")
@exit_on_user_error
def main(cfg: PromoteConfig) -> None:
    announce("promote", cfg)
    run(cfg)


if __name__ == "__main__":
    run_command(main)
