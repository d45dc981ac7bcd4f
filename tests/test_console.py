"""What commands say: the banner, Keras's verbosity off a terminal, a quiet TensorFlow start-up."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cxr.runtime import console
from tests.conftest import REPO


def test_the_banner_says_synthetic_for_the_default_dataset_and_masks_the_store(compose_cfg, tmp_path):
    cfg = compose_cfg(["tracking.uri=postgresql://u:s3cret@db/mlflow", f"output_dir={tmp_path}"])
    line = console.banner("train", cfg)
    assert line.startswith("cxr.train: synthetic data (generated, not X-rays")
    for part in ("64 px", "official split (NIH test list, 15% validation)", "model small_cnn", "loss bce"):
        assert part in line
    assert "store postgresql://u:***@db/mlflow (experiment cxr)" in line


def test_the_banner_names_real_data_and_a_random_split(compose_cfg, tmp_path):
    cfg = compose_cfg(
        ["dataset=nih", "dataset.root=/data/nih", "dataset.split=random", f"output_dir={tmp_path}"]
    )
    assert "nih data at /data/nih, 320 px, random patient split 90/5/5 (seed 0)" in console.banner(
        "train", cfg
    )


def test_keras_shows_a_progress_bar_only_on_a_terminal():
    assert console.fit_verbosity("auto") == 2  # pytest captures stdout: not a terminal
    assert console.fit_verbosity(1) == 1


@pytest.mark.slow  # imports TensorFlow in a fresh process
def test_tensorflow_starts_without_noise_on_a_cpu_machine():
    from cxr.runtime.quiet import has_gpu

    if has_gpu():
        pytest.skip("a GPU machine keeps TensorFlow's start-up messages")
    code = "import cxr, keras, tensorflow as tf; print(int(tf.constant(1) + 1))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "2\n"
    assert out.stderr == ""
