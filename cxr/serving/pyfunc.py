"""The model cxr logs and ships: an MLflow pyfunc around one or more Keras members.

MLflow's Keras loader does not import cxr, so a bare Keras model with cxr's layers and losses does
not load in a fresh serving process. This wrapper does: it imports cxr's registered classes, loads
each member in Keras's safe mode, and carries what a prediction needs besides weights: the
pathology names, the validation-chosen thresholds, each member's input size and weight.

A single trained model is an ensemble of one; `cxr.ensemble` logs several members the same way,
so prediction, serving, evaluation and promotion treat both alike.

Served (`mlflow models serve -m models:/NAME@champion`), it takes a DataFrame column `image` of
base64-encoded PNG/JPEG files of any size and mode and returns, per row, one probability column
per pathology and `findings`, the pathologies at or above their thresholds. Each row is decoded and
resized on its own, within the limits of `cxr.serving.limits`; a bad row is a 400 with cxr's message.
"""

from __future__ import annotations

import base64
import binascii
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
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc.model import PythonModelContext
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import cxr.models  # noqa: F401  (these three register the custom classes the saved members refer to)
import cxr.training.losses  # noqa: F401
import cxr.training.metrics  # noqa: F401
from cxr.data.images import resize
from cxr.data.tta import Views
from cxr.data.untrusted_images import MAX_IMAGE_PIXELS, check_pixels, decode_grey, image_header
from cxr.runtime.errors import CxrError
from cxr.serving.calibrators import apply_calibration
from cxr.serving.forward import forward_views
from cxr.serving.limits import Deadline, RequestLimits, decode_slots, served_limits
from cxr.serving.trust import check_code_file, import_trusted
from cxr.tracking.naming import model_name
from cxr.training.backend import backend_packages

SPEC_FILE = "cxr_model.json"
ARTIFACT_INDEX = "artifacts.json"  # {artifact name: file name} in the model's data folder
LOADER_MODULE = "cxr.serving.loader"  # what MLflow imports to load a cxr model (the installed one)
TRUSTED_IMPORTS_KEY = "trusted_imports"  # in the load context's model_config
IMAGE_COLUMN = "image"
FINDINGS_COLUMN = "findings"
DEFAULT_POINT = "validation"  # the spec's own thresholds (Youden/F1 on validation): what findings use unasked
POINT_PARAM = "operating_point"  # the served pyfunc's `params` entry that names another point
DECODING = decode_slots()  # full-size decodes at once, across the server's concurrent requests


