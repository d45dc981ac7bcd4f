"""The model cxr logs and ships: an MLflow pyfunc around one or more Keras members.

MLflow's Keras loader does not import cxr, so a bare Keras model with cxr's layers and losses does
not load in a fresh serving process. This wrapper does: it imports cxr's registered classes, loads
each member in Keras's safe mode, and carries what a prediction needs besides weights: the
pathology names, the validation-chosen thresholds, each member's input size and weight.

A single trained model is an ensemble of one; `cxr.ensemble` logs several members the same way,
so prediction, serving, evaluation and promotion treat both alike.

Served (`mlflow models serve -m models:/NAME@champion`), it takes a DataFrame column `image` of
base64-encoded PNG/JPEG files of any size and mode and returns, per row, one probability column
per pathology and `findings`, the pathologies at or above their thresholds.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import importlib.metadata as metadata
import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

import cxr.models  # noqa: F401  (these three register the custom classes the saved members refer to)
import cxr.training.losses  # noqa: F401
import cxr.training.metrics  # noqa: F401
from cxr.data.images import IMAGE_ERRORS, read_grey, resize
from cxr.runtime.errors import CxrError
from cxr.serving.calibrators import apply_calibration
from cxr.tracking.naming import model_name
from cxr.training.backend import backend_packages

SPEC_FILE = "cxr_model.json"
IMAGE_COLUMN = "image"
FINDINGS_COLUMN = "findings"


@dataclass
class ModelSpec:
    """What travels with the weights (as `cxr_model.json` among the model's artifacts)."""

    pathologies: list[str]
    thresholds: dict[str, float | None]  # chosen on validation; None: undefined (no positives there)
    image_sizes: list[int]  # each member's input side
    weights: list[float]  # each member's share of the average (they sum to 1)
    kind: str = "single"  # single | ensemble
    members: list[dict] = field(default_factory=list)  # provenance: version, run id, val AUC ...
    imports: list[str] = field(default_factory=list)  # user modules that register custom layers
    # a post-hoc calibrator per finding, fitted on validation (cxr.serving.calibrators); empty: none
    calibration: dict = field(default_factory=dict)


class CxrModel(mlflow.pyfunc.PythonModel):
    """Weighted mean of the members' probabilities, with findings at the stored thresholds."""

    @classmethod
    def of(cls, members: Sequence, spec: ModelSpec) -> CxrModel:
        """A model from Keras members in memory (as log_model will store them)."""
        model = cls()
        model.members, model.spec = list(members), spec
        return model

    def load_context(self, context) -> None:
        self.spec = ModelSpec(**json.loads(Path(context.artifacts["spec"]).read_text()))
        for module in self.spec.imports:  # a model built by the user's own code (a `_target_` option)
            importlib.import_module(module)
        self.members = [
            load_keras(context.artifacts[f"member_{i}"]) for i in range(len(self.spec.image_sizes))
        ]

    # ------------------------------------------------------------------ numbers
    @property
    def pathologies(self) -> tuple[str, ...]:
        return tuple(self.spec.pathologies)

    @property
    def thresholds(self) -> np.ndarray:
        return np.array([np.nan if t is None else t for t in self.spec.thresholds.values()], np.float64)

    def combine(self, member_scores: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities from each member's (N, pathologies) probabilities."""
        mean = np.tensordot(np.asarray(self.spec.weights), np.stack(member_scores), axes=1).astype(np.float32)
        return apply_calibration(mean, self.spec.calibration, self.spec.pathologies)

    def probabilities(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(N, pathologies) for grey uint8 images of any size: each member sees them at its own size."""
        if not len(images):
            return np.empty((0, len(self.pathologies)), np.float32)
        sizes = self.spec.image_sizes
        per_member: list[list[np.ndarray]] = [[] for _ in self.members]
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            # each image resized once per input size, however many members share that size
            batches = {size: np.stack([resize(img, size) for img in chunk])[..., None] for size in set(sizes)}
            for scores, member, size in zip(per_member, self.members, sizes, strict=True):
                scores.append(np.asarray(member.predict_on_batch(batches[size])))
        return self.combine([np.concatenate(scores) for scores in per_member])

    def findings(self, scores: np.ndarray) -> list[list[str]]:
        """Per row, the pathologies at or above their validation-chosen thresholds."""
        with np.errstate(invalid="ignore"):
            positive = scores >= self.thresholds[None, :]  # an undefined threshold calls nothing
        return [[p for p, hit in zip(self.pathologies, row, strict=True) if hit] for row in positive]

    # ------------------------------------------------------------------ pyfunc
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if IMAGE_COLUMN not in model_input:
            raise CxrError(f"input needs a column {IMAGE_COLUMN!r} of base64-encoded PNG/JPEG files")
        images = [_decode(value, row) for row, value in enumerate(model_input[IMAGE_COLUMN])]
        scores = self.probabilities(images)
        out = pd.DataFrame(scores.astype(np.float64), columns=list(self.pathologies))
        out[FINDINGS_COLUMN] = self.findings(scores)
        return out


def _decode(value, row: int) -> np.ndarray:
    try:
        data = value if isinstance(value, bytes) else base64.b64decode(str(value), validate=True)
        return read_grey(data)
    except (binascii.Error, *IMAGE_ERRORS) as err:
        raise CxrError(f"row {row} of column {IMAGE_COLUMN!r} is not a base64-encoded image: {err}") from None


def load_keras(path: str):
    """A saved Keras model, in Keras's safe mode: a file that holds Python code (a `Lambda` layer's
    function) is refused, as loading would run it, with a CxrError that says so and what to do."""
    try:
        return keras.saving.load_model(path, compile=False)
    except ValueError as err:
        if "safe_mode" not in str(err):
            raise
        raise CxrError(
            f"{path} was refused by Keras's safe mode: it holds Python code (a Lambda layer's function), "
            "which loading would run. Rebuild the model with registered Layer subclasses instead of Lambda "
            "(docs/extending.md); only for a file you trust, load it yourself with "
            "keras.saving.load_model(path, safe_mode=False)"
        ) from None


def log_model(members: Sequence, spec: ModelSpec, registered_model_name: str | None = None):
    """Log the members and their spec as one pyfunc model in the active run (and register it), named
    after the run (`cxr.tracking.naming.model_name`)."""
    run = mlflow.active_run()  # none: MLflow starts one, and the model keeps MLflow's default name
    name = model_name(run.info.run_name) if run is not None and run.info.run_name else "model"

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=1))
        artifacts = {"spec": str(folder / SPEC_FILE)}
        for i, member in enumerate(members):
            path = folder / f"member_{i}.keras"
            member.save(path)
            artifacts[f"member_{i}"] = str(path)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_code.py")),  # code, not a pickle
            artifacts=artifacts,
            signature=ModelSignature(inputs=Schema([ColSpec("string", IMAGE_COLUMN)])),
            pip_requirements=_requirements(),
            registered_model_name=registered_model_name,
        )


def _requirements() -> list[str]:
    """Pinned, so MLflow does not spend seconds inferring them. cxr itself is not on PyPI: serve with
    `--env-manager local` from an environment where cxr is installed."""
    pins = [f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"]
    for package in backend_packages(keras.backend.backend()):
        pins.append(f"{package}=={metadata.version(package)}")
    return pins


def run_model_uri(run_id: str, client: MlflowClient | None = None) -> str:
    """`runs:/<id>/<name>` of the model that run `run_id` logged (cxr logs one per run; the newest if
    someone logged more)."""
    client = client or MlflowClient()
    run = client.get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise CxrError(
            f"run {run_id} ({run.info.run_name}) logged no model: it ran with tracking.log_model=false, "
            "or was a sweep trial outside the study's best (its tag cxr.model_skipped says so)"
        )
    models = [client.get_logged_model(output.model_id) for output in outputs]
    return f"runs:/{run_id}/{max(models, key=lambda m: m.creation_timestamp).name}"  # the newest


def expand_uri(model_uri: str, client: MlflowClient | None = None) -> str:
    """`runs:/<id>` (the run's own model, whatever its name) as a full `runs:/<id>/<name>`; other URIs
    as they are."""
    short = re.fullmatch(r"runs:/([^/]+)/?", model_uri)
    return run_model_uri(short.group(1), client) if short else model_uri


def load(model_uri: str) -> CxrModel:
    """The CxrModel behind an MLflow model URI (runs:/<id>, runs:/<id>/<name>, models:/name/version,
    models:/name@alias)."""
    try:
        model_uri = expand_uri(model_uri)
        loaded = mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as err:
        raise CxrError(f"cannot load {model_uri}: {err.message}") from None
    model = loaded.unwrap_python_model()
    if not isinstance(model, CxrModel):
        raise CxrError(f"{model_uri} is not a cxr model (it holds {type(model).__name__})")
    return model
