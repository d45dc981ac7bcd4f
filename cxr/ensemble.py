"""`python -m cxr.ensemble model_name=NAME`: the top K registered versions, averaged, as one model
(or `selection=greedy`: greedy forward selection on validation; or `members=folds`: the fold models of
one configuration, validated out of fold).

The work is `cxr.evaluation.ensemble`: members ranked by validation mean AUC, thresholds chosen on
validation, one MLflow run (in the members' experiment unless `tracking.experiment_name` is given)
and one new registered version.
"""

from __future__ import annotations

import importlib

import hydra

from cxr.config import CONF_DIR, EnsembleConfig, check_ensemble, register_configs
from cxr.evaluation.member_selection import MEMBER_SETS
from cxr.runtime.console import announce
from cxr.runtime.errors import exit_on_user_error, run_command

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="ensemble")
@exit_on_user_error
def main(cfg: EnsembleConfig) -> None:
    announce("ensemble", cfg)
    check_ensemble(cfg)
    # heavy (MLflow, Keras): after the checks
    importlib.import_module(MEMBER_SETS[cfg.members]).build(cfg)


if __name__ == "__main__":
    run_command(main)
