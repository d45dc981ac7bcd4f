"""NIH ChestX-ray14's 14 findings in their canonical order.

Only the NIH reader and the synthetic generator read this list; everything downstream (splits,
models, evaluation, plots, reporting) takes the `pathologies` a dataset carries, as torchxrayvision
does, so another dataset with other findings needs no change there.
"""

from __future__ import annotations

NIH_PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"

# Image-level prevalence in the full NIH release (counts / 112,120), used by the synthetic generator.
NIH_PREVALENCE: dict[str, float] = {
    "Atelectasis": 11559 / 112120,
    "Cardiomegaly": 2776 / 112120,
    "Effusion": 13317 / 112120,
    "Infiltration": 19894 / 112120,
    "Mass": 5782 / 112120,
    "Nodule": 6331 / 112120,
    "Pneumonia": 1431 / 112120,
    "Pneumothorax": 5302 / 112120,
    "Consolidation": 4667 / 112120,
    "Edema": 2303 / 112120,
    "Emphysema": 2516 / 112120,
    "Fibrosis": 1686 / 112120,
    "Pleural_Thickening": 3385 / 112120,
    "Hernia": 227 / 112120,
}
