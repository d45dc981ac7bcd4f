"""`python -m cxr.report model=models:/NAME@champion`: the report card of any registered model.

Writes report.html and report.json into the command's output folder, from the registry alone: the
card the version's run wrote at its evaluation, its plots, and the version's identity and promotion
gates. A version evaluated before cxr wrote cards is named, with the `cxr.evaluate` line that adds one.
`compare=models:/NAME/7` adds a second version beside it: each one's AUCs and the paired differences on
the validation patients both were scored on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra

from cxr.config import CONF_DIR, ReportConfig, register_configs
from cxr.runtime.argv import model_alias
from cxr.runtime.console import announce
from cxr.runtime.errors import exit_on_user_error, run_command
from cxr.runtime.known_keys import check_known_keys

register_configs()


def run(cfg: ReportConfig) -> Path:
    from mlflow.tracking import MlflowClient  # heavy: MLflow, after Hydra has composed the config

    from cxr.evaluation.version_card import write_version_card

    check_known_keys(cfg)
    client = MlflowClient(cfg.tracking.uri)
    page = write_version_card(client, cfg.model_uri, Path(cfg.output_dir), cfg.compare, cfg.bootstrap)
    against = f" against {cfg.compare}" if cfg.compare else ""
    print(f"report card of {cfg.model_uri}{against}: {page} (and report.json beside it)", flush=True)
    return page


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
@exit_on_user_error
def main(cfg: ReportConfig) -> None:
    announce("report", cfg)
    run(cfg)


if __name__ == "__main__":
    sys.argv[1:] = model_alias(sys.argv[1:])
    run_command(main)
