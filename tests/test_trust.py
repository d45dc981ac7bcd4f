"""Loading a model runs only code the installed cxr vouches for: a doctored code file among an old-style
model's artifacts is refused unrun, and the user modules a model names are imported only when trusted."""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest

from cxr.runtime.errors import CxrError
from cxr.serving import pyfunc
from cxr.serving.trust import CODE_FILE
from tests.test_pyfunc import NAMES, tiny

pytestmark = pytest.mark.slow  # logs and loads Keras models

PLANT = "cxr_test_planted_module"  # a module that leaves a mark when imported


@pytest.fixture(scope="module")
def module_store(tmp_path_factory) -> Path:
    """One SQLite store for the module (creating one costs seconds)."""
    folder = tmp_path_factory.mktemp("trust")
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    mlflow.set_experiment("trust")
    return folder


@pytest.fixture
def store(module_store, tmp_path, monkeypatch) -> Path:
    """A folder of the test's own, with the module's store as the tracking URI."""
    monkeypatch.delenv("CXR_TRUSTED_IMPORTS", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{module_store}/mlflow.db")
    mlflow.set_experiment("trust")
    return tmp_path


def spec(imports=()) -> pyfunc.ModelSpec:
    return pyfunc.ModelSpec(NAMES, dict.fromkeys(NAMES, 0.5), [32], [1.0], imports=list(imports))


def old_style(folder: Path, code_file: Path) -> str:
    """A model logged as cxr did before its loader module: MLflow's models from code, with `code_file`."""
    model_spec = folder / "cxr_model.json"
    model_spec.write_text(json.dumps(dataclasses.asdict(spec())))
    tiny(32, 0).save(folder / "member_0.keras")
    artifacts = {"spec": str(model_spec), "member_0": str(folder / "member_0.keras")}
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(
            name="model", python_model=str(code_file), artifacts=artifacts, pip_requirements=["mlflow"]
        )
    return f"runs:/{run.info.run_id}/model"


def test_an_old_style_model_loads_only_with_the_code_file_cxr_wrote_which_is_not_run(store):
    mark = store / "ran"
    doctored = store / "pyfunc_code.py"
    doctored.write_text(f"open({str(mark)!r}, 'w').close()\n" + CODE_FILE.read_text())
    uri = _logged(store, doctored)
    mark.unlink(missing_ok=True)  # MLflow runs a models-from-code file when it logs it
    with pytest.raises(CxrError, match="its code file pyfunc_code.py is not one cxr wrote"):
        pyfunc.load(uri)
    assert not mark.exists()  # refused before anything ran

    genuine = pyfunc.load(_logged(store, CODE_FILE))  # as logged by cxr until the loader module
    assert genuine.pathologies == tuple(NAMES) and len(genuine.members) == 1


def _logged(store: Path, code_file: Path) -> str:
    folder = Path(tempfile.mkdtemp(dir=store))
    return old_style(folder, code_file)


def test_user_modules_a_model_names_are_imported_only_when_trusted(store, monkeypatch):
    plant = store / "plant"
    plant.mkdir()
    (plant / f"{PLANT}.py").write_text(f"open({str(store / 'imported')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(plant))
    with mlflow.start_run() as run:
        pyfunc.log_model([tiny(32, 0)], spec(imports=[PLANT]))
    uri = pyfunc.run_model_uri(run.info.run_id)

    with pytest.raises(CxrError) as refused:
        pyfunc.load(uri)
    message = str(refused.value)
    assert message.startswith(f"{uri} imports Python code when it loads ({PLANT})")
    assert "tracking.trusted_imports" in message and "CXR_TRUSTED_IMPORTS" in message and "\n" not in message
    with pytest.raises(
        CxrError, match="imports Python code when it loads"
    ):  # MLflow's own loader: the same rule
        mlflow.pyfunc.load_model(uri)
    assert not (store / "imported").exists() and PLANT not in sys.modules

    assert (
        len(pyfunc.load(uri, trusted_imports=[PLANT]).members) == 1
    )  # cxr commands: tracking.trusted_imports
    assert (store / "imported").exists()
    sys.modules.pop(PLANT)
    monkeypatch.setenv("CXR_TRUSTED_IMPORTS", f"other, {PLANT}")  # where it is served
    served = mlflow.pyfunc.load_model(uri)
    assert served.get_raw_model().spec.imports == [PLANT]
    sys.modules.pop(PLANT)


def test_a_model_index_that_points_outside_its_folder_is_refused(store):
    with mlflow.start_run() as run:
        pyfunc.log_model([tiny(32, 0)], spec())
    uri = pyfunc.run_model_uri(run.info.run_id)
    folder = Path(mlflow.artifacts.download_artifacts(uri))
    index = folder / "data" / "cxr_model" / pyfunc.ARTIFACT_INDEX
    index.write_text(json.dumps({"spec": "../../../../etc/passwd"}))
    with pytest.raises(CxrError, match="names a file outside the model's folder"):
        pyfunc.from_data_folder(index.parent)
