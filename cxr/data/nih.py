"""Reads ChestX-ray14 as the NIH ships it: label file, split lists and image folders.

The NIH column names are normalised here, once (`Image Index` -> `image_id`, `Patient ID` ->
`patient_id`, ...), so nothing downstream depends on one dataset's spelling; the user-facing
`split.csv` keeps the NIH names (see cxr.data.splits).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.labels import NIH_PATHOLOGIES, NO_FINDING
from cxr.runtime.errors import CxrError

LABEL_FILES = (
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
)
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
# NIH's columns -> cxr's names; only these are kept
COLUMNS = {
    "Image Index": "image_id",
    "Patient ID": "patient_id",
    "Follow-up #": "follow_up",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
}
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
BBOX_FILE = "BBox_List_2017.csv"
BBOX_SPELLING = {"Infiltrate": "Infiltration"}  # the box file's name for a label-file finding


@dataclass(frozen=True)
class NihRelease:
    """Metadata (one row per image, with its file path) and the official split lists."""

    metadata: pd.DataFrame  # image_id, patient_id, follow_up, age, sex, view, the pathologies, path
    train_val: list[str]
    test: list[str]
    root: Path
    pathologies: tuple[str, ...] = NIH_PATHOLOGIES

    def bounding_boxes(self) -> pd.DataFrame | None:
        """Expert boxes on some test images, when the release has them; read on demand (localisation)."""
        path = self.root / BBOX_FILE
        return read_bboxes(path) if path.is_file() else None


def find_label_file(root: Path) -> Path:
    for name in LABEL_FILES:
        if (root / name).is_file():
            return root / name
    raise CxrError(
        f"no NIH label file in {root}: expected one of {', '.join(LABEL_FILES)}; "
        "point dataset.root at the folder you unpacked ChestX-ray14 into"
    )


def parse_findings(
    findings: pd.Series, source: Path, pathologies: tuple[str, ...] = NIH_PATHOLOGIES
) -> np.ndarray:
    """'A|B' strings to the 0/1 matrix in the order of `pathologies`; 'No Finding' is all zeros."""
    index = {d: k for k, d in enumerate(pathologies)}
    out = np.zeros((len(findings), len(pathologies)), dtype=np.uint8)
    for row, text in enumerate(findings.fillna("").astype(str)):
        for label in text.split("|"):
            label = label.strip()
            if label == NO_FINDING:
                continue
            if label not in index:
                raise CxrError(
                    f"{source}, line {row + 2}: unknown label {label!r} in Finding Labels {text!r}; "
                    f"known labels: {', '.join(pathologies)} and {NO_FINDING!r}"
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
    blank = raw["Patient ID"].isna() | (raw["Patient ID"].astype(str).str.strip() == "")
    if blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0])
        raise CxrError(
            f"{path}, line {row + 2}: empty Patient ID for image {raw['Image Index'].iloc[row]!r} "
            f"({int(blank.sum())} such row(s)); every image needs its patient, or splits could put "
            "one patient's images in two splits: fill it in or remove the row"
        )
    dup = raw["Image Index"][raw["Image Index"].duplicated()]
    if len(dup):
        raise CxrError(f"{path}: {len(dup)} duplicate Image Index rows, first {dup.iloc[0]!r}")
    table = raw[[c for c in COLUMNS if c in raw.columns]].rename(columns=COLUMNS)
    table[list(NIH_PATHOLOGIES)] = parse_findings(raw["Finding Labels"], path)
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
    """image_id, finding (label-file spelling), x, y, w, h: one row per box."""
    raw = pd.read_csv(path, header=0)
    if raw.shape[1] < 6:
        raise CxrError(
            f"{path}: expected Image Index, Finding Label and 4 box columns, got {list(raw.columns)}"
        )
    boxes = raw.iloc[:, :6].copy()
    boxes.columns = ["image_id", "finding", "x", "y", "w", "h"]
    boxes["finding"] = boxes["finding"].replace(BBOX_SPELLING)
    unknown = sorted(set(boxes["finding"]) - set(NIH_PATHOLOGIES))
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
    paths = meta["image_id"].map(files)
    missing = meta.loc[paths.isna(), "image_id"]
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
    return NihRelease(meta, train_val, test, root)
