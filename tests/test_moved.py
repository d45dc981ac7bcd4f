"""Models and runs logged before the departments (issue 19) still load, evaluate, ensemble and serve.

The release before the move (commit RELEASE, where `cxr.pyfunc` was a module at the top of the
package) trains and registers two tiny versions in a real store, run from its own source tree with
`git archive`; today's commands then use that store. The logged models' code file says
`from cxr.pyfunc import CxrModel`: `cxr.runtime.moved` must keep that name importable.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from cxr.tracking import names as mn
from tests.conftest import REPO, TINY, run_cli, store_overrides

pytestmark = pytest.mark.slow

RELEASE = "1cacf37"  # the last commit with the flat layout (cxr/pyfunc.py, cxr/tracking.py, ...)
NAME = "legacy"


def release_tree(folder: Path) -> Path:
    """The release's cxr/, conf/, sweeps/ and hydra_plugins/, as `git archive` writes them."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", RELEASE, "cxr", "conf", "sweeps", "hydra_plugins"],
        capture_output=True,
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {RELEASE} is not in this checkout's history (a shallow clone?)")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "tar_filter"):  # Python 3.12, and the 3.10/3.11 security releases
            tar.extractall(folder, filter="tar")
        else:
            tar.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def legacy_store(tmp_path_factory) -> Path:
    """A store with versions 1 and 2 of `legacy`, trained and registered by the release's code."""
    tmp = tmp_path_factory.mktemp("legacy")
    old = release_tree(tmp / "release")
    env = {**os.environ, "PYTHONPATH": str(old)}  # before site-packages: the release's cxr, not today's
    for seed in (0, 1):
        known = [a for a in TINY if not a.startswith("evaluation.localisation")]  # keys the release lacks
        args = [*known, *store_overrides(tmp), f"tracking.registered_model_name={NAME}", f"seed={seed}"]
        args += ["trainer.epochs=1", "evaluation.bootstrap.resamples=20", "evaluation.plots=false"]  # cheap
        args.append(f"hydra.run.dir={tmp}/hydra-{seed}")
        out = subprocess.run(
            [sys.executable, "-m", "cxr.train", *args], cwd=old, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-3000:]
    code = subprocess.run(
        [sys.executable, "-c", "import cxr.pyfunc, pathlib; print(pathlib.Path(cxr.pyfunc.__file__))"],
        cwd=old,
        env=env,
        capture_output=True,
        text=True,
    )
    assert Path(code.stdout.strip()) == old / "cxr" / "pyfunc.py"  # it was the release's code that logged
    return tmp


def store_args(tmp: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db"]


def png_base64(side: int, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_logged_code_names_the_old_module_and_loads_in_a_fresh_process_as_served(legacy_store):
    """What `mlflow models serve` does with the champion: load the pyfunc by URI, predict base64 rows."""
    client = MlflowClient(f"sqlite:///{legacy_store}/mlruns/mlflow.db")
    version = client.get_model_version(NAME, "1")
    code_files = list((legacy_store / "mlruns" / "artifacts").rglob("pyfunc_code.py"))
    assert code_files and all("from cxr.pyfunc import CxrModel" in f.read_text() for f in code_files)
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "model = mlflow.pyfunc.load_model(sys.argv[2])\n"
        "out = model.predict(pd.DataFrame({'image': json.loads(sys.argv[3])}))\n"
        "kind = type(model.unwrap_python_model()).__module__\n"
        "print(json.dumps({'columns': list(out.columns), 'rows': len(out), 'module': kind}))\n"
    )
    images = json.dumps([png_base64(64, 0), png_base64(40, 1)])
    out = subprocess.run(
        [sys.executable, "-c", script, client.tracking_uri, f"models:/{NAME}/{version.version}", images],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == 2 and result["module"] == "cxr.serving.pyfunc"
    assert "findings" in result["columns"] and len(result["columns"]) == 15  # 14 findings + findings


def test_a_run_logged_before_the_move_evaluates_again(legacy_store):
    client = MlflowClient(f"sqlite:///{legacy_store}/mlruns/mlflow.db")
    run_id = client.get_model_version(NAME, "1").run_id
    before = client.get_run(run_id).data.metrics
    out = run_cli(
        "cxr.evaluate",
        *store_args(legacy_store),
        f"model_uri=models:/{NAME}/1",
        "split=test",
        "evaluation.plots=false",
        f"hydra.run.dir={legacy_store}/hydra-evaluate",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.data.tags[mn.REEVALUATED_TAG] == f"models:/{NAME}/1"
    rank = mn.RANK
    assert run.data.metrics[rank] == pytest.approx(before[rank])  # same model, same logged split


def test_versions_logged_before_the_move_make_an_ensemble_that_serves(legacy_store):
    client = MlflowClient(f"sqlite:///{legacy_store}/mlruns/mlflow.db")
    out = run_cli(
        "cxr.ensemble",
        *store_args(legacy_store),
        f"model_name={NAME}",
        "top_k=2",
        "evaluation.plots=false",
        "evaluation.bootstrap.resamples=20",
        f"hydra.run.dir={legacy_store}/hydra-ensemble",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ensemble = client.get_model_version(NAME, "3")
    assert ensemble.tags[mn.MODEL_KIND_TAG] == "ensemble"
    assert sorted(ensemble.tags[mn.MEMBERS_VERSION_TAG].split(",")) == [f"{NAME}/1", f"{NAME}/2"]
    folder = legacy_store / "images"
    folder.mkdir()
    for i in range(2):
        (folder / f"x{i}.png").write_bytes(base64.b64decode(png_base64(48, i)))
    predicted = run_cli(
        "cxr.predict",
        *store_args(legacy_store),
        f"model=models:/{NAME}/3",
        f"images={folder}",
        f"output_dir={legacy_store}/predicted",
        f"hydra.run.dir={legacy_store}/hydra-predict",
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert (legacy_store / "predicted" / "predictions.csv").read_text().count("\n") == 3  # header + 2
