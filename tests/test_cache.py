"""The image cache under concurrency and change: real processes racing on one fresh cache behind a
barrier, real files replaced, repaired, oversized or 16-bit."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.config import SyntheticGeneratorConfig
from cxr.data import cache
from cxr.data.synthetic import ensure_dataset
from tests.conftest import REPO, run_cli

SIZE = 24


@pytest.fixture(scope="module")
def synthetic_paths(tmp_path_factory) -> list[str]:
    folder = ensure_dataset(
        SyntheticGeneratorConfig(n_patients=120, resolution=48), tmp_path_factory.mktemp("syn") / "syn"
    )
    return sorted(str(p) for p in (folder / "images").iterdir())


def _prepare_behind(barrier, paths: list[str], cache_dir: str, results) -> None:
    """One competitor: wait for all, prepare; report whether it waited, the pixels' digest, black rows."""
    err = io.StringIO()
    barrier.wait()
    with contextlib.redirect_stderr(err):
        images = cache.prepare_images(paths, SIZE, cache_dir, workers=1).images
    digest = hashlib.sha256(np.ascontiguousarray(images)).hexdigest()
    black = int((images.reshape(len(images), -1).max(axis=1) == 0).sum())
    results.put(("waiting for another process preparing" in err.getvalue(), digest, black))


def test_concurrent_prepares_on_one_fresh_cache_lose_no_image(synthetic_paths, tmp_path):
    n = 4
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_prepare_behind, args=(barrier, synthetic_paths, str(tmp_path / "cache"), results))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * n  # every process succeeded
    outcomes = [results.get(timeout=10) for _ in procs]
    single = cache.prepare_images(synthetic_paths, SIZE, tmp_path / "single", workers=1).images
    digest = hashlib.sha256(np.ascontiguousarray(single)).hexdigest()
    assert [o[1] for o in outcomes] == [digest] * n  # pixel-identical to a single-process build
    assert [o[2] for o in outcomes] == [0] * n  # no row blacked out
    assert sum(o[0] for o in outcomes) >= 1  # the race was real: someone found the cache being built


JOBLIB_PREPARE = """
import hashlib, sys
import numpy as np
from joblib import Parallel, delayed
from cxr.data import cache

def digest(paths, cache_dir):
    images = cache.prepare_images(paths, {size}, cache_dir, workers=2).images
    return hashlib.sha256(np.ascontiguousarray(images)).hexdigest()

if __name__ == "__main__":
    paths, folder = sys.argv[1].split(","), sys.argv[2]
    jobs = (delayed(digest)(paths, f"{{folder}}/cache{{i}}") for i in range(2))
    print(*Parallel(n_jobs=2, timeout=90)(jobs))
"""


def test_a_prepare_inside_a_joblib_worker_finishes(synthetic_paths, tmp_path):
    """A joblib multirun's trial prepares a fresh cache in a loky worker, where a spawned Pool's children
    inherit the start method 'loky', cannot set it and the pool waits for ever: it builds in-process."""
    assert len(synthetic_paths) >= cache.MIN_PARALLEL  # enough files to ask for worker processes
    script = tmp_path / "joblib_prepare.py"
    script.write_text(JOBLIB_PREPARE.format(size=SIZE))
    out = subprocess.run(
        [sys.executable, str(script), ",".join(synthetic_paths), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    single = cache.prepare_images(synthetic_paths, SIZE, tmp_path / "single", workers=1).images
    assert out.stdout.split() == [hashlib.sha256(np.ascontiguousarray(single)).hexdigest()] * 2


def test_a_build_killed_with_sigkill_releases_the_lock_and_resumes(synthetic_paths, tmp_path):
    paths_file = tmp_path / "paths.json"
    paths_file.write_text(json.dumps(synthetic_paths))
    code = (
        "import json, sys; from cxr.data import cache; cache.CHUNK = 32; "  # checkpoints early, kill mid-way
        "cache.prepare_images(json.loads(open(sys.argv[1]).read()), int(sys.argv[2]), sys.argv[3], workers=1)"
    )
    args = [str(paths_file), str(SIZE), str(tmp_path / "cache")]
    child = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stderr=subprocess.DEVNULL)
    name = f"{SIZE}px-{cache.cache_key(synthetic_paths, SIZE)}"
    checkpoint = tmp_path / "cache" / f".{name}.partial" / cache.FILES_FILE
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)  # mid-build, holding the lock
    assert child.wait() == -signal.SIGKILL
    assert not (tmp_path / "cache" / name).exists()  # nothing published

    done_before = int((np.load(checkpoint)[:, 0] != cache.NOT_READ).sum())
    assert 0 < done_before < len(synthetic_paths)
    resumed = cache.prepare_images(synthetic_paths, SIZE, tmp_path / "cache", workers=1)  # no wait, no hang
    fresh = cache.prepare_images(synthetic_paths, SIZE, tmp_path / "fresh", workers=1)
    np.testing.assert_array_equal(resumed.images, fresh.images)


