"""Reads ChestX-ray14 as the NIH ships it: label file, split lists and image folders."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.errors import CxrError
from cxr.labels import DISEASES, NO_FINDING

LABEL_FILES = (
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
)
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
KEPT_COLUMNS = ("Follow-up #", "Patient Age", "Patient Gender", "View Position")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
BBOX_FILE = "BBox_List_2017.csv"
BBOX_SPELLING = {"Infiltrate": "Infiltration"}  # the box file's name for a label-file finding


@dataclass(frozen=True)
class NihRelease:
    """Metadata (one row per image, with its file path) and the official split lists."""

    metadata: pd.DataFrame
    train_val: list[str]
    test: list[str]
    root: Path
    bboxes: pd.DataFrame | None = None  # expert boxes on some test images, when the release has them


def find_label_file(root: Path) -> Path:
    for name in LABEL_FILES:
        if (root / name).is_file():
            return root / name
    raise CxrError(
        f"no NIH label file in {root}: expected one of {', '.join(LABEL_FILES)}; "
        "point dataset.root at the folder you unpacked ChestX-ray14 into"
    )


def parse_findings(findings: pd.Series, source: Path) -> np.ndarray:
    """'A|B' strings to the 0/1 matrix in canonical order; 'No Finding' is all zeros."""
    index = {d: k for k, d in enumerate(DISEASES)}
    out = np.zeros((len(findings), len(DISEASES)), dtype=np.uint8)
    for row, text in enumerate(findings.fillna("").astype(str)):
        for label in text.split("|"):
            label = label.strip()
            if label == NO_FINDING:
                continue
            if label not in index:
                raise CxrError(
                    f"{source}, line {row + 2}: unknown label {label!r} in Finding Labels {text!r}; "
                    f"known labels: {', '.join(DISEASES)} and {NO_FINDING!r}"
                )
            out[row, index[label]] = 1
    return out


def read_label_file(path: Path) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, dtype={"Image Index": str, "Finding Labels": str})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise CxrError(f"cannot read label file {path}: {err}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise CxrError(f"{path} lacks the column(s) {missing}; it has {list(raw.columns)}")
    dup = raw["Image Index"][raw["Image Index"].duplicated()]
    if len(dup):
        raise CxrError(f"{path}: {len(dup)} duplicate Image Index rows, first {dup.iloc[0]!r}")
    table = raw[[c for c in (*REQUIRED_COLUMNS, *KEPT_COLUMNS) if c in raw.columns]].copy()
    table[list(DISEASES)] = parse_findings(raw["Finding Labels"], path)
    return table.reset_index(drop=True)


def find_images(root: Path) -> dict[str, Path]:
    """Image name -> file, from images/ or the images_001/images ... folders of the tarballs."""
    folders = [root / "images"] + sorted(p / "images" for p in root.glob("images_*") if p.is_dir())
    found: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.endswith(".png"):
                        found[entry.name] = Path(entry.path)
    return found


def read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise CxrError(f"split list {path} not found; the NIH release ships {TRAIN_VAL_LIST} and {TEST_LIST}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_bboxes(path: Path) -> pd.DataFrame:
    """Image Index, Finding Label (label-file spelling), x, y, w, h: one row per box."""
    raw = pd.read_csv(path, header=0)
    if raw.shape[1] < 6:
        raise CxrError(f"{path}: expected Image Index, Finding Label and 4 box columns, got {list(raw.columns)}")
    boxes = raw.iloc[:, :6].copy()
    boxes.columns = ["Image Index", "Finding Label", "x", "y", "w", "h"]
    boxes["Finding Label"] = boxes["Finding Label"].replace(BBOX_SPELLING)
    unknown = sorted(set(boxes["Finding Label"]) - set(DISEASES))
    if unknown:
        raise CxrError(f"{path}: unknown finding(s) {unknown}")
    return boxes


def load_release(root: str | os.PathLike, allow_missing_images: bool = False) -> NihRelease:
    """The release under `root`; images listed but absent are an error unless allowed, then dropped."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CxrError(f"dataset folder {root} does not exist; set dataset.root to the ChestX-ray14 folder")
    label_file = find_label_file(root)
    meta = read_label_file(label_file)
    files = find_images(root)
    paths = meta["Image Index"].map(files)
    missing = meta.loc[paths.isna(), "Image Index"]
    train_val, test = read_list(root / TRAIN_VAL_LIST), read_list(root / TEST_LIST)
    if len(missing):
        where = f"{root}/images or {root}/images_*/images"
        summary = f"{len(missing)} of {len(meta)} images listed in {label_file.name} are not under {where}"
        first = ", ".join(missing.iloc[:5])
        if not allow_missing_images:
            raise CxrError(
                f"{summary} (first: {first}); unpack all image tarballs there, "
                "or pass dataset.allow_missing_images=true to train on the images present"
            )
        print(f"cxr: warning: {summary}; going on without them (first: {first})", file=sys.stderr)
        absent = set(missing)
        meta = meta[paths.notna()].reset_index(drop=True)
        paths = paths[paths.notna()].reset_index(drop=True)
        train_val = [n for n in train_val if n not in absent]
        test = [n for n in test if n not in absent]
    meta["path"] = paths.astype(str)
    bboxes = read_bboxes(root / BBOX_FILE) if (root / BBOX_FILE).is_file() else None
    return NihRelease(meta, train_val, test, root, bboxes)
