"""Which model answers: what the registry, its run and its spec say about it, read once at start.

Everything is optional but the spec: a local model folder has no run, a run may lack test numbers or
intervals, a model logged before report cards has none, a spec before operating points has only its
validation thresholds. What is missing is null in `/api/model` and left out of the page.
"""

from __future__ import annotations

import posixpath
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxr.serving.pyfunc import DEFAULT_POINT
from cxr.tracking import names

DATA_PARAMS = ("dataset.name", "dataset.split", "dataset.val_fraction", "model.name")
_REGISTRY_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass
class Identity:
    """What `/api/model` returns and the page's side panel shows."""

    uri: str
    kind: str
    pathologies: list[str]
    image_sizes: list[int]
    operating_points: dict[str, dict[str, float | None]]
    name: str | None = None
    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    run_id: str | None = None
    run_name: str | None = None
    run_url: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> auc_mean, ci_low, ci_high
    data: dict[str, str] = field(default_factory=dict)
    members: list[dict] = field(default_factory=list)
    report_card: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def operating_points(spec) -> dict[str, dict[str, float | None]]:
    """{point name: {finding: threshold}}: the spec's validation thresholds, then any operating points
    the spec carries (`operating_points`, {name: {finding: threshold}}) where the model has them."""
    return {DEFAULT_POINT: dict(spec.thresholds), **(getattr(spec, "operating_points", None) or {})}


def split_numbers(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """{"val": {"auc_mean": .., "ci_low": .., "ci_high": ..}, "test": {...}} from a run's metrics."""
    out = {}
    for split in (names.VAL, names.TEST):
        mean = names.split_metric(split, names.AUC_MEAN)
        if mean in metrics:
            low, high = names.interval(mean)
            out[split] = {"auc_mean": metrics[mean]}
            bounds = (("ci_low", low), ("ci_high", high))
            out[split].update({key: metrics[m] for key, m in bounds if m in metrics})
    return out


def describe(model, uri: str, client=None, mlflow_ui: str | None = None) -> Identity:
    """The Identity of `model` (a CxrModel) loaded from `uri`; `client` an MlflowClient on its store."""
    spec = model.spec
    identity = Identity(
        uri=uri,
        kind=spec.kind,
        pathologies=list(spec.pathologies),
        image_sizes=list(spec.image_sizes),
        operating_points=operating_points(spec),
        members=list(spec.members),
    )
    if client is None:
        return identity
    found = _REGISTRY_URI.match(uri)
    if found:
        version = (
            client.get_model_version_by_alias(found["name"], found["alias"])
            if found["alias"]
            else client.get_model_version(found["name"], found["version"])
        )
        identity.name, identity.version = version.name, str(version.version)
        identity.aliases = list(getattr(version, "aliases", []) or [])
        identity.run_id = version.run_id
        identity.data[names.SPLIT_DIGEST_TAG] = version.tags.get(names.SPLIT_DIGEST_TAG, "")
    elif uri.startswith("runs:/"):
        identity.run_id = uri[len("runs:/") :].split("/")[0]
    if identity.run_id:
        run = client.get_run(identity.run_id)
        identity.run_name = run.info.run_name
        identity.metrics = split_numbers(run.data.metrics)
        identity.data.update({k: run.data.params[k] for k in DATA_PARAMS if k in run.data.params})
        identity.data = {k: v for k, v in identity.data.items() if v}
        if mlflow_ui:
            experiment = run.info.experiment_id
            identity.run_url = f"{mlflow_ui.rstrip('/')}/#/experiments/{experiment}/runs/{identity.run_id}"
    return identity


def report_card(client, run_id: str | None) -> bytes | None:
    """The run's report card (`report/report.html`), or None where the run has none."""
    if not run_id:
        return None
    folder = posixpath.dirname(names.REPORT_HTML_ARTIFACT)
    if names.REPORT_HTML_ARTIFACT not in {a.path for a in client.list_artifacts(run_id, folder or None)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, names.REPORT_HTML_ARTIFACT, tmp)
        return Path(path).read_bytes()
