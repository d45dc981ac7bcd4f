"""NIH data layer: reader, splits, image cache and input pipeline, on real and synthetic data."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from cxr.config import NihDatasetConfig, SyntheticGeneratorConfig
from cxr.data import nih, prepare, splits
from cxr.data.datasets import load_table
from cxr.data.synthetic import ensure_dataset
from cxr.errors import CxrError
from cxr.labels import DISEASES
from tests.conftest import run_cli

REAL_COUNTS = {  # image counts per finding in the full release (shared/data/README.md)
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894, "Mass": 5782,
    "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302, "Consolidation": 4667, "Edema": 2303,
    "Emphysema": 2516, "Fibrosis": 1686, "Pleural_Thickening": 3385, "Hernia": 227,
}  # fmt: skip


def split_cfg(**kw):
    return OmegaConf.structured(NihDatasetConfig(**kw))


@pytest.fixture(scope="module")
def real_meta(shared_data) -> tuple[pd.DataFrame, list[str], list[str]]:
    meta_dir = shared_data / "nih-meta"
    meta = nih.read_label_file(meta_dir / "Data_Entry_2017_v2020.csv.gz")
    return meta, nih.read_list(meta_dir / "train_val_list.txt"), nih.read_list(meta_dir / "test_list.txt")


# ------------------------------------------------------------------ reader
def test_real_label_file_reads_with_canonical_labels(real_meta):
    meta, _, _ = real_meta
    assert len(meta) == 112120 and meta["Patient ID"].nunique() == 30805
    assert {d: int(meta[d].sum()) for d in DISEASES} == REAL_COUNTS
    assert int((meta[list(DISEASES)].sum(axis=1) == 0).sum()) == 60361  # No Finding
    assert {"Patient Age", "Patient Gender", "View Position"} <= set(meta.columns)


def test_real_bounding_boxes_use_label_file_spelling(shared_data):
    boxes = nih.read_bboxes(shared_data / "nih-meta" / "BBox_List_2017.csv")
    assert len(boxes) == 984 and boxes["Image Index"].nunique() == 880
    assert "Infiltration" in set(boxes["Finding Label"]) and set(boxes["Finding Label"]) <= set(DISEASES)


def _write_release(folder: Path, rows: list[tuple[str, str, int]], trailing_column: bool = False) -> Path:
    """A tiny NIH-layout folder: 2017-style CSV (optionally gzipped), images in images_001/images."""
    images = folder / "images_001" / "images"
    images.mkdir(parents=True)
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    header += "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]" + (
        ",\n" if trailing_column else "\n"
    )
    lines = [
        f"{name},{labels},0,{pid},40,M,PA,64,64,0.1,0.1" + ("," if trailing_column else "")
        for name, labels, pid in rows
    ]
    with gzip.open(folder / "Data_Entry_2017.csv.gz", "wt") as f:
        f.write(header + "\n".join(lines) + "\n")
    for name, _, _ in rows:
        Image.fromarray(np.full((64, 64), 100, np.uint8)).save(images / name)
    names = [r[0] for r in rows]
    (folder / "train_val_list.txt").write_text("\n".join(names[:-1]))  # no trailing newline, like NIH's
    (folder / "test_list.txt").write_text(names[-1] + "\n")
    return folder


ROWS = [("a_000.png", "Mass|Nodule", 1), ("b_000.png", "No Finding", 2), ("c_000.png", "Hernia", 3)]


def test_reader_handles_gzip_trailing_column_and_tarball_folders(tmp_path):
    release = nih.load_release(_write_release(tmp_path, ROWS, trailing_column=True))
    meta = release.metadata.set_index("Image Index")
    assert meta.loc["a_000.png", ["Mass", "Nodule"]].tolist() == [1, 1]
    assert meta.loc["b_000.png", list(DISEASES)].sum() == 0
    assert Path(meta.loc["c_000.png", "path"]).parent.name == "images"
    assert release.train_val == ["a_000.png", "b_000.png"] and release.test == ["c_000.png"]


def test_unknown_label_names_the_label_and_row(tmp_path):
    _write_release(tmp_path, [*ROWS[:2], ("c_000.png", "Cardiomegally", 3)])
    with pytest.raises(CxrError, match=r"line 4: unknown label 'Cardiomegally'"):
        nih.load_release(tmp_path)


def test_missing_columns_are_named(tmp_path):
    pd.DataFrame({"Image Index": ["a.png"], "Finding Labels": ["Mass"]}).to_csv(
        tmp_path / "Data_Entry_2017.csv"
    )
    with pytest.raises(CxrError, match=r"lacks the column\(s\) \['Patient ID'\]"):
        nih.load_release(tmp_path)


def test_duplicate_image_rows_are_an_error(tmp_path):
    _write_release(tmp_path, [*ROWS, ("a_000.png", "Mass", 1)])
    with pytest.raises(CxrError, match="1 duplicate Image Index rows, first 'a_000.png'"):
        nih.load_release(tmp_path)


def test_missing_images_reported_and_skipped_only_when_allowed(tmp_path, capsys):
    folder = _write_release(tmp_path, ROWS)
    (folder / "images_001" / "images" / "b_000.png").unlink()
    with pytest.raises(
        CxrError, match=r"1 of 3 images .* not under .*first: b_000.png.*allow_missing_images"
    ):
        nih.load_release(folder)
    release = nih.load_release(folder, allow_missing_images=True)
    assert list(release.metadata["Image Index"]) == ["a_000.png", "c_000.png"]
    assert release.train_val == ["a_000.png"]
    assert "b_000.png" in capsys.readouterr().err


def test_split_list_naming_unknown_images_is_an_error(tmp_path):
    folder = _write_release(tmp_path, ROWS)
    (folder / "test_list.txt").write_text("c_000.png\nzzz_999.png\n")
    with pytest.raises(CxrError, match="test_list.txt names 1 image.*zzz_999.png"):
        load_table(split_cfg(root=str(folder), val_fraction=0.5))


def test_selection_that_ends_empty_is_an_error(tmp_path):
    folder = _write_release(tmp_path, ROWS)
    (folder / "test_list.txt").write_text("")
    with pytest.raises(CxrError, match="leaves test empty"):
        load_table(split_cfg(root=str(folder), val_fraction=0.5))


# ------------------------------------------------------------------ splits
def test_official_split_reproduces_the_release(real_meta):
    meta, train_val, test = real_meta
    split = splits.assign(meta, train_val, test, split_cfg(val_fraction=0.1))
    counts = split.value_counts()
    assert counts["train"] + counts["val"] == 86524 and counts["test"] == 25596
    assert counts["val"] / 86524 == pytest.approx(0.1, abs=0.005)
    assert meta.assign(split=split).groupby("Patient ID")["split"].nunique().max() == 1


def test_random_split_is_patient_level_sized_and_stratified(real_meta):
    meta, train_val, test = real_meta
    split = splits.assign(meta, train_val, test, split_cfg(split="random", split_seed=0))
    assert meta.assign(split=split).groupby("Patient ID")["split"].nunique().max() == 1
    shares = split.value_counts(normalize=True)
    for name, share in zip(splits.SPLIT_NAMES, (0.9, 0.05, 0.05), strict=True):
        assert abs(shares[name] - share) <= 0.005
    deviation = splits.prevalence_deviation(meta, split)
    assert deviation.to_numpy().max() <= 0.10
    assert deviation.to_numpy().mean() <= 0.02


def test_splits_are_deterministic_and_seeded(real_meta):
    meta, train_val, test = real_meta
    cfg = split_cfg(split="random", split_seed=3)
    a = splits.assign(meta, train_val, test, cfg)
    assert a.equals(splits.assign(meta, train_val, test, cfg))
    assert not a.equals(splits.assign(meta, train_val, test, split_cfg(split="random", split_seed=4)))


def test_random_split_on_synthetic_data(tmp_path):
    folder = ensure_dataset(
        SyntheticGeneratorConfig(n_patients=600, resolution=16, min_prevalence=0.05), tmp_path
    )
    release = nih.load_release(folder)
    split = splits.assign(
        release.metadata, [], [], split_cfg(split="random", split_fractions=[0.8, 0.1, 0.1])
    )
    assert release.metadata.assign(split=split).groupby("Patient ID")["split"].nunique().max() == 1
    assert splits.prevalence_deviation(release.metadata, split).to_numpy().mean() <= 0.05


def test_bad_fractions_are_an_error(real_meta):
    meta, train_val, test = real_meta
    with pytest.raises(CxrError, match="sum to 1"):
        splits.assign(meta, train_val, test, split_cfg(split="random", split_fractions=[0.9, 0.2, 0.05]))


# ------------------------------------------------------------------ prepare and pipeline
@pytest.fixture(scope="module")
def real_samples(shared_data) -> pd.DataFrame:
    table = pd.read_csv(shared_data / "nih-samples" / "labels.csv")
    table["path"] = [str(shared_data / "nih-samples" / p) for p in table["path"]]
    return table


def test_prepare_and_pipeline_on_real_images_of_every_size_and_mode(real_samples, tmp_path):
    from cxr.data.pipeline import make_dataset

    modes = set(real_samples["png_mode"])
    assert "8-bit grayscale" in modes and any("RGB" in m for m in modes)
    assert real_samples["width_x_height"].nunique() == 4
    prepared = prepare.prepare(real_samples["path"].tolist(), 64, tmp_path, workers=1)
    assert prepared.failures == {} and prepared.images.shape == (len(real_samples), 64, 64)
    assert prepared.images.std(axis=(1, 2)).min() > 5  # real content, not blank
    labels = real_samples[list(DISEASES)].to_numpy(np.float32)
    rows = np.arange(len(real_samples))
    batches = list(make_dataset(prepared.images, labels, rows, 8, training=False, seed=0))
    n = len(real_samples)
    assert [b[0].shape[0] for b in batches] == [8] * (n // 8) + ([n % 8] if n % 8 else [])
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.shape == (n, 64, 64, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], prepared.images)  # each image, in order, untouched
    np.testing.assert_array_equal(y, labels)  # with its own labels


def test_prepare_accepts_16_bit_and_rgba_and_reports_broken_files(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32, dtype=np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    Image.fromarray(np.dstack([np.full((32, 32), v, np.uint8) for v in (200, 200, 200, 128)])).save(
        tmp_path / "rgba.png"
    )
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    paths = [str(tmp_path / n) for n in ("grey16.png", "rgba.png", "broken.png", "absent.png")]
    prepared = prepare.prepare(paths, 16, tmp_path / "cache", workers=1)
    assert prepared.images[0].min() < 10 and prepared.images[0].max() > 245  # 16-bit scaled, not clipped
    assert np.all(prepared.images[1] == 200)
    assert sorted(prepared.failures) == [2, 3]
    assert "broken.png" in prepared.failures[2] and "absent.png" in prepared.failures[3]
    report = prepared.failure_report(limit=1)
    assert report.startswith("2 image(s) could not be read:") and "broken.png" in report
    assert "absent.png" not in report and "... and 1 more" in report


def test_prepare_resumes_after_interruption(tmp_path, monkeypatch):
    folder = ensure_dataset(SyntheticGeneratorConfig(n_patients=150, resolution=32), tmp_path / "syn")
    paths = sorted(str(p) for p in (folder / "images").iterdir())
    calls = []
    real_load = prepare._load_one

    def flaky(task):
        calls.append(task[0])
        if len(calls) == 300:
            raise KeyboardInterrupt  # the user pressing Ctrl-C mid-way
        return real_load(task)

    monkeypatch.setattr(prepare, "CHUNK", 64)
    monkeypatch.setattr(prepare, "_load_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(paths, 24, tmp_path / "cache", workers=1)
    assert not prepare.cache_folder(tmp_path / "cache", paths, 24).exists()  # nothing looks complete
    monkeypatch.setattr(prepare, "_load_one", real_load)
    resumed = prepare.prepare(paths, 24, tmp_path / "cache", workers=1)
    fresh = prepare.prepare(paths, 24, tmp_path / "fresh", workers=1)
    np.testing.assert_array_equal(resumed.images, fresh.images)


def test_cache_built_for_another_size_or_list_is_rejected(tmp_path):
    folder = ensure_dataset(SyntheticGeneratorConfig(n_patients=10, resolution=16), tmp_path / "syn")
    paths = sorted(str(p) for p in (folder / "images").iterdir())
    built = prepare.prepare(paths, 8, tmp_path / "cache", workers=1).folder
    other = prepare.cache_folder(tmp_path / "cache", paths, 12)
    shutil.copytree(built, other)
    with pytest.raises(CxrError, match="was built for .*'size': 8.*delete"):
        prepare.prepare(paths, 12, tmp_path / "cache")
    manifest = json.loads((built / prepare.MANIFEST).read_text())
    (built / prepare.MANIFEST).write_text(json.dumps({**manifest, "key": "0" * 16}))
    with pytest.raises(CxrError, match="not for this dataset"):
        prepare.prepare(paths, 8, tmp_path / "cache")


def test_augmentation_changes_training_batches_only(tmp_path):
    from cxr.config import AugmentConfig
    from cxr.data.pipeline import make_dataset

    images = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (4, 32, 1))
    labels = np.eye(4, len(DISEASES), dtype=np.float32)
    aug = OmegaConf.structured(AugmentConfig(rotation_degrees=10, shift_fraction=0.1, contrast=0.2))
    plain = next(iter(make_dataset(images, labels, np.arange(4), 4, training=False, seed=0)))[0].numpy()
    moved = next(iter(make_dataset(images, labels, np.arange(4), 4, training=True, seed=0, augment=aug)))
    assert moved[0].shape == plain.shape and not np.allclose(moved[0].numpy(), plain)
    np.testing.assert_array_equal(np.sort(moved[1].numpy(), axis=0), np.sort(labels, axis=0))


def test_prepare_cli_reports_and_resumes(tmp_path):
    args = [
        "dataset.generator.n_patients=30",
        "dataset.generator.resolution=32",
        "dataset.image_size=16",
        f"dataset.root={tmp_path}/syn",
        f"dataset.cache_dir={tmp_path}/cache",
        f"hydra.run.dir={tmp_path}/hydra",
    ]
    first = run_cli("cxr.prepare", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "all images read" in first.stdout and "16px" in first.stdout
    again = run_cli("cxr.prepare", *args)
    assert again.returncode == 0 and "all images read" in again.stdout


def test_prepare_cli_lists_unreadable_images_and_training_leaves_them_out(tmp_path):
    args = [
        "dataset.generator.n_patients=30",
        "dataset.generator.resolution=32",
        f"dataset.root={tmp_path}/syn",
        f"dataset.cache_dir={tmp_path}/cache",
        f"hydra.run.dir={tmp_path}/hydra",
    ]
    assert run_cli("cxr.prepare", *args, "dataset.image_size=16").returncode == 0
    (victim,) = list((tmp_path / "syn").glob("synthetic-*/images/00000003_000.png"))
    victim.write_bytes(victim.read_bytes()[:40])  # truncated, as after a broken download
    out = run_cli("cxr.prepare", *args, "dataset.image_size=24")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1 image(s) could not be read:" in out.stdout and "00000003_000.png" in out.stdout

    from cxr.train import usable_rows

    table = load_table(_synthetic_cfg(tmp_path))  # the same generated set the CLI used
    prepared = prepare.prepare(table["path"].tolist(), 24, tmp_path / "cache")
    rows = usable_rows(table, prepared)
    kept = np.concatenate(list(rows.values()))
    assert len(kept) == len(table) - 1
    assert "00000003_000.png" not in set(table["Image Index"].iloc[kept])


def _synthetic_cfg(tmp_path):
    from cxr.config import SyntheticDatasetConfig

    cfg = SyntheticDatasetConfig(root=f"{tmp_path}/syn", cache_dir=f"{tmp_path}/cache", image_size=24)
    cfg.generator.n_patients, cfg.generator.resolution = 30, 32
    return OmegaConf.structured(cfg)


def test_prepare_cli_bad_root_exits_2(tmp_path):
    out = run_cli(
        "cxr.prepare", "dataset=nih", f"dataset.root={tmp_path}/none", f"hydra.run.dir={tmp_path}/h"
    )
    assert out.returncode == 2 and "does not exist" in out.stderr
