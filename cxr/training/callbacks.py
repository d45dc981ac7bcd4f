"""Keras callbacks built from the `callbacks` config group."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import keras

from cxr.tracking.names import AUC, HISTORY_ARTIFACT, VALIDATION_PREFIX

if TYPE_CHECKING:
    from cxr.config import CallbacksConfig  # a type only: config sits above training


def monitored(cfg: CallbacksConfig, pruner_monitor: str | None = None) -> str:
    """`monitored early stopping: val_auc (max), ...`: what each enabled callback (and a sweep's pruner)
    reads, printed before training so nobody has to guess which number stops or chooses a model."""
    readers = [
        (label, node.monitor, f" ({node.mode})")
        for label, node in (
            ("early stopping", cfg.early_stopping),
            ("reduce_lr", cfg.reduce_lr),
            ("checkpoint", cfg.checkpoint),
        )
        if node.enabled
    ]
    if pruner_monitor:
        readers.append(("pruner", pruner_monitor, ""))
    line = "monitored " + (", ".join(f"{label}: {m}{mode}" for label, m, mode in readers) or "by nothing")
    if any(m == VALIDATION_PREFIX + AUC for _, m, _ in readers):
        line += f" ({VALIDATION_PREFIX}{AUC}: mean over findings with positives and negatives in validation)"
    return line


def build_callbacks(cfg: CallbacksConfig, output_dir: Path) -> list[keras.callbacks.Callback]:
    out: list[keras.callbacks.Callback] = []
    es, lr, ck = cfg.early_stopping, cfg.reduce_lr, cfg.checkpoint
    if es.enabled:
        out.append(
            keras.callbacks.EarlyStopping(
                monitor=es.monitor,
                mode=es.mode,
                patience=es.patience,
                min_delta=es.min_delta,
                restore_best_weights=es.restore_best_weights,
                verbose=1,
            )
        )
    if lr.enabled:
        out.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=lr.monitor,
                mode=lr.mode,
                factor=lr.factor,
                patience=lr.patience,
                min_delta=lr.min_delta,
                min_lr=lr.min_lr,
                verbose=1,
            )
        )
    if ck.enabled:
        folder = output_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        out.append(
            keras.callbacks.ModelCheckpoint(
                str(folder / ck.filename), monitor=ck.monitor, mode=ck.mode, save_best_only=ck.save_best_only
            )
        )
    if cfg.csv_history:
        out.append(keras.callbacks.CSVLogger(str(output_dir / HISTORY_ARTIFACT)))
    return out
