"""The report card of a registered version, from the registry alone: the card its run's evaluation wrote
(`report/report.json`), its logged plots, the version's identity and its promotion gates (tags).
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.data.splits import SPLIT_TITLES
from cxr.evaluation.card import _FIGURES, _clean, render_html
from cxr.evaluation.comparison import compare_versions
from cxr.runtime.errors import CxrError
from cxr.tracking import names as mn

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from cxr.config import BootstrapConfig  # a type only: config sits above evaluation


def find_version(client: MlflowClient, model_uri: str):
    """The ModelVersion of `models:/NAME/N` or `models:/NAME@ALIAS`."""
    from mlflow.exceptions import MlflowException

    found = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@(.+))", model_uri)
    if not found:
        raise CxrError(f"model={model_uri!r}: give models:/<name>/<version> or models:/<name>@<alias>")
    name, number, alias = found.groups()
    try:
        return (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, number)
        )
    except MlflowException as err:
        raise CxrError(f"cannot find {model_uri} in the MLflow store: {err.message}") from None


def _artifact(client: MlflowClient, run_id: str, path: str, folder: str) -> Path | None:
    from mlflow.exceptions import MlflowException

    try:
        return Path(client.download_artifacts(run_id, path, folder))
    except (MlflowException, OSError):
        return None


def write_version_card(
    client: MlflowClient,
    model_uri: str,
    folder: Path,
    compare: str | None = None,
    bootstrap: BootstrapConfig | None = None,
) -> Path:
    """report.json and report.html of the version `model_uri` names, into `folder`; returns the page.
    With `compare` (another version's URI), the card holds both side by side with paired differences on
    validation (`cxr.evaluation.comparison`; `bootstrap`, needed then: resamples, confidence, seed)."""
    version = find_version(client, model_uri)
    other = find_version(client, compare) if compare else None
    run_id = version.tags.get(mn.RUN_TAG) or version.run_id
    with tempfile.TemporaryDirectory() as tmp:
        stored = _artifact(client, run_id, mn.REPORT_JSON_ARTIFACT, tmp)
        if stored is None:
            raise CxrError(
                f"{model_uri} (run {run_id}) has no {mn.REPORT_JSON_ARTIFACT}: it was evaluated before cxr "
                f"wrote report cards; re-evaluate it first: python -m cxr.evaluate model_uri={model_uri}"
            )
        doc = json.loads(stored.read_text())
        images: dict[str, dict[str, str]] = {}
        for split in doc["splits"]:
            title = SPLIT_TITLES.get(split, split)
            for kind, (what, _) in _FIGURES.items():
                png = _artifact(client, run_id, f"plots/{kind}_{split}.png", tmp)
                if png is not None:
                    images.setdefault(split, {})[f"{what}, {title} set"] = base64.b64encode(
                        png.read_bytes()
                    ).decode()
    aliases = ", ".join(getattr(version, "aliases", []) or [])
    doc["model"].update({"version": f"models:/{version.name}/{version.version}", "aliases": aliases})
    doc["gates"] = [
        {"name": key[len(mn.GATE_TAG_PREFIX) :], "passed": value.startswith("pass"), "line": value}
        for key, value in sorted(version.tags.items())
        if key.startswith(mn.GATE_TAG_PREFIX)
    ]
    if other is not None:
        b = bootstrap
        doc["comparison"] = _clean(
            compare_versions(client, version, other, b.resamples, b.confidence, b.seed)
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(doc, indent=1))
    page = folder / "report.html"
    page.write_text(render_html(doc, images))
    return page