def _copy_images(paths: list[str], folder: Path) -> list[str]:
    folder.mkdir()
    return [str(shutil.copy(p, folder / Path(p).name)) for p in paths]


def test_changed_files_are_reread_in_place_and_a_repaired_file_leaves_the_failures(synthetic_paths, tmp_path):
    paths = _copy_images(synthetic_paths[:40], tmp_path / "images")
    first = cache.prepare_images(paths, SIZE, tmp_path / "cache", workers=1)
    original = Path(paths[3]).read_bytes()
    Path(paths[3]).write_bytes(original[:60])  # broken after preparing (a bad copy)
    Image.fromarray(np.full((48, 48), 222, np.uint8)).save(paths[5])  # replaced by another image
    marker = np.load(first.folder / cache.IMAGES_FILE, mmap_mode="r+")
    marker[7] = 99  # an unchanged file's row: a re-read would restore it, a rebuild would too
    marker.flush()
    del marker

    second = cache.prepare_images(paths, SIZE, tmp_path / "cache", workers=1)
    assert second.folder == first.folder
    assert list(second.failures) == [3] and second.failures[3].startswith(paths[3])
    assert np.all(second.images[3] == 0)  # no stale pixels for the broken file
    assert np.all(second.images[5] == 222)  # the replacement's pixels, not the old ones
    assert np.all(second.images[7] == 99)  # unchanged files are not read again

    Path(paths[3]).write_bytes(original)  # repaired
    third = cache.prepare_images(paths, SIZE, tmp_path / "cache", workers=1)
    fresh = cache.prepare_images(paths, SIZE, tmp_path / "fresh", workers=1)
    assert third.failures == {}  # the repaired file is no longer listed
    np.testing.assert_array_equal(third.images[3], fresh.images[3])


def test_a_missing_file_that_appears_later_is_read(synthetic_paths, tmp_path):
    paths = _copy_images(synthetic_paths[:10], tmp_path / "images")
    kept = Path(paths[2]).read_bytes()
    Path(paths[2]).unlink()
    assert list(cache.prepare_images(paths, SIZE, tmp_path / "cache", workers=1).failures) == [2]
    Path(paths[2]).write_bytes(kept)
    again = cache.prepare_images(paths, SIZE, tmp_path / "cache", workers=1)
    assert again.failures == {} and again.images[2].std() > 5


