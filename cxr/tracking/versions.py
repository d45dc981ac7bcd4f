"""MLflow model versions: registered with what ranking and use need, ranked by validation AUC, aliases.

A version's tags hold
everything the registry alone needs to rank and use it: the validation mean AUC and its interval,
the run, the sweep and trial, the image size(s), the split's fingerprint and the thresholds, so
ranking never opens a run and never looks at a test metric.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cxr.data.tta import Views
from cxr.runtime.errors import CxrError
from cxr.tracking import names as metric_names
from cxr.tracking.names import (
    EXPERIMENT_TAG,
    IMAGE_SIZE_TAG,
    MODEL_KIND_TAG,
    OUT_OF_FOLD,
    RUN_NAME_TAG,
    RUN_TAG,
    SPLIT_DIGEST_TAG,
    STUDY_TAG,
    THRESHOLDS_TAG,
    TRIAL_TAG,
    TTA_VERSION_TAG,
    VALIDATION_TAG,
)

RANK_METRIC = metric_names.RANK
_POINTING = metric_names.localisation(metric_names.TEST, metric_names.LOCALISATION_SHOWN)
LOCALISATION_TAGS = (_POINTING, *metric_names.interval(_POINTING))


@dataclass(frozen=True)
class Candidate:
    """One registered version, as the registry knows it."""

    name: str
    version: str
    run_id: str
    score: float  # the ranking metric (validation only)
    tags: dict[str, str]
    aliases: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def version_tags(
    metrics: dict[str, float],
    run_id: str,
    spec,
    split_digest: str,
    experiment: str,
    study: str | None = None,
    trial: int | None = None,
    run_name: str | None = None,
) -> dict[str, str]:
    """The tags a new version gets (spec is the model's cxr.serving.pyfunc.ModelSpec)."""
    tags = {
        **({RUN_NAME_TAG: run_name} if run_name else {}),
        MODEL_KIND_TAG: spec.kind,
        RUN_TAG: run_id,
        EXPERIMENT_TAG: experiment,
        SPLIT_DIGEST_TAG: split_digest,
        IMAGE_SIZE_TAG: ",".join(map(str, spec.image_sizes)),
        TTA_VERSION_TAG: Views.of(getattr(spec, "tta", None)).describe(),
        THRESHOLDS_TAG: json.dumps(spec.thresholds),
    }
    tags.update(metric_tags(metrics))
    if study is not None:
        tags[STUDY_TAG] = study
        tags[TRIAL_TAG] = str(trial)
    return tags


def any_out_of_fold(*versions) -> bool:
    """Whether any of these versions (registry versions or `Candidate`s) is a fold ensemble whose
    validation scores are out of fold: the gates then pair it on the other's validation images."""
    return OUT_OF_FOLD in {(v.tags or {}).get(VALIDATION_TAG) for v in versions}


def metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    """The ranking metric and its interval (when one was computed), as version tags; the test pointing
    game's pooled rate too when localisation was scored (shown by `cxr.promote`, never ranked by)."""
    keys = (RANK_METRIC, *metric_names.interval(RANK_METRIC), *LOCALISATION_TAGS)
    return {key: repr(float(metrics[key])) for key in keys if key in metrics}


def tag_run_versions(client, name: str, run_id: str, metrics: dict[str, float]) -> None:
    """Update the ranking tags of the versions of `name` that `run_id` registered (after a re-evaluation
    computed the interval a sweep trial skipped)."""
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        tag_version(client, name, version.version, metric_tags(metrics))


def tag_version(client, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if RUN_NAME_TAG in tags:
        client.update_model_version(name, version, description=f"from run {tags[RUN_NAME_TAG]}")


def _candidate(version, metric: str, aliases: tuple[str, ...] | None = None) -> Candidate | None:
    """`aliases` when known otherwise (search results leave a version's aliases empty)."""
    tags = dict(version.tags or {})
    try:  # a version registered before the `/` names carries the metric's old spelling
        score = float(tags[metric] if metric in tags else tags[metric_names.legacy(metric)])
    except (KeyError, ValueError):
        return None  # not registered by cxr, or never evaluated on validation
    run_id = tags.get(RUN_TAG) or version.run_id
    if aliases is None:
        aliases = tuple(getattr(version, "aliases", []) or [])
    return Candidate(version.name, str(version.version), run_id, score, tags, aliases)


def ranked_versions(
    client,
    name: str,
    *,
    metric: str = RANK_METRIC,
    study: str | None = None,
    experiment: str | None = None,
    kind: str | None = None,
    tags: dict[str, str] | None = None,
) -> list[Candidate]:
    """Versions of `name`, best validation score first, optionally filtered by study, experiment,
    kind and exact tag values. Versions without the metric tag are left out."""
    from mlflow.exceptions import MlflowException  # heavy: MLflow (cxr.promote imports this at start-up)

    metric_names.check_validation(metric, "metric", "rank on validation, never on test")
    try:
        model = client.get_registered_model(name)
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as err:
        raise CxrError(f"no registered model {name!r} in the MLflow store: {err.message}") from None
    wanted = dict(tags or {})
    if study is not None:
        wanted[STUDY_TAG] = study
    if experiment is not None:
        wanted[EXPERIMENT_TAG] = experiment
    if kind is not None:
        wanted[MODEL_KIND_TAG] = kind
    aliases: dict[str, list[str]] = {}
    for alias, number in (model.aliases or {}).items():
        aliases.setdefault(str(number), []).append(alias)
    out = []
    for version in versions:
        candidate = _candidate(version, metric, tuple(sorted(aliases.get(str(version.version), []))))
        if candidate and all(candidate.tags.get(k) == v for k, v in wanted.items()):
            out.append(candidate)
    return sorted(out, key=lambda c: (-c.score, -int(c.version)))


def get_candidate(
    client, name: str, version: str | None = None, alias: str | None = None, metric: str = RANK_METRIC
) -> Candidate | None:
    """One version by number or alias; None when the alias is not set."""
    from mlflow.exceptions import MlflowException  # heavy: MLflow (cxr.promote imports this at start-up)

    try:
        found = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
    except MlflowException as err:
        if alias:
            return None
        raise CxrError(f"cannot find version {version} of model {name!r}: {err.message}") from None
    candidate = _candidate(found, metric)
    if candidate is None:
        raise CxrError(f"{name} version {found.version} has no {metric} tag; was it registered by cxr?")
    return candidate
