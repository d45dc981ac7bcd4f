"""The gates of a registered version against the champion (or, with none yet, the best other version),
from the validation predictions both runs logged: what `cxr.promote` runs before it moves the alias.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr.evaluation.gates import Gate, check_gates
from cxr.evaluation.stored_predictions import frame_predictions
from cxr.runtime.errors import CxrError
from cxr.serving.inference import Predictions
from cxr.tracking import promotion, versions
from cxr.tracking.names import VAL_PREDICTIONS_ARTIFACT

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from cxr.config import GatesConfig  # a type only: config sits above evaluation


def _stored(client: MlflowClient, c: versions.Candidate) -> tuple[Predictions, tuple[str, ...]]:
    frame = promotion.validation_predictions(client, c.run_id)
    if frame is None:
        raise CxrError(
            f"version {c.version} of {c.name} (run {c.run_id}) has no {VAL_PREDICTIONS_ARTIFACT}: it was "
            f"evaluated before cxr logged them; re-evaluate it (python -m cxr.evaluate model_uri={c.uri}) "
            "or compare tags only with gates.enabled=false"
        )
    return frame_predictions(frame, f"{VAL_PREDICTIONS_ARTIFACT} of run {c.run_id}")


def gate_version(
    client: MlflowClient, name: str, version: str, alias: str, metric: str, cfg: GatesConfig
) -> tuple[list[Gate], str]:
    """(the gates, what the version was compared with, in words); no gates when there is nothing to
    compare with (the first version) or the version already holds the alias."""
    base, said = promotion.baseline(client, name, version, alias, metric)
    if base is None or base.version == str(version):
        return [], said
    candidate = versions.get_candidate(client, name, version=str(version), metric=metric)
    (ours, names), (theirs, their_names) = _stored(client, candidate), _stored(client, base)
    if names != their_names:
        raise CxrError(f"versions {version} and {base.version} of {name} predict different findings")
    out_of_fold = versions.any_out_of_fold(candidate, base)
    if out_of_fold:
        said += " (the fold ensemble's out-of-fold scores on the other's validation images)"
    return check_gates(ours, theirs, names, cfg, out_of_fold), said
