"""bench/real_data.py, shortened: cxr's commands and the classical baselines on the real nih-dev
images, end to end (issue 20). The full benchmark's figures are in bench/README.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .conftest import REPO

SHORT = [
    "--size",
    "32",
    "--seeds",
    "0",
    "--epochs",
    "1",
    "--no-defaults",
    "--resamples",
    "20",
    "--folds",
    "2",
]
SHORT += ["--set", "model.filters=[8,16]", "model.dense_units=8", "trainer.optimizer.warmup_epochs=0"]


@pytest.mark.slow
def test_benchmark_runs_prepare_train_and_ensemble_on_real_images(shared_data, tmp_path):
    if not (shared_data / "nih-dev" / "labels.csv").is_file():
        pytest.skip(f"{shared_data}/nih-dev is missing")
    command = [sys.executable, str(REPO / "bench" / "real_data.py"), *SHORT, "--work", str(tmp_path)]
    env = {**os.environ, "CXR_SHARED_DATA": str(shared_data), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    rows = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"^\| ([^|]+?) \| \d+ \| ([0-9.]+)", out, re.M)
    }
    assert set(rows) == {
        "pixel PCA + logistic",
        "HOG + logistic",
        "experiment=nih_cpu",
        "nih_cpu top-5 ensemble",
        "nih_cpu, 2 fold models",
        "nih_cpu 2-fold ensemble",
    }
    assert all(0.3 < auc < 0.9 for auc in rows.values()), rows
    assert re.search(r"^\| \*\*mean\*\* \|", out, re.M), out
    assert not list((tmp_path / "release" / "images").glob("*.png"))[0].resolve().is_relative_to(REPO)