def _write_blank_png(path: Path, width: int, height: int) -> None:
    """A valid 8-bit grey PNG of any size, compressed row by row (never the whole image in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    z, row, body = zlib.compressobj(9), b"\0" * (width + 1), []
    body = [z.compress(row) for _ in range(height)] + [z.flush()]
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b"")
    )


def test_an_oversized_image_is_a_listed_failure(synthetic_paths, tmp_path):
    paths = _copy_images(synthetic_paths[:5], tmp_path / "images")
    _write_blank_png(Path(paths[1]), 14000, 14000)
    prepared = cache.prepare_images(paths, SIZE, tmp_path / "cache", workers=1)
    assert list(prepared.failures) == [1] and "DecompressionBombError" in prepared.failures[1]


def test_twelve_bit_data_in_a_16_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 32).round().astype(np.uint16), (32, 1))  # 12-bit detector values
    Image.fromarray(ramp).save(tmp_path / "twelve.png")
    with Image.open(tmp_path / "twelve.png") as img:
        assert img.mode.startswith("I;16")  # a real 16-bit PNG
    prepared = cache.prepare_images([str(tmp_path / "twelve.png")], 32, tmp_path / "cache", workers=1)
    row = prepared.images[0, 0]
    assert row[0] == 0 and row[-1] == 255  # full range, not black (4095 / 65535 would give at most 16)
    np.testing.assert_array_equal(row, np.rint(ramp[0] * (255 / 4095)).astype(np.uint8))


def _cli_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "dataset.generator.n_patients=30",
        "dataset.generator.resolution=32",
        f"dataset.root={tmp_path}/syn",
        f"dataset.cache_dir={tmp_path}/cache",
        f"hydra.run.dir={tmp_path}/hydra",
        *extra,
    ]


def _generated(tmp_path: Path) -> Path:
    """The synthetic set `cxr.prepare <_cli_args>` reads, generated ahead so a test can alter its files."""
    from cxr.config import SyntheticDatasetConfig

    cfg = SyntheticDatasetConfig(root=f"{tmp_path}/syn")
    cfg.generator.n_patients, cfg.generator.resolution = 30, 32
    return ensure_dataset(cfg.generator, cfg.root)


def test_prepare_cli_lists_an_oversized_image_and_goes_on(tmp_path):
    folder = _generated(tmp_path)
    _write_blank_png(folder / "images" / "00000002_000.png", 14000, 14000)
    out = run_cli("cxr.prepare", *_cli_args(tmp_path, "dataset.image_size=16"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1 image(s) could not be read:" in out.stdout
    assert "00000002_000.png: DecompressionBombError" in out.stdout


def test_prepare_cli_warns_when_it_enlarges_images(tmp_path):
    out = run_cli("cxr.prepare", *_cli_args(tmp_path, "dataset.image_size=48"))  # sources are 32 px
    assert out.returncode == 0, out.stderr[-2000:]
    n = len(list(_generated(tmp_path).glob("images/*.png")))
    assert (
        f"cxr: warning: {n} of {n} images are smaller than the 48px cache (smallest side 32px)" in out.stderr
    )
    same = run_cli("cxr.prepare", *_cli_args(tmp_path, "dataset.image_size=32"))
    assert same.returncode == 0 and "smaller than" not in same.stderr


def test_prepare_cli_warns_about_images_in_neither_official_list(tmp_path):
    folder = _generated(tmp_path)
    listed = (folder / "train_val_list.txt").read_text().split()
    (folder / "train_val_list.txt").write_text("\n".join(listed[3:]))
    args = ["dataset=nih", f"dataset.root={folder}", "dataset.image_size=16", "dataset.val_fraction=0.2"]
    out = run_cli("cxr.prepare", *_cli_args(tmp_path, *args)[2:])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cxr: warning: 3 of " in out.stderr
    assert (
        f"neither train_val_list.txt nor test_list.txt and are left out (first: {', '.join(listed[:3])})"
        in (out.stderr)
    )


def test_a_cache_from_before_content_keys_is_reread_in_place(synthetic_paths, tmp_path):
    paths = _copy_images(synthetic_paths[:20], tmp_path / "images")
    built = cache.prepare_images(paths, SIZE, tmp_path / "cache", workers=1)
    expected = np.array(built.images)
    (built.folder / cache.FILES_FILE).unlink()  # as an older cxr left it: no per-file records
    pixels = np.load(built.folder / cache.IMAGES_FILE, mmap_mode="r+")
    pixels[:] = 0  # so only a re-read brings the pixels back
    pixels.flush()
    del pixels
    again = cache.prepare_images(paths, SIZE, tmp_path / "cache", workers=1)
    assert again.folder == built.folder and again.failures == {}
    np.testing.assert_array_equal(again.images, expected)
