"""cxr's pyfunc: members at their own sizes, weighted mean, thresholds, base64 input, fresh-process load."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from cxr.config import SmallCnnConfig
from cxr.data.images import resize
from cxr.models import build_model
from cxr.runtime.errors import CxrError
from cxr.serving.pyfunc import CxrModel, ModelSpec, log_model, run_model_uri

NAMES = ["Atelectasis", "Effusion", "Mass"]

pytestmark = pytest.mark.backend  # serving: members predict on the running backend


def tiny(size: int, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return build_model(OmegaConf.structured(SmallCnnConfig(filters=[4], dense_units=8)), size, len(NAMES))


@pytest.fixture(scope="module")
def members():
    return [tiny(32, 0), tiny(48, 1)]


@pytest.fixture(scope="module")
def ensemble(members):
    spec = ModelSpec(NAMES, {"Atelectasis": 0.5, "Effusion": 0.0, "Mass": None}, [32, 48], [0.25, 0.75])
    return CxrModel.of(members, spec)


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (100, 80), dtype=np.uint8), rng.integers(0, 256, (64, 64), dtype=np.uint8)]


def png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_probabilities_are_the_weighted_mean_of_members_at_their_own_sizes(members, ensemble):
    pictures = images()
    got = ensemble.probabilities(pictures)
    each = [
        m.predict(np.stack([resize(p, s) for p in pictures])[..., None], verbose=0)
        for m, s in zip(members, (32, 48), strict=True)
    ]
    np.testing.assert_allclose(got, 0.25 * each[0] + 0.75 * each[1], rtol=1e-5, atol=1e-6)


def test_findings_use_the_stored_thresholds_and_an_undefined_one_calls_nothing(ensemble):
    scores = np.array([[0.6, 0.1, 1.0], [0.4, 0.0, 1.0]])
    assert ensemble.findings(scores) == [["Atelectasis", "Effusion"], ["Effusion"]]


def test_base64_frames_in_and_out_and_a_bad_row_is_named(ensemble):
    frame = pd.DataFrame({"image": [png_base64(p) for p in images()]})
    out = ensemble.predict(None, frame)
    assert list(out.columns) == [*NAMES, "findings"] and len(out) == 2
    np.testing.assert_allclose(out[NAMES].to_numpy(), ensemble.probabilities(images()), rtol=1e-6)
    with pytest.raises(CxrError, match="row 1 of column 'image': not a readable image: its content is"):
        ensemble.predict(None, pd.DataFrame({"image": [frame["image"][0], "bm90IGFuIGltYWdl"]}))
    with pytest.raises(CxrError, match="row 0 of column 'image' is not a base64-encoded image"):
        ensemble.predict(None, pd.DataFrame({"image": ["not base64!"]}))
    with pytest.raises(CxrError, match="needs a column 'image'"):
        ensemble.predict(None, pd.DataFrame({"picture": ["x"]}))


@pytest.mark.slow
def test_a_logged_model_loads_in_a_fresh_process_and_reproduces(ensemble, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("pyfunc", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment, run_name="top5-ensemble.v2") as run:
        log_model(ensemble.members, ensemble.spec)
    model_uri = run_model_uri(run.info.run_id)
    assert model_uri == f"runs:/{run.info.run_id}/top5-ensemble_v2"  # named after its run, as MLflow allows
    stored = {
        p.name
        for p in Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "m"))).rglob("*")
    }
    assert not [n for n in stored if n.endswith((".py", ".pkl"))]  # no code, no pickle: data only
    mlmodel = mlflow.models.Model.load(model_uri).flavors["python_function"]
    assert mlmodel["loader_module"] == "cxr.serving.loader"  # the installed cxr loads it
    frame = pd.DataFrame({"image": [png_base64(p) for p in images()]})
    frame.to_json(tmp_path / "input.json", orient="split")
    script = (
        "import json, sys, mlflow, pandas as pd; mlflow.set_tracking_uri(sys.argv[1]);"
        "m = mlflow.pyfunc.load_model(sys.argv[2]);"
        "out = m.predict(pd.read_json(sys.argv[3], orient='split'));"
        "print(json.dumps(out.to_dict(orient='list')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, uri, model_uri, str(tmp_path / "input.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # a fresh process, away from the source tree
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(
        np.array([out[n] for n in NAMES]).T, ensemble.probabilities(images()), rtol=1e-5
    )
    assert out["findings"] == ensemble.findings(ensemble.probabilities(images()))
