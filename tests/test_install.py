"""cxr as users install it: a wheel (`pip install .`) or an editable install, run from another folder.

Installing TensorFlow and the rest into a fresh environment takes minutes and needs the network, so the
fresh virtual environment sees this interpreter's installed packages through a .pth file: its paths only,
none of their .pth files, so this interpreter's own cxr (an editable install of some checkout) stays out.
cxr itself is installed into it from a copy of this source tree, offline and without build isolation
(so this interpreter needs setuptools, and wheel before setuptools 70.1: TensorFlow's dependencies bring
both), and each test checks that the cxr the commands import is that copy's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO

# Build products and local state at the top of a checkout, which a copy of the source leaves out.
NOT_SOURCE = {
    ".git",
    ".venv",
    "build",
    "cxr.egg-info",
    "data",
    "mlruns",
    "outputs",
    "multirun",
    ".pytest_cache",
}


def _copy_source(dst: Path) -> Path:
    def ignore(folder, names):
        top = Path(folder) == REPO
        return [n for n in names if n in ("__pycache__", ".ruff_cache") or (top and n in NOT_SOURCE)]

    shutil.copytree(REPO, dst, symlinks=True, ignore=ignore)
    return dst


@pytest.fixture(scope="module", params=["wheel", "editable"])
def installed(request, tmp_path_factory):
    """(python, environment, expected location of the imported cxr) of a fresh venv with cxr installed."""
    tmp = tmp_path_factory.mktemp(f"install-{request.param}")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(venv_site) / "_cxr_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")

    source = _copy_source(tmp / "src")
    editable = ["-e"] if request.param == "editable" else []
    pip = [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run([*pip, "--ignore-installed", *editable, source], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    expected = source / "cxr" if editable else Path(venv_site) / "cxr"
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return python, env, expected, elsewhere


def _run(installed, *args: str) -> subprocess.CompletedProcess:
    python, env, _, cwd = installed
    return subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True)


def _job(installed, module: str, *overrides: str):
    out = _run(installed, "-m", module, *overrides, "--cfg", "job")
    assert out.returncode == 0, out.stderr[-3000:]
    return OmegaConf.create(out.stdout)


@pytest.mark.slow
def test_the_installed_cxr_is_the_one_imported_and_carries_its_configs(installed):
    _, _, expected, _ = installed
    out = _run(installed, "-c", "import cxr, cxr.config as c; print(cxr.__file__); print(c.CONF_DIR)")
    assert out.returncode == 0, out.stderr[-3000:]
    module, conf = out.stdout.split()
    assert Path(module).parent == expected
    assert (Path(conf) / "config.yaml").is_file() and (Path(conf) / "sweep" / "core.yaml").is_file()


@pytest.mark.slow
def test_installed_commands_compose_their_configs_and_sweeps_from_another_folder(installed):
    assert _job(installed, "cxr.train").model.name == "small_cnn"
    cfg = _job(installed, "cxr.train", "experiment=reference_2025", "+sweep=core")
    assert (cfg.model.name, cfg.dataset.name, cfg.trainer.batch_size) == ("densenet121_cbam", "nih", 16)
    assert _job(installed, "cxr.evaluate", "run_id=abc").run_id == "abc"
    assert _job(installed, "cxr.prepare", "dataset.image_size=32").dataset.image_size == 32

    hydra = _run(installed, "-m", "cxr.train", "+sweep=loss_screen", "--cfg", "hydra")
    assert hydra.returncode == 0, hydra.stderr[-3000:]
    sweeper = OmegaConf.create(hydra.stdout).hydra.sweeper
    assert sweeper._target_.endswith("CxrOptunaSweeper") and sweeper.study_name == "loss_screen"


@pytest.mark.slow
def test_installed_commands_take_the_users_config_folder(installed, tmp_path):
    mine = tmp_path / "mine" / "experiment"
    mine.mkdir(parents=True)
    (mine / "quick.yaml").write_text(
        textwrap.dedent(
            """\
            # @package _global_
            trainer:
              epochs: 1
            """
        )
    )
    cfg = _job(installed, "cxr.train", "--config-dir", str(mine.parent), "experiment=quick")
    assert cfg.trainer.epochs == 1
