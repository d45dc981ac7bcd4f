"""Expert bounding boxes, placed on a prepared dataset: which row, which finding, where.

NIH's `BBox_List_2017.csv` gives boxes in the pixels of the released 1024 x 1024 PNGs (`BOX_FRAME`),
whatever the size of the copy on disk (nih-dev's files are 256 px) and *not* in the DICOM size the label
file records as `OriginalImage[Width,Height]` (1456 to 3056 px on the boxed images: the largest box
corner is 1022). So a box is kept in that frame (where localisation is scored, as `heatmap_at` brings a
map there) and scaled to the cache's side for drawing on the images the model saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

BOX_FRAME = 1024  # side of the square image the box file's coordinates refer to
COORDINATES = ("x", "y", "w", "h")  # top-left corner, width and height, in BOX_FRAME pixels


def place_boxes(
    boxes: pd.DataFrame | None, table: pd.DataFrame, pathologies: Sequence[str], image_size: int
) -> pd.DataFrame | None:
    """One row per box on an image of `table` with a finding among `pathologies`: `row` (the table's row
    index), image_id, finding, x, y, w, h (frame pixels) and x_px, y_px, w_px, h_px (at `image_size`).

    None when the dataset has no box file; an empty frame when none of its boxes falls on `table`.
    """
    if boxes is None:
        return None
    row_of = pd.Series(np.arange(len(table)), index=table["image_id"].to_numpy())
    kept = boxes[boxes["image_id"].isin(row_of.index) & boxes["finding"].isin(list(pathologies))].copy()
    kept.insert(0, "row", row_of.loc[kept["image_id"]].to_numpy(dtype=np.int64))
    scale = image_size / BOX_FRAME
    for name in COORDINATES:
        kept[name] = kept[name].astype(np.float64)
        kept[f"{name}_px"] = kept[name] * scale
    return kept.sort_values(["row", "finding"], kind="mergesort").reset_index(drop=True)
