"""Command-line spellings Hydra cannot take as written."""

from __future__ import annotations


def model_alias(argv: list[str]) -> list[str]:
    """`model=URI` as users write it, read as `model_uri=URI`: `model` is the model config group's name
    (cxr.train's `model=densenet121`), so Hydra would take `model=URI` for a group option."""
    return [f"model_uri={a[len('model=') :]}" if a.startswith("model=") else a for a in argv]
