"""`python -m cxr.evaluate`: re-evaluate a logged model and log the results back to its run.

`run_id=<id>` or `model_uri=runs:/...|models:/NAME@alias`; the work is `cxr.evaluation.logged_model`.
"""

from __future__ import annotations

import hydra

from cxr.config import CONF_DIR, EvaluateConfig, check_evaluation, register_configs
from cxr.runtime.console import announce
from cxr.runtime.errors import exit_on_user_error, run_command
from cxr.runtime.known_keys import check_known_keys

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
@exit_on_user_error
def main(cfg: EvaluateConfig) -> None:
    announce("evaluate", cfg)
    check_known_keys(cfg)
    check_evaluation(cfg.evaluation)
    from cxr.evaluation.logged_model import evaluate  # heavy (MLflow, Keras): after the checks

    evaluate(cfg)


if __name__ == "__main__":
    run_command(main)
