"""The synthetic generator writes the NIH layout, deterministically, and the NIH reader reads it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.config import SyntheticGeneratorConfig
from cxr.data import nih
from cxr.data.labels import NIH_PATHOLOGIES, NIH_PREVALENCE
from cxr.data.synthetic import ensure_dataset, sample_metadata

OFFICIAL_COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
]


@pytest.fixture(scope="module")
def small_cfg() -> SyntheticGeneratorConfig:
    return SyntheticGeneratorConfig(n_patients=40, resolution=48, min_prevalence=0.1, seed=3)


@pytest.fixture(scope="module")
def generated(tmp_path_factory, small_cfg):
    return ensure_dataset(small_cfg, tmp_path_factory.mktemp("gen"))


def test_writes_the_nih_layout(generated, small_cfg):
    header = (generated / "Data_Entry_2017.csv").read_text().splitlines()[0]
    assert header == ",".join(OFFICIAL_COLUMNS)  # the real file's header, commas inside brackets included
    meta = pd.read_csv(generated / "Data_Entry_2017.csv")
    assert meta["Patient ID"].nunique() == 40
    assert meta.groupby("Patient ID").size().max() > 1  # patients have follow-ups
    names = sorted((generated / "images").iterdir())
    assert [p.name for p in names] == sorted(meta["Image Index"])
    with Image.open(names[0]) as img:
        assert img.mode == "L" and img.size == (48, 48)
    labels = set("|".join(meta["Finding Labels"]).split("|"))
    assert labels <= set(NIH_PATHOLOGIES) | {"No Finding"} and "No Finding" in labels

    train_val = (generated / "train_val_list.txt").read_text().split()
    test = (generated / "test_list.txt").read_text().split()
    assert sorted(train_val + test) == sorted(meta["Image Index"])
    patients = meta.set_index("Image Index")["Patient ID"]
    assert not set(patients[train_val]) & set(patients[test])


def test_same_seed_same_bytes_and_cached(tmp_path, generated, small_cfg):
    again = ensure_dataset(small_cfg, tmp_path)
    assert (again / "Data_Entry_2017.csv").read_bytes() == (generated / "Data_Entry_2017.csv").read_bytes()
    for name in ["00000001_000.png", "00000007_000.png"]:
        a = np.asarray(Image.open(again / "images" / name))
        b = np.asarray(Image.open(generated / "images" / name))
        assert np.array_equal(a, b)
    stamp = (again / "Data_Entry_2017.csv").stat().st_mtime_ns
    assert ensure_dataset(small_cfg, tmp_path) == again  # second call reuses, does not regenerate
    assert (again / "Data_Entry_2017.csv").stat().st_mtime_ns == stamp


def test_other_seed_other_data():
    a, la = sample_metadata(SyntheticGeneratorConfig(n_patients=50, seed=1))
    b, lb = sample_metadata(SyntheticGeneratorConfig(n_patients=50, seed=2))
    assert not (len(a) == len(b) and np.array_equal(la, lb))


def test_prevalence_and_cooccurrence_are_nih_like():
    meta, labels = sample_metadata(SyntheticGeneratorConfig(n_patients=6000, seed=0))
    prevalence = labels.mean(axis=0)
    expected = np.array([NIH_PREVALENCE[d] for d in NIH_PATHOLOGIES])
    assert np.all(np.abs(prevalence - expected) <= 0.25 * expected + 0.002)
    assert NIH_PATHOLOGIES[int(np.argmax(prevalence))] == "Infiltration"
    multi = (labels.sum(axis=1) > 1).mean()
    assert 0.08 < multi < 0.35  # NIH: 18.5% of images carry more than one finding
    corr = np.corrcoef(labels.T)
    i, j, k = (NIH_PATHOLOGIES.index(d) for d in ("Effusion", "Edema", "Hernia"))
    assert corr[i, j] > 0.1 > abs(corr[i, k])


def test_min_prevalence_floors_rare_findings():
    _, labels = sample_metadata(SyntheticGeneratorConfig(n_patients=3000, min_prevalence=0.05))
    assert labels[:, NIH_PATHOLOGIES.index("Hernia")].mean() > 0.04


def test_each_finding_leaves_a_visible_trace():
    from cxr.data.synthetic import render

    for k, disease in enumerate(NIH_PATHOLOGIES):
        peaks = []
        for seed in range(4):
            pos = np.zeros(len(NIH_PATHOLOGIES), np.uint8)
            pos[k] = 1
            with_it = render(pos, 96, strength=1.0, noise=0.0, seed=[seed])
            without = render(np.zeros_like(pos), 96, strength=1.0, noise=0.0, seed=[seed])
            peaks.append(np.abs(with_it.astype(int) - without.astype(int)).max())
        assert min(peaks) >= 25, disease  # at least ~10% of the grey range, well above the default noise
        faint = render(pos, 96, strength=0.0, noise=0.0, seed=[0])
        assert np.abs(faint.astype(int) - render(0 * pos, 96, 0.0, 0.0, [0]).astype(int)).max() <= 1, disease


def test_reader_reads_the_generated_set(generated):
    release = nih.load_release(generated)
    meta = release.metadata
    raw = pd.read_csv(generated / "Data_Entry_2017.csv")
    assert len(meta) == len(raw)
    row = meta.set_index("image_id").loc[raw["Image Index"][0]]
    expected = set(raw["Finding Labels"][0].split("|")) - {"No Finding"}
    assert {d for d in NIH_PATHOLOGIES if row[d] == 1} == expected
    assert len(release.train_val) + len(release.test) == len(meta)
