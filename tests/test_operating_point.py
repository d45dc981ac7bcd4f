"""Operating points travel with the logged model: `cxr.predict operating_point=spec90` and the served
pyfunc's `params={"operating_point": ...}` call findings at the thresholds validation chose for them."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from cxr.config import PredictConfig
from cxr.predict import run
from cxr.runtime.errors import CxrError
from cxr.serving import pyfunc
from cxr.serving.inference import predict_files
from cxr.tracking import names as mn
from tests.conftest import TINY_MODEL

URI = f"models:/{TINY_MODEL}/1"


@pytest.fixture(scope="module")
def stored(tiny_store, tmp_path_factory):
    """(the tiny store's cfg, a folder of its synthetic images, the run's validation-chosen points)."""
    folder = tmp_path_factory.mktemp("points")
    cfg = tiny_store.copy(folder)
    images = folder / "images"
    images.mkdir()
    for path in sorted(Path(cfg.dataset.root).rglob("*.png"))[:48]:
        shutil.copy(path, images / path.name)
    client = MlflowClient(cfg.tracking.uri)
    document = json.loads(
        Path(client.download_artifacts(tiny_store.run_id, mn.THRESHOLDS_ARTIFACT, str(folder))).read_text()
    )
    return cfg, images, document


def predict(cfg, images: Path, out: Path, point: str | None) -> pd.DataFrame:
    """`cxr.predict model=URI images=FOLDER [operating_point=...]` in this process: its predictions.csv."""
    config = OmegaConf.merge(
        PredictConfig(model_uri=URI, images=str(images), output_dir=str(out), operating_point=point),
        {"tracking": cfg.tracking},
    )
    assert run(config) == 0
    return pd.read_csv(out / "predictions.csv", index_col="image", keep_default_na=False)


def called(table: pd.DataFrame, thresholds: dict[str, float | None]) -> list[str]:
    """Per row, the findings at or above `thresholds` (an undefined one calls nothing)."""
    return [
        "|".join(d for d, t in thresholds.items() if t is not None and row[d] >= t)
        for _, row in table.iterrows()
    ]


def test_spec90_changes_cxr_predicts_findings_to_those_at_the_stored_thresholds(stored, tmp_path):
    cfg, images, document = stored
    spec90 = document["operating_points"]["spec90"]  # chosen on validation by the training run

    default = predict(cfg, images, tmp_path / "default", None)
    at_spec90 = predict(cfg, images, tmp_path / "spec90", "spec90")

    pd.testing.assert_frame_equal(at_spec90.drop(columns="findings"), default.drop(columns="findings"))
    mlflow.set_tracking_uri(cfg.tracking.uri)
    model = pyfunc.load(URI)
    scores = predict_files(model, [str(images / name) for name in default.index]).scores  # unrounded
    probabilities = pd.DataFrame(scores.astype(np.float64), columns=list(model.pathologies))
    assert list(default["findings"]) == called(probabilities, document["thresholds"])
    assert list(at_spec90["findings"]) == called(probabilities, spec90)
    assert list(at_spec90["findings"]) != list(default["findings"])
    assert model.spec.operating_points == document["operating_points"]
    with pytest.raises(
        CxrError, match=r"operating_point='spec99': this model has validation, spec90, spec95"
    ):
        model.thresholds_at("spec99")


def test_the_served_pyfunc_takes_the_point_as_a_param_and_refuses_an_unknown_one(stored):
    cfg, images, document = stored
    mlflow.set_tracking_uri(cfg.tracking.uri)
    served = mlflow.pyfunc.load_model(URI)  # MLflow's own loader, as `mlflow models serve` loads it
    files = sorted(images.iterdir())[:16]
    frame = pd.DataFrame({"image": [base64.b64encode(f.read_bytes()).decode() for f in files]})

    assert "operating_point" in {p.name for p in served.metadata.get_params_schema().params}
    default = served.predict(frame)
    at_sens95 = served.predict(frame, params={"operating_point": "sens95"})

    probabilities = default.drop(columns="findings")
    expected = called(probabilities, document["operating_points"]["sens95"])
    assert ["|".join(f) for f in at_sens95["findings"]] == expected
    assert ["|".join(f) for f in default["findings"]] == called(probabilities, document["thresholds"])
    with pytest.raises(MlflowException, match="operating_point='nope': this model has validation, spec90"):
        served.predict(frame, params={"operating_point": "nope"})
    assert np.allclose(at_sens95.drop(columns="findings"), probabilities)