class InvalidRequest(MlflowException, CxrError):
    """A request's own fault: MLflow's scoring server answers 400 with this message and no stack trace;
    cxr's commands, which catch CxrError, print it as one line."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


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
    # {name: {finding: threshold}}: operating points at a target (spec90, sens95, ...), chosen on validation
    operating_points: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # the test-time views it was evaluated with (cxr.data.tta.Views.spec), so it predicts with them too:
    # its calibrator and thresholds were chosen on those mean scores; empty: none (every older model)
    tta: dict = field(default_factory=dict)


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
        # a model built by the user's own code (a `_target_` option) imports it, if it is trusted
        trusted = (context.model_config or {}).get(TRUSTED_IMPORTS_KEY, [])
        import_trusted(self.spec.imports, trusted, "the model")
        self.members = [
            load_keras(context.artifacts[f"member_{i}"]) for i in range(len(self.spec.image_sizes))
        ]

    # ------------------------------------------------------------------ numbers
    @property
    def pathologies(self) -> tuple[str, ...]:
        return tuple(self.spec.pathologies)

    @property
    def thresholds(self) -> np.ndarray:
        return self.thresholds_at(None)

    @property
    def operating_points(self) -> list[str]:
        """The names `operating_point=` takes: the default, then the spec's points at a target."""
        return [DEFAULT_POINT, *self.spec.operating_points]

    def thresholds_at(self, point: str | None) -> np.ndarray:
        """One threshold per pathology (NaN: undefined) at the named operating point; None: the default.
        An unknown name is a CxrError that lists the model's points."""
        if point in (None, DEFAULT_POINT):
            chosen = self.spec.thresholds
        elif point in self.spec.operating_points:
            chosen = self.spec.operating_points[point]
        else:
            raise CxrError(f"operating_point={point!r}: this model has {', '.join(self.operating_points)}")
        values = [chosen.get(p) for p in self.pathologies]
        return np.array([np.nan if v is None else v for v in values], np.float64)

    @property
    def views(self) -> Views:
        """The test-time views every member's probabilities are averaged over (the spec's `tta`)."""
        return Views.of(self.spec.tta)

    def combine(self, member_scores: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities from each member's (N, pathologies) probabilities."""
        mean = np.tensordot(np.asarray(self.spec.weights), np.stack(member_scores), axes=1).astype(np.float32)
        return apply_calibration(mean, self.spec.calibration, self.spec.pathologies)

    def resized(self, pixels: np.ndarray) -> dict[int, np.ndarray]:
        """A grey image at every member's input size (once per size, however many members share it)."""
        return {size: resize(pixels, size) for size in set(self.spec.image_sizes)}

    def decoded(self, data: bytes, where: str, max_pixels: int = MAX_IMAGE_PIXELS) -> dict[int, np.ndarray]:
        """Untrusted image bytes (`cxr.data.untrusted_images.decode_grey`) at every member's input size;
        only one image is held at full size at a time (DECODING bounds them across threads)."""
        with DECODING:
            return self.resized(decode_grey(data, where, max_pixels, side=max(self.spec.image_sizes)))

    def score(
        self, inputs: Sequence[dict[int, np.ndarray]], batch_size: int = 32, deadline: Deadline | None = None
    ) -> np.ndarray:
        """(N, pathologies) for images already at every member's size (`resized`, `decoded`)."""
        if not len(inputs):
            return np.empty((0, len(self.pathologies)), np.float32)
        per_member: list[list[np.ndarray]] = [[] for _ in self.members]
        views = self.views
        for start in range(0, len(inputs), batch_size):
            if deadline is not None:
                deadline.check(f"before scoring from image {start + 1} of {len(inputs)}")
            chunk = inputs[start : start + batch_size]
            batches = {size: np.stack([i[size] for i in chunk])[..., None] for size in chunk[0]}
            for scores, member, size in zip(per_member, self.members, self.spec.image_sizes, strict=True):
                scores.append(forward_views(member, batches[size], views))  # traced once per member
        return self.combine([np.concatenate(scores) for scores in per_member])

    def probabilities(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(N, pathologies) for grey uint8 images of any size: each member sees them at its own size."""
        return self.score([self.resized(img) for img in images], batch_size)

    def findings(self, scores: np.ndarray, point: str | None = None) -> list[list[str]]:
        """Per row, the pathologies at or above their validation-chosen thresholds at operating `point`."""
        thresholds = self.thresholds_at(point)
        with np.errstate(invalid="ignore"):
            positive = scores >= thresholds[None, :]  # an undefined threshold calls nothing
        return [[p for p, hit in zip(self.pathologies, row, strict=True) if hit] for row in positive]

    # ------------------------------------------------------------------ pyfunc
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """A request's probabilities and findings; `params={"operating_point": "spec90"}` picks the
        thresholds (checked before any row is decoded)."""
        try:
            point = (params or {}).get(POINT_PARAM)
            self.thresholds_at(point)
            scores = self.request_scores(model_input, served_limits())
            findings = self.findings(scores, point)
        except CxrError as err:
            raise InvalidRequest(str(err)) from None
        out = pd.DataFrame(scores.astype(np.float64), columns=list(self.pathologies))
        out[FINDINGS_COLUMN] = findings
        return out

    def request_scores(self, frame: pd.DataFrame, limits: RequestLimits) -> np.ndarray:
        """A request's probabilities: every row's header checked first (format, trailing data, pixels per
        image and in all), then each row decoded and resized on its own, within `limits.seconds`."""
        deadline = Deadline(limits.seconds)
        if IMAGE_COLUMN not in frame:
            raise CxrError(f"input needs a column {IMAGE_COLUMN!r} of base64-encoded PNG/JPEG files")
        files = [_base64(value, row) for row, value in enumerate(frame[IMAGE_COLUMN])]
        total = 0
        for row, data in enumerate(files):
            header = image_header(data, _where(row))
            check_pixels(header, _where(row), limits.max_image_pixels)
            total += header.pixels
        if total > limits.max_request_pixels:
            raise CxrError(
                f"the request's {len(files)} images hold {total:,} pixels, over the limit of "
                f"{limits.max_request_pixels:,} a request (CXR_MAX_REQUEST_PIXELS): send fewer per request"
            )
        inputs = []
        for row, data in enumerate(files):
            deadline.check(f"before row {row} was decoded")
            inputs.append(self.decoded(data, _where(row), limits.max_image_pixels))
        return self.score(inputs, deadline=deadline)


def _where(row: int) -> str:
    return f"row {row} of column {IMAGE_COLUMN!r}"


def _base64(value, row: int) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return base64.b64decode(str(value), validate=True)
    except binascii.Error as err:
        raise CxrError(f"{_where(row)} is not a base64-encoded image: {err}") from None


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
        folder = Path(tmp) / "cxr_model"
        folder.mkdir()
        (folder / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=1))
        artifacts = {"spec": str(folder / SPEC_FILE)}
        for i, member in enumerate(members):
            path = folder / f"member_{i}.keras"
            member.save(path)
            artifacts[f"member_{i}"] = str(path)
        index = {artifact: Path(path).name for artifact, path in artifacts.items()}
        (folder / ARTIFACT_INDEX).write_text(json.dumps(index, indent=1))
        return mlflow.pyfunc.log_model(
            name=name,
            loader_module=LOADER_MODULE,  # the installed cxr loads it: no code among the artifacts
            data_path=str(folder),
            signature=ModelSignature(
                inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
                params=ParamSchema([ParamSpec(POINT_PARAM, "string", DEFAULT_POINT)]),
            ),
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


def from_artifacts(artifacts: dict[str, str], trusted_imports: Sequence[str] = ()) -> CxrModel:
    """A CxrModel from its artifact files ({name: local path}), read as data."""
    model = CxrModel()
    model.load_context(PythonModelContext(artifacts, {TRUSTED_IMPORTS_KEY: list(trusted_imports)}))
    return model


def from_data_folder(folder: Path, trusted_imports: Sequence[str] = ()) -> CxrModel:
    """A CxrModel from the data folder `log_model` stores (its files named by ARTIFACT_INDEX)."""
    index = json.loads((folder / ARTIFACT_INDEX).read_text())
    return from_artifacts({a: str(_inside(folder, name)) for a, name in index.items()}, trusted_imports)


def _inside(folder: Path, relative: str) -> Path:
    """`folder / relative`, refused if it would lead outside `folder` (a doctored MLmodel or index)."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise CxrError(f"{relative!r} names a file outside the model's folder {folder}")
    return path


def _from_logged(folder: Path, where: str, trusted_imports: Sequence[str]) -> CxrModel:
    """The CxrModel in a downloaded model folder, whatever cxr version logged it, running none of its code:
    the loader module's data folder; or, for models logged before it (MLflow's python_model flavour: a
    code file cxr wrote, or an older pickle, neither of which is run here), their artifact files."""
    conf = Model.load(folder / "MLmodel").flavors.get("python_function", {})
    if conf.get("loader_module") == LOADER_MODULE:
        return from_data_folder(_inside(folder, conf["data"]), trusted_imports)
    if "artifacts" in conf and ("model_code_path" in conf or "python_model" in conf):
        if "model_code_path" in conf:
            check_code_file(_inside(folder, Path(conf["model_code_path"]).name), where)
        artifacts = {a: str(_inside(folder, entry["path"])) for a, entry in conf["artifacts"].items()}
        if "spec" in artifacts:
            return from_artifacts(artifacts, trusted_imports)
    raise CxrError(f"{where} is not a cxr model (its MLmodel names no cxr loader)")


def load(model_uri: str, trusted_imports: Sequence[str] = ()) -> CxrModel:
    """The CxrModel behind an MLflow model URI (runs:/<id>, runs:/<id>/<name>, models:/name/version,
    models:/name@alias), read as data by the installed cxr (`cxr.serving.trust`); `trusted_imports`:
    user modules it may import (besides CXR_TRUSTED_IMPORTS)."""
    try:
        model_uri = expand_uri(model_uri)
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except MlflowException as err:
        raise CxrError(f"cannot load {model_uri}: {err.message}") from None
    try:
        return _from_logged(folder, model_uri, trusted_imports)
    except CxrError as err:
        raise CxrError(str(err).replace("the model", model_uri, 1)) from None
