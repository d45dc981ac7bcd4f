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
from cxr.data import cache, nih, splits
from cxr.data.datasets import load_table
from cxr.data.labels import NIH_PATHOLOGIES
from cxr.data.synthetic import ensure_dataset
from cxr.runtime.errors import CxrError
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
    assert len(meta) == 112120 and meta["patient_id"].nunique() == 30805
    assert {d: int(meta[d].sum()) for d in NIH_PATHOLOGIES} == REAL_COUNTS
    assert int((meta[list(NIH_PATHOLOGIES)].sum(axis=1) == 0).sum()) == 60361  # No Finding
    assert {"image_id", "patient_id", "follow_up", "age", "sex", "view"} <= set(meta.columns)


def test_real_bounding_boxes_use_label_file_spelling(shared_data):
    boxes = nih.read_bboxes(shared_data / "nih-meta" / "BBox_List_2017.csv")
    assert len(boxes) == 984 and boxes["image_id"].nunique() == 880
    assert "Infiltration" in set(boxes["finding"]) and set(boxes["finding"]) <= set(NIH_PATHOLOGIES)


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
    meta = release.metadata.set_index("image_id")
    assert meta.loc["a_000.png", ["Mass", "Nodule"]].tolist() == [1, 1]
    assert meta.loc["b_000.png", list(NIH_PATHOLOGIES)].sum() == 0
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
    assert list(release.metadata["image_id"]) == ["a_000.png", "c_000.png"]
    assert release.train_val == ["a_000.png"]
    assert "b_000.png" in capsys.readouterr().err


def test_split_list_naming_unknown_images_is_an_error(tmp_path):
    folder = _write_release(tmp_path, ROWS)
    (folder / "test_list.txt").write_text("c_000.png\nzzz_999.png\n")
    with pytest.raises(CxrError, match="test_list.txt names 1 image.*zzz_999.png"):
        load_table(split_cfg(root=str(folder), val_fraction=0.5))


def test_an_empty_patient_id_names_the_file_and_line(tmp_path):
    folder = _write_release(tmp_path, [*ROWS[:2], ("c_000.png", "Hernia", "")])
    with pytest.raises(
        CxrError, match=r"Data_Entry_2017.csv.gz, line 4: empty Patient ID for image 'c_000.png'"
    ):
        nih.load_release(folder)


def test_a_patient_in_both_lists_is_named_with_both_lists(tmp_path):
    folder = _write_release(tmp_path, [ROWS[0], ROWS[1], ("c_000.png", "Hernia", 1)])  # a and c: patient 1
    out = run_cli("cxr.prepare", "dataset=nih", f"dataset.root={folder}", f"hydra.run.dir={tmp_path}/h")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert "patient 1 has images in both train_val_list.txt (a_000.png) and test_list.txt (c_000.png)" in (
        out.stderr
    )


def test_an_image_in_both_lists_is_an_error_naming_it(tmp_path):
    folder = _write_release(tmp_path, ROWS)
    (folder / "test_list.txt").write_text("c_000.png\na_000.png\n")  # a_000.png is in train_val too
    with pytest.raises(CxrError, match=r"image a_000.png is in both train_val_list.txt and test_list.txt"):
        load_table(split_cfg(root=str(folder), val_fraction=0.5))


def test_selection_that_ends_empty_is_an_error(tmp_path):
    folder = _write_release(tmp_path, ROWS)
    (folder / "test_list.txt").write_text("")
    with pytest.raises(CxrError, match="leaves test empty"):
        load_table(split_cfg(root=str(folder), val_fraction=0.5))


# ------------------------------------------------------------------ splits
def test_official_split_reproduces_the_release(real_meta):
    meta, train_val, test = real_meta
    split = splits.assign(meta, NIH_PATHOLOGIES, train_val, test, split_cfg(val_fraction=0.1))
    counts = split.value_counts()
    assert counts["train"] + counts["val"] == 86524 and counts["test"] == 25596
    assert counts["val"] / 86524 == pytest.approx(0.1, abs=0.005)
    assert meta.assign(split=split).groupby("patient_id")["split"].nunique().max() == 1


def test_random_split_is_patient_level_sized_and_stratified(real_meta):
    meta, train_val, test = real_meta
    split = splits.assign(meta, NIH_PATHOLOGIES, train_val, test, split_cfg(split="random", split_seed=0))
    assert meta.assign(split=split).groupby("patient_id")["split"].nunique().max() == 1
    shares = split.value_counts(normalize=True)
    for name, share in zip(splits.SPLIT_NAMES, (0.9, 0.05, 0.05), strict=True):
        assert abs(shares[name] - share) <= 0.005
    deviation = prevalence_deviation(meta, split, NIH_PATHOLOGIES)
    assert deviation.to_numpy().max() <= 0.10
    assert deviation.to_numpy().mean() <= 0.02


