"""Shared fixtures: configs composed through Hydra's compose API against throwaway stores."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from cxr.config import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# A dataset and model small enough that a whole training run takes seconds on a CPU.
TINY = [
    "dataset.image_size=32",
    "dataset.generator.n_patients=80",
    "dataset.generator.resolution=48",
    "dataset.generator.min_prevalence=0.15",
    "model.filters=[8,16]",
    "model.dense_units=16",
    "trainer.epochs=2",
    "trainer.batch_size=32",
    "trainer.verbose=0",
]


def store_overrides(tmp: Path) -> list[str]:
    return [
        f"dataset.root={tmp}/synthetic",
        f"dataset.cache_dir={tmp}/prepared",
        f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db",
        f"tracking.artifact_root={tmp}/mlruns/artifacts",
        f"output_dir={tmp}/output",
    ]


@contextmanager
def hydra_compose():
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            yield lambda overrides=(), **kw: compose("config", overrides=list(overrides), **kw)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> the DictConfig `python -m cxr.train <overrides>` would get.

    compose_cfg(overrides, return_hydra_config=True) also keeps the `hydra` node (sweeper settings)."""
    with hydra_compose() as compose_fn:
        yield compose_fn


_RUN_DIRS = tempfile.TemporaryDirectory(prefix="cxr-test-runs-")  # removed when the session's process ends


def own_run_dir(args) -> list[str]:
    """`args`, with a throwaway `hydra.run.dir` unless they name one: Hydra's run folder (its `.hydra`
    record, the job log) would otherwise pile up under the checkout's `outputs/` with every test."""
    args = list(args)
    # Hydra's flags (-m, --cfg, --info) take no run folder, and argparse takes overrides in one place
    if not any(a.startswith(("hydra.run.dir=", "-")) for a in args):
        args.append(f"hydra.run.dir={tempfile.mkdtemp(dir=_RUN_DIRS.name)}")
    return args


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` from the repository root, as a user types it."""
    command = [sys.executable, "-m", module, *own_run_dir(args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = os.environ.get("CXR_SHARED_DATA")
    if not path:
        pytest.skip("CXR_SHARED_DATA is not set (it points at ../shared/data; .ci/run sets it)")
    return Path(path)


NIH_LABEL_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age"]


def real_nih_release(shared_data: Path, folder: Path) -> Path:
    """An NIH-shaped release of the 19 real sample images (one file each), their real label rows and
    official split: 12 train_val images (10 patients), 7 test; Hernia only in test."""
    import shutil

    import pandas as pd

    samples = pd.read_csv(shared_data / "nih-samples" / "labels.csv").drop_duplicates("Image Index")
    (folder / "images").mkdir(parents=True)
    for path, name in zip(samples["path"], samples["Image Index"], strict=True):
        shutil.copy(shared_data / "nih-samples" / path, folder / "images" / name)
    samples[NIH_LABEL_COLUMNS].to_csv(folder / "Data_Entry_2017.csv", index=False)
    for split, listing in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
        names = samples.loc[samples["official_split"] == split, "Image Index"]
        (folder / listing).write_text("\n".join(names) + "\n")
    return folder


def real_nih_overrides(release: Path, tmp: Path) -> list[str]:
    """A training run on `real_nih_release`: 32 px, a two-block CNN, one epoch, a 30% validation share."""
    return [
        "dataset=nih",
        f"dataset.root={release}",
        f"dataset.cache_dir={tmp}/prepared",
        "dataset.image_size=32",
        "dataset.val_fraction=0.3",
        "model.filters=[4,8]",
        "model.dense_units=8",
        "trainer.epochs=1",
        "trainer.batch_size=4",
        "trainer.verbose=0",
        "evaluation.bootstrap.resamples=20",
        "evaluation.plots=false",
        f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db",
        f"tracking.artifact_root={tmp}/mlruns/artifacts",
        f"output_dir={tmp}/output",
    ]
