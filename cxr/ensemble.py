"""`python -m cxr.ensemble model_name=NAME`: the top K registered versions, averaged, as one model
(or `selection=greedy`: greedy forward selection on validation).

The work is `cxr.evaluation.ensemble`: members ranked by validation mean AUC, thresholds chosen on
validation, one MLflow run (in the members' experiment unless `tracking.experiment_name` is given)
and one new registered version.
"""

from __future__ import annotations

import hydra

from cxr.config import CONF_DIR, EnsembleConfig, check_ensemble, register_configs
from cxr.runtime.console import announce
from cxr.runtime.errors import exit_on_user_error, run_command

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="ensemble")
@exit_on_user_error
def main(cfg: EnsembleConfig) -> None:
    announce("ensemble", cfg)
    check_ensemble(cfg)
    from cxr.evaluation.ensemble import build  # heavy (MLflow, Keras): after the checks

    build(cfg)


if __name__ == "__main__":
    run_command(main)