def test_splits_are_deterministic_and_seeded(real_meta):
    meta, train_val, test = real_meta
    cfg = split_cfg(split="random", split_seed=3)
    a = splits.assign(meta, NIH_PATHOLOGIES, train_val, test, cfg)
    assert a.equals(splits.assign(meta, NIH_PATHOLOGIES, train_val, test, cfg))
    assert not a.equals(
        splits.assign(meta, NIH_PATHOLOGIES, train_val, test, split_cfg(split="random", split_seed=4))
    )


def test_random_split_on_synthetic_data(tmp_path):
    folder = ensure_dataset(
        SyntheticGeneratorConfig(n_patients=600, resolution=16, min_prevalence=0.05), tmp_path
    )
    release = nih.load_release(folder)
    split = splits.assign(
        release.metadata,
        release.pathologies,
        [],
        [],
        split_cfg(split="random", split_fractions=[0.8, 0.1, 0.1]),
    )
    assert release.metadata.assign(split=split).groupby("patient_id")["split"].nunique().max() == 1
    assert prevalence_deviation(release.metadata, split, release.pathologies).to_numpy().mean() <= 0.05


def _positive_patients(table: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """Findings (rows) x splits (columns): how many patients with a positive image each split holds."""
    positive = (table[list(NIH_PATHOLOGIES)] > 0).groupby(table["patient_id"]).any()
    per_patient = positive.join(split.groupby(table["patient_id"]).first().rename("split"))
    return per_patient.groupby("split").sum().T.reindex(columns=list(splits.SPLIT_NAMES), fill_value=0)


def test_small_real_subsets_keep_a_positive_patient_of_each_finding_in_every_split(real_meta):
    meta, _, _ = real_meta
    cfg = split_cfg(split="random", split_fractions=[0.8, 0.1, 0.1])
    for first in range(0, 3000, 150):  # 20 sets of 150 consecutive real patients (the old split failed 7)
        subset = meta[meta["patient_id"].between(first + 1, first + 150)].reset_index(drop=True)
        counts = _positive_patients(subset, splits.assign(subset, NIH_PATHOLOGIES, [], [], cfg))
        enough = counts.sum(axis=1) >= 3
        assert (counts[enough] > 0).all(axis=None), (first, counts[enough])


def test_a_finding_with_three_positive_patients_gets_one_in_each_split():
    rows = [
        (f"{p:08d}_{i:03d}.png", p, 1 if p in (3, 9, 14) else 0)
        for p in range(1, 21)
        for i in range(1 + p % 3)
    ]
    table = pd.DataFrame(rows, columns=["image_id", "patient_id", "Hernia"])
    for d in NIH_PATHOLOGIES[:-1]:
        table[d] = (table["patient_id"] % 4 == 0).astype(np.uint8)
    for seed in range(5):
        cfg = split_cfg(split="random", split_fractions=[0.8, 0.1, 0.1], split_seed=seed)
        counts = _positive_patients(table, splits.assign(table, NIH_PATHOLOGIES, [], [], cfg))
        assert counts.loc["Hernia"].tolist() == [1, 1, 1]


def test_bad_fractions_are_an_error(real_meta):
    meta, train_val, test = real_meta
    with pytest.raises(CxrError, match="sum to 1"):
        splits.assign(
            meta,
            NIH_PATHOLOGIES,
            train_val,
            test,
            split_cfg(split="random", split_fractions=[0.9, 0.2, 0.05]),
        )


# ------------------------------------------------------------------ prepare and pipeline
@pytest.fixture(scope="module")
def real_samples(shared_data) -> pd.DataFrame:
    table = pd.read_csv(shared_data / "nih-samples" / "labels.csv")
    table["path"] = [str(shared_data / "nih-samples" / p) for p in table["path"]]
    return table


@pytest.mark.backend
def test_prepare_and_pipeline_on_real_images_of_every_size_and_mode(real_samples, tmp_path):
    from cxr.data.pipeline import CacheBatches

    modes = set(real_samples["png_mode"])
    assert "8-bit grayscale" in modes and any("RGB" in m for m in modes)
    assert real_samples["width_x_height"].nunique() == 4
    prepared = cache.prepare_images(real_samples["path"].tolist(), 64, tmp_path, workers=1)
    assert prepared.failures == {} and prepared.images.shape == (len(real_samples), 64, 64)
    assert prepared.images.std(axis=(1, 2)).min() > 5  # real content, not blank
    labels = real_samples[list(NIH_PATHOLOGIES)].to_numpy(np.float32)
    rows = np.arange(len(real_samples))
    batches = list(CacheBatches(prepared.images, labels, rows, batch_size=8))
    n = len(real_samples)
    assert [b[0].shape[0] for b in batches] == [8] * (n // 8) + ([n % 8] if n % 8 else [])
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
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
    prepared = cache.prepare_images(paths, 16, tmp_path / "cache", workers=1)
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
    real_load = cache._load_one

    def flaky(task):
        calls.append(task[0])
        if len(calls) == 300:
            raise KeyboardInterrupt  # the user pressing Ctrl-C mid-way
        return real_load(task)

    monkeypatch.setattr(cache, "CHUNK", 64)
    monkeypatch.setattr(cache, "_load_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache.prepare_images(paths, 24, tmp_path / "cache", workers=1)
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    name = "24px-" + cache.cache_key(paths, 24)
    assert left == [f".{name}.lock", f".{name}.partial"]  # no published cache, only work in progress
    monkeypatch.setattr(cache, "_load_one", real_load)
    resumed = cache.prepare_images(paths, 24, tmp_path / "cache", workers=1)
    fresh = cache.prepare_images(paths, 24, tmp_path / "fresh", workers=1)
    np.testing.assert_array_equal(resumed.images, fresh.images)


def test_cache_built_for_another_size_or_list_is_rejected(tmp_path):
    folder = ensure_dataset(SyntheticGeneratorConfig(n_patients=10, resolution=16), tmp_path / "syn")
    paths = sorted(str(p) for p in (folder / "images").iterdir())
    built = cache.prepare_images(paths, 8, tmp_path / "cache", workers=1).folder
    other = built.with_name(f"12px-{cache.cache_key(paths, 12)}")
    shutil.copytree(built, other)
    with pytest.raises(CxrError, match="was built for .*'size': 8.*delete"):
        cache.prepare_images(paths, 12, tmp_path / "cache")
    manifest = json.loads((built / cache.MANIFEST).read_text())
    (built / cache.MANIFEST).write_text(json.dumps({**manifest, "key": "0" * 16}))
    with pytest.raises(CxrError, match="not for this dataset"):
        cache.prepare_images(paths, 8, tmp_path / "cache")


@pytest.mark.backend
def test_training_batches_visit_every_row_once_per_epoch_in_a_seeded_order():
    from cxr.data.pipeline import CacheBatches

    n, rows = 50, np.arange(3, 53)  # a split's rows, not starting at 0
    images = np.arange(n + 5, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    labels = np.arange(n + 5, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)

    def epoch(ds, file_order=True):
        batches = list(ds)
        ds.on_epoch_end()  # as model.fit does after each epoch
        for x, y in batches:
            assert x.dtype == np.uint8 and x.shape[1:] == (4, 4, 1) and y.dtype == np.float32
            np.testing.assert_array_equal(x[:, 0, 0, 0], y[:, 0])  # each image with its own labels
            assert not file_order or np.all(np.diff(x[:, 0, 0, 0].astype(int)) > 0)  # read in file order
        return [b[1][:, 0].astype(int).tolist() for b in batches]

    ds = CacheBatches(images, labels, rows, batch_size=16, training=True, seed=7)
    first, second = epoch(ds), epoch(ds)
    assert [len(b) for b in first] == [16, 16, 16, 2]
    for order in (first, second):
        assert sorted(sum(order, [])) == rows.tolist()  # every row exactly once
    assert first != second  # reshuffled each epoch
    again = CacheBatches(images, labels, rows, batch_size=16, training=True, seed=7)
    assert epoch(again) == first and epoch(again) == second  # the same seed, the same epochs
    other = CacheBatches(images, labels, rows, batch_size=16, training=True, seed=8)
    assert epoch(other) != first
    given = rows[::-1].copy()  # not training: the given order, untouched
    plain = epoch(CacheBatches(images, labels, given, batch_size=16), file_order=False)
    assert sum(plain, []) == given.tolist()
    with pytest.raises(IndexError):
        ds[4]


def test_gather_reads_any_rows_in_file_order_and_returns_them_as_asked():
    from cxr.data.pipeline import gather

    images = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    for idx in ([3, 4, 5], [0, 0, 2], [5, 1, 3, 1], [7], []):
        idx = np.array(idx, dtype=np.int64)
        np.testing.assert_array_equal(gather(images, idx), images[idx])


@pytest.mark.slow
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


@pytest.mark.slow
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

    from cxr.data.prepared import load_prepared

    data = load_prepared(_synthetic_cfg(tmp_path), warn=False)  # the same generated set the CLI used
    kept = np.concatenate(list(data.rows.values()))
    assert len(kept) == len(data.table) - 1
    assert "00000003_000.png" not in set(data.table["image_id"].iloc[kept])


def _synthetic_cfg(tmp_path):
    from cxr.config import SyntheticDatasetConfig

    cfg = SyntheticDatasetConfig(root=f"{tmp_path}/syn", cache_dir=f"{tmp_path}/cache", image_size=24)
    cfg.generator.n_patients, cfg.generator.resolution = 30, 32
    return OmegaConf.structured(cfg)


@pytest.mark.slow
def test_prepare_cli_bad_root_exits_2(tmp_path):
    out = run_cli(
        "cxr.prepare", "dataset=nih", f"dataset.root={tmp_path}/none", f"hydra.run.dir={tmp_path}/h"
    )
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_a_malformed_box_file_does_not_stop_reading_the_release(tmp_path):
    folder = _write_release(tmp_path, ROWS)
    (folder / nih.BBOX_FILE).write_text("Image Index,Finding Label\na_000.png,Mass\n")
    release = nih.load_release(folder)  # training never needs the boxes
    assert len(release.metadata) == 3
    with pytest.raises(CxrError, match="expected Image Index, Finding Label and 4 box columns"):
        release.bounding_boxes()


def test_split_csv_keeps_nih_names_and_reads_back(tmp_path):
    table = pd.DataFrame(
        {"image_id": ["a.png", "b.png"], "patient_id": [1, 2], "split": ["train", "test"], "path": ["x", "y"]}
    )
    path = splits.write_split_csv(table, tmp_path / "split.csv")
    assert path.read_text().splitlines() == ["Image Index,Patient ID,split", "a.png,1,train", "b.png,2,test"]
    back = splits.read_split_csv(path)
    assert list(back.columns) == ["image_id", "patient_id", "split"] and list(back["split"]) == [
        "train",
        "test",
    ]
    (tmp_path / "bad.csv").write_text("Image Index,Patient ID,split\na.png,1,holdout\n")
    with pytest.raises(CxrError, match=r"bad.csv is not a cxr split file.*found split\(s\) \['holdout'\]"):
        splits.read_split_csv(tmp_path / "bad.csv")


def test_a_logged_split_is_restored_and_missing_images_are_named(tmp_path):
    from cxr.data.prepared import load_prepared

    cfg = _synthetic_cfg(tmp_path)
    first = load_prepared(cfg, warn=False)
    logged = first.table[["image_id", "patient_id"]].assign(split="test")  # every image in test
    logged.loc[logged.index[:5], "split"] = "train"
    logged.loc[logged.index[5:10], "split"] = "val"
    restored = load_prepared(cfg, logged, split_source="run abc", warn=False)
    assert list(restored.table["split"]) == list(logged["split"])
    assert [len(restored.rows[s]) for s in splits.SPLIT_NAMES] == [5, 5, len(logged) - 10]
    gone = pd.concat([logged, pd.DataFrame({"image_id": ["zzz.png"], "patient_id": [0], "split": ["test"]})])
    with pytest.raises(CxrError, match="1 images of run abc's split are not in the dataset.*zzz.png"):
        load_prepared(cfg, gone, split_source="run abc", warn=False)


def prevalence_deviation(meta: pd.DataFrame, split: pd.Series, pathologies: list[str]) -> pd.DataFrame:
    """|p_split - p_all| / p_all per finding (rows) and split (columns): how stratified a split is."""
    labels = meta[list(pathologies)]
    overall = labels.mean()
    return pd.DataFrame(
        {
            s: (labels[split == s].mean() - overall).abs() / overall
            for s in splits.SPLIT_NAMES
            if (split == s).any()
        }
    )


def test_a_split_left_without_readable_images_is_an_error_unless_it_never_had_any():
    from cxr.data.prepared import usable_rows

    table = pd.DataFrame({"split": ["train", "val", "val", "test"]})
    assert {s: list(r) for s, r in usable_rows(table, {}).items()} == {
        "train": [0],
        "val": [1, 2],
        "test": [3],
    }
    with pytest.raises(CxrError, match="no readable images left in the train split"):
        usable_rows(table, {0: "truncated"}, may_lack=("train",))  # it had one: lost, not absent
    out_of_fold = pd.DataFrame({"split": ["val", "val", "test"]})  # a fold ensemble's logged split
    assert len(usable_rows(out_of_fold, {}, may_lack=("train",))["train"]) == 0
    with pytest.raises(CxrError, match="no readable images left in the train split"):
        usable_rows(out_of_fold, {})
