"""bench/train_throughput.py keeps working: it imports only what a JAX-only GPU machine has, its
configs are cxr's defaults, and it runs a tiny CPU measurement on both backends."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from cxr.config import DenseNet121CbamConfig, DynamicBceConfig, OptimizerConfig, SmallCnnConfig

from .conftest import REPO

SCRIPT = REPO / "bench" / "train_throughput.py"
# What a GPU machine with only JAX, Keras, numpy, pandas and h5py lacks.
ABSENT = ["tensorflow", "hydra", "omegaconf", "mlflow", "sklearn", "PIL", "optuna", "tqdm", "yaml", "torch"]


def jax_missing() -> bool:
    return importlib.util.find_spec("jax") is None


def run(args: list[str], backend: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, **kwargs)


def load_bench():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(jax_missing(), reason="jax is not installed")
def test_benchmark_and_data_path_import_without_tensorflow_hydra_mlflow_or_pil():
    script = (
        "import sys, importlib.util\n"
        f"for name in {ABSENT!r}:\n"
        "    sys.modules[name] = None  # `import name` now raises ImportError\n"
        "import cxr, cxr.models, cxr.training.losses, cxr.training.metrics\n"
        "import cxr.data.pipeline, cxr.data.cache\n"
        f"spec = importlib.util.spec_from_file_location('train_throughput', {str(SCRIPT)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print('imported')\n"
    )
    done = run([sys.executable, "-c", script], "jax")
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-3000:]


def test_benchmark_configs_are_the_schema_defaults():
    bench = load_bench()
    schemas = {
        "densenet121_cbam": DenseNet121CbamConfig(weights=None),
        "small_cnn": SmallCnnConfig(),
    }
    for name, schema in schemas.items():
        assert bench.MODELS[name] == OmegaConf.to_container(OmegaConf.structured(schema)), name
    assert OmegaConf.to_container(OmegaConf.structured(DynamicBceConfig())) == bench.LOSS
    optimizer = OmegaConf.to_container(OmegaConf.structured(OptimizerConfig()))
    assert optimizer.pop("name") == "adamw" and optimizer == bench.OPTIMIZER | {
        "schedule": "constant",
        "warmup_epochs": 0,
        "ema": 0.0,
    }


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_train_throughput_runs_a_tiny_measurement_on_cpu(backend, tmp_path):
    if backend == "jax" and jax_missing():
        pytest.skip("jax is not installed")
    args = ["--model", "small_cnn", "--sizes", "32", "--batches", "4", "--precisions", "float32"]
    args += ["mixed_bfloat16", "--steps", "2", "--warmup", "1", "--images", "16", "--cache", str(tmp_path)]
    done = run([sys.executable, str(SCRIPT), *args], backend, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(f"| {backend} |")]
    assert len(rows) == 2, done.stdout
    for row, precision in zip(rows, ["float32", "mixed_bfloat16"], strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2:5] == ["32", "4", precision]
        fed, held, ratio = (float(c.replace(",", "")) for c in cells[5:8])
        assert fed > 0 and held > 0 and ratio > 0
        assert re.fullmatch(r"\d+\.\d\d GiB (RSS|device)", cells[8])
    assert len(list(tmp_path.glob("32px-*/images.npy"))) == 1  # the cache, in cxr.data.cache's format
