"""`cxr.predict`'s paths: each one that cannot be used is one line, checked before the model loads;
anything that is not a regular file is left out of a folder, and named when given, never read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxr.runtime.errors import CxrError
from cxr.serving.image_files import collect_images, read_regular_file
from tests.conftest import run_cli

LONG = "x" * 300 + ".png"  # longer than a file name may be: examining it fails, even as root


def test_fifos_are_left_out_of_a_folder_and_named_when_given_and_bad_paths_are_one_line_each(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not checked here")
    os.mkfifo(folder / "pipe.png")  # reading it would block forever
    (folder / "sub.png").mkdir()
    given = [
        str(folder),
        str(folder / "pipe.png"),
        LONG,
        str(tmp_path / "gone.png"),
        str(folder / "a.png/b.png"),
    ]

    files, failures, was_folder = collect_images(given)

    assert files == [str(folder / "a.png")] and was_folder
    assert failures == {
        str(
            folder / "pipe.png"
        ): f"{folder / 'pipe.png'}: not a regular file (a FIFO, socket or device): give an image file",
        LONG: f"{LONG}: cannot be examined (File name too long)",
        str(tmp_path / "gone.png"): f"{tmp_path / 'gone.png'}: no such file or folder",
        str(folder / "a.png/b.png"): f"{folder / 'a.png/b.png'}: no such file or folder",
    }
    with pytest.raises(CxrError, match="not a regular file"):  # swapped in after the check: still not read
        read_regular_file(str(folder / "pipe.png"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may list and read any folder")
def test_a_folder_it_may_not_list_and_a_file_under_one_are_one_line_each(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "a.png").write_bytes(b"x")
    locked.chmod(0)
    try:
        files, failures, _ = collect_images([str(locked), str(locked / "a.png")])
    finally:
        locked.chmod(0o755)
    assert files == []
    assert failures[str(locked)] == f"{locked}: cannot be examined (Permission denied)"
    assert failures[str(locked / "a.png")] == f"{locked / 'a.png'}: cannot be examined (Permission denied)"


@pytest.mark.slow  # the command in a fresh process
def test_bad_paths_are_reported_before_the_model_is_loaded(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    pipe = folder / "pipe.png"
    os.mkfifo(pipe)
    out = run_cli(
        "cxr.predict",
        "model=models:/no-such-model/1",  # never reached: the paths are checked first
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"images=[{folder},{pipe},{tmp_path / 'gone.png'},{LONG}]",
        f"output_dir={tmp_path}/out",
    )
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("cxr: error:")]
    assert lines == [
        f"cxr: error: {folder}: no PNG or JPEG files in this folder",
        f"cxr: error: {pipe}: not a regular file (a FIFO, socket or device): give an image file",
        f"cxr: error: {tmp_path / 'gone.png'}: no such file or folder",
        f"cxr: error: {LONG}: cannot be examined (File name too long)",
    ]
    assert "Traceback" not in out.stderr and "no-such-model" not in out.stderr
    assert not Path(tmp_path / "mlflow.db").exists()  # nothing touched the store
