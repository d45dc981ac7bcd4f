"""Shared fixtures: configs composed through Hydra's compose API against throwaway stores."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    "evaluation.localisation.enabled=false",  # seconds a run; `tiny_store` and re-evaluations score it
]


def store_overrides(tmp: Path, data: Path | None = None) -> list[str]:
    """Everything a run writes under `tmp`; its dataset and cache under `data` (`tiny_data`) if given."""
    return [
        *data_overrides(data or tmp),
        f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db",
        f"tracking.artifact_root={tmp}/mlruns/artifacts",
        f"output_dir={tmp}/output",
    ]


def data_overrides(root: Path) -> list[str]:
    """A dataset generated into `root` and its image cache beside it (the `tiny_data` fixture's folder)."""
    return [f"dataset.root={root}/synthetic", f"dataset.cache_dir={root}/prepared"]


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


# ---------------------------------------------------------------- train once, test many times
# A training run costs seconds; each session pays for the shared ones below once. Tests that only read
# them take the fixture; tests that change a store (re-evaluation, new versions, aliases, tags) take a
# copy of it of their own (`TinyStore.copy`), so no test's outcome depends on which tests ran before.


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """One folder for TINY's synthetic set and its image cache (`data_overrides`), generated by the first
    run that names it and only read after: dataset and cache are keyed by their settings and locked."""
    return tmp_path_factory.mktemp("tiny-data")


TINY_MODEL = "cxr-tiny"  # the registered model of the `tiny_store` run
TINY_RUN = [
    "evaluation.localisation.enabled=auto",  # the one tiny training run that scores localisation
    "loss=dynamic_bce",
    "optimized_metric=val/auprc_mean",
    f"tracking.registered_model_name={TINY_MODEL}",
]


@dataclass(frozen=True)
class TinyStore:
    """A real SQLite MLflow store holding one finished tiny `cxr.train` run, registered as TINY_MODEL
    version 1; `objective` is what `train()` returned."""

    cfg: object  # the run's composed DictConfig
    run_id: str
    objective: float

    def copy(self, folder: Path):
        """The store copied into `folder` (database and artifacts, every absolute location in the database
        moved with them, so what a test writes there stays there); returns the run's cfg pointing at it."""
        from omegaconf import OmegaConf

        source = Path(self.cfg.tracking.artifact_root).parent
        copy_store(source, folder / "mlruns")
        cfg = OmegaConf.create(OmegaConf.to_container(self.cfg))
        cfg.tracking.uri = f"sqlite:///{folder}/mlruns/mlflow.db"
        cfg.tracking.artifact_root = f"{folder}/mlruns/artifacts"
        cfg.output_dir = f"{folder}/output"
        return cfg


def copy_store(source: Path, target: Path) -> None:
    """MLflow keeps absolute artifact locations (experiments, runs, logged models, model versions): the
    copy's database gets the copy's folder wherever it named the source's."""
    shutil.copytree(source, target)
    old, new = str(source), str(target)
    with closing(sqlite3.connect(target / "mlflow.db")) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                if any(word in kind.upper() for word in ("CHAR", "TEXT", "CLOB")):
                    db.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                        f'WHERE instr("{column}", ?) > 0',
                        (old, new, old),
                    )
        db.commit()


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_data) -> TinyStore:
    """One tiny training run through `cxr.train.train` (loss=dynamic_bce, optimized on val/auprc_mean,
    registered), in a store no test changes: read it, or `copy` it first."""
    from mlflow.tracking import MlflowClient

    from cxr.train import train

    tmp = tmp_path_factory.mktemp("tiny-store")
    with hydra_compose() as compose_fn:
        cfg = compose_fn([*TINY, *store_overrides(tmp, tiny_data), *TINY_RUN])
    objective = train(cfg, ["loss=dynamic_bce"])
    client = MlflowClient(cfg.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment_name).experiment_id])
    return TinyStore(cfg, run.info.run_id, objective)


# ---------------------------------------------------------------- one run on the real sample images
@pytest.fixture(scope="session")
def real_release(shared_data, tmp_path_factory) -> Path:
    """`real_nih_release` in a folder of the session's; `real_nih_overrides(release, release.parent)`
    share one image cache."""
    return real_nih_release(shared_data, tmp_path_factory.mktemp("real") / "release")


@dataclass(frozen=True)
class RealRun:
    out: subprocess.CompletedProcess
    uri: str  # MLFLOW_TRACKING_URI: the store, away from the folder the command ran in
    store: Path
    elsewhere: Path  # the working directory of the command


@pytest.fixture(scope="session")
def real_run(real_release, tmp_path_factory) -> RealRun:
    """`python -m cxr.train` on the real release (`real_nih_overrides` without tracking.*), started in
    another folder with MLFLOW_TRACKING_URI set: the store and its artifacts are the variable's."""
    tmp = tmp_path_factory.mktemp("real-run")
    store, elsewhere = tmp / "store", tmp / "elsewhere"
    elsewhere.mkdir()
    overrides = [
        o for o in real_nih_overrides(real_release, real_release.parent) if not o.startswith("tracking.")
    ]
    uri = f"sqlite:///{store}/mlflow.db"
    out = subprocess.run(
        [sys.executable, "-m", "cxr.train", *own_run_dir(overrides)],
        cwd=elsewhere,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
    )
    return RealRun(out, uri, store, elsewhere)


def load_resized(path: str | os.PathLike, size: int) -> np.ndarray:
    """A file -> size x size uint8 grey, as the training cache stores it (cxr.data.images' two steps)."""
    from cxr.data.images import read_grey, resize

    return resize(read_grey(path), size)
