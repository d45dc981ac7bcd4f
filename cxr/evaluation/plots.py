"""Figures logged with every evaluation: ROC and precision-recall curves, confusion matrices, history.

Each function returns a matplotlib Figure (Agg backend, no display needed); callers save or log it.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import auc as area  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

_GRID = np.linspace(0.0, 1.0, 201)


def _defined(y: np.ndarray) -> list[int]:
    return [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]


def roc_figure(y: np.ndarray, s: np.ndarray, pathologies: Sequence[str], title: str) -> plt.Figure:
    """One ROC curve per disease plus the micro average (pooled pairs) and macro average (mean curve)."""
    fig, ax = plt.subplots(figsize=(8, 7))
    cmap = plt.get_cmap("tab20")
    curves = []
    for k in _defined(y):
        fpr, tpr, _ = roc_curve(y[:, k], s[:, k])
        curves.append(np.interp(_GRID, fpr, tpr))
        ax.plot(fpr, tpr, lw=1, color=cmap(k), label=f"{pathologies[k]} ({area(fpr, tpr):.3f})")
    if curves:
        macro = np.mean(curves, axis=0)
        macro[0] = 0.0
        ax.plot(_GRID, macro, lw=2.5, color="black", label=f"macro average ({area(_GRID, macro):.3f})")
        fpr, tpr, _ = roc_curve(y.ravel(), s.ravel())
        ax.plot(fpr, tpr, lw=2.5, ls="--", color="dimgray", label=f"micro average ({area(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="gray", lw=1)
    ax.set(xlabel="False-positive rate (1 - specificity)", ylabel="Sensitivity", title=title)
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def precision_recall_figure(
    y: np.ndarray, s: np.ndarray, pathologies: Sequence[str], title: str
) -> plt.Figure:
    """Precision-recall curves per disease; each dotted line is that disease's prevalence (chance level)."""
    fig, ax = plt.subplots(figsize=(8, 7))
    cmap = plt.get_cmap("tab20")
    for k in _defined(y):
        precision, recall, _ = precision_recall_curve(y[:, k], s[:, k])
        ax.step(recall, precision, where="post", lw=1, color=cmap(k), label=pathologies[k])
        ax.axhline(y[:, k].mean(), color=cmap(k), ls=":", lw=0.6)
    ax.set(xlabel="Recall (sensitivity)", ylabel="Precision (PPV)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def confusion_figure(counts: pd.DataFrame, title: str) -> plt.Figure:
    """A 2x2 matrix per disease: rows are the true label, columns the prediction at its threshold."""
    fig, axes = plt.subplots(3, 5, figsize=(15, 9.5))
    for ax, (disease, row) in zip(axes.flat, counts.iterrows(), strict=False):
        matrix = np.array([[row.tn, row.fp], [row.fn, row.tp]])
        ax.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:d}", ha="center", va="center", fontsize=9)
        ax.set_title(disease, fontsize=9)
        ax.set_xticks([0, 1], ["negative", "positive"], fontsize=7)
        ax.set_yticks([0, 1], ["negative", "positive"], fontsize=7)
        ax.set_xlabel("Predicted", fontsize=8)
        ax.set_ylabel("Actual", fontsize=8)
    for ax in list(axes.flat)[len(counts) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def history_figure(history: pd.DataFrame) -> plt.Figure:
    """One panel per metric Keras logged, training and validation together, epochs on x."""
    names = [c for c in history.columns if c not in ("epoch",) and not c.startswith("val_")]
    cols = min(4, max(1, len(names)))
    rows = int(np.ceil(len(names) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    epochs = history["epoch"] + 1 if "epoch" in history else np.arange(1, len(history) + 1)
    for ax, name in zip(axes.flat, names, strict=False):
        ax.plot(epochs, history[name], marker=".", label="train" if name != "learning_rate" else name)
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], marker=".", label="validation")
        ax.set(title=name, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "learning_rate":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def reliability_figure(
    y: np.ndarray, s: np.ndarray, pathologies: Sequence[str], bins: int, title: str
) -> plt.Figure:
    """A reliability diagram per finding (equal-mass bins: observed rate against mean score) and pooled."""
    from cxr.evaluation.calibration import reliability  # here: plots stays importable on its own

    panels = [(name, y[:, k], s[:, k]) for k, name in enumerate(pathologies)] + [
        ("pooled", y.ravel(), s.ravel())
    ]
    rows = int(np.ceil(len(panels) / 5))
    fig, axes = plt.subplots(rows, 5, figsize=(15, 3.2 * rows), squeeze=False)
    for ax, (name, yk, sk) in zip(axes.flat, panels, strict=False):
        r = reliability(yk, sk, bins)
        top = max(0.05, float(np.nanmax(np.r_[r.confidence, r.observed, 0.0])) * 1.05)
        ax.plot([0, top], [0, top], ls=":", color="gray", lw=1)
        ax.plot(r.confidence, r.observed, marker="o", ms=3, lw=1)
        ax.set_title(f"{name} (ECE {r.ece:.3f})", fontsize=9)
        ax.set(xlim=(0, top), ylim=(0, top))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.supxlabel("Mean predicted probability (bin)")
    fig.supylabel("Observed rate")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def png_bytes(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes (closed after)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
