"""Command-line words as users write them, before Hydra reads them."""

from __future__ import annotations


def model_alias(argv: list[str]) -> list[str]:
    """`model=URI` as users write it, read as `model_uri=URI`: `model` is the model config group's name
    (cxr.train's `model=densenet121`), so Hydra would take `model=URI` for a group option. cxr.predict,
    cxr.report and cxr.app take a model URI this way."""
    return [f"model_uri={a[len('model=') :]}" if a.startswith("model=") else a for a in argv]
