"""The report card: one self-contained HTML page per evaluation (`report.html`), and `report.json` with
the same numbers for machines.

The page is rendered from a Jinja2 template shipped in the package (`templates/report.html.j2`); plots
are embedded as base64 PNG, so the file opens offline and in MLflow's artifact view.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cxr.data.splits import SPLIT_TITLES
from cxr.evaluation import plots as figures
from cxr.tracking import names as mn

if TYPE_CHECKING:
    from cxr.evaluation.report import Evaluation

TEMPLATE = "report.html.j2"
INTENDED_USE = (
    "Research on chest X-ray classification: ranking and flagging frontal chest radiographs for the 14 "
    "ChestX-ray14 findings. Not a medical device; not for diagnosis without a radiologist's read."
)
CAVEATS = (
    "NIH ChestX-ray14 labels were text-mined from radiology reports (NLP, estimated above 90% accurate by "
    "its authors); radiologist re-reads of samples found many labels wrong, so AUCs measure agreement with "
    "noisy labels, not with ground truth.",
    "Findings co-occur and some are barely visible on a frontal film (Pneumonia, Infiltration): a high AUC "
    "may partly come from correlated findings, devices or the view position rather than the finding itself.",
    "Patients of one hospital (NIH Clinical Center, 1992-2015): performance elsewhere is not known.",
    "Subgroup gaps are the largest of several group differences, so they are biased upward; read them with "
    "their intervals.",
)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities as null, NumPy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(frame: pd.DataFrame | None) -> list[dict]:
    if frame is None or frame.empty:
        return []
    return _clean(frame.reset_index().to_dict(orient="records"))


POOLED = "mean over findings"


def localisation(metrics: Mapping[str, float], split: str) -> dict:
    """The split's localisation scores (`test/localisation/...` metrics) as a table for the card:
    `measures` in order, and per finding (the pooled row first) each measure's [value, low, high];
    empty where the run scored none."""
    cells: dict[str, dict[str, dict[str, float]]] = {}
    for name, value in metrics.items():
        parsed = mn.parse_localisation(split, name)
        if parsed is None:
            continue
        finding, measure = parsed
        base = measure.removesuffix(mn.CI_LOW).removesuffix(mn.CI_HIGH)
        part = measure[len(base) :] or "value"
        cells.setdefault(finding or POOLED, {}).setdefault(base, {})[part] = value
    if not cells:
        return {}
    measures = list(dict.fromkeys(m for row in cells.values() for m in row))
    order = [POOLED, *sorted(f for f in cells if f != POOLED)] if POOLED in cells else sorted(cells)
    rows = [
        {
            "finding": f,
            "cells": [
                [cells[f].get(m, {}).get(k) for k in ("value", mn.CI_LOW, mn.CI_HIGH)] for m in measures
            ],
        }
        for f in order
    ]
    return {"measures": measures, "rows": rows}


def document(
    evaluation: Evaluation, identity: Mapping[str, Any], gates: Sequence[Mapping[str, Any]] = ()
) -> dict:
    """report.json: who the model is, and every number of the evaluation (`metrics` as logged)."""
    cfg = evaluation.settings
    splits = {}
    for split, table in evaluation.tables.items():
        se = evaluation.evidence.splits[split] if evaluation.evidence else None
        summary = {
            k.split("/", 1)[1]: v
            for k, v in evaluation.metrics.items()
            if k.startswith(f"{split}/") and k.count("/") == 1
        }
        splits[split] = {
            "title": SPLIT_TITLES.get(split, split).capitalize(),
            "n_images": int(len(evaluation.predictions[split].labels)),
            "summary": summary,
            "calibration": se.pooled if se else {},
            "per_finding": _records(table.rename_axis("disease")),
            "operating_points": _records(se.operating_points) if se else [],
            "subgroups": _records(se.subgroups.table) if se and se.subgroups else [],
            "gaps": _records(se.subgroups.gaps) if se and se.subgroups else [],
            "excluded": se.subgroups.excluded if se and se.subgroups else {},
            "localisation": localisation(evaluation.metrics, split),
        }
    return _clean(
        {
            "model": {
                "title": identity.get("title", "model"),
                **{k: v for k, v in identity.items() if k != "title"},
            },
            "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "intended_use": INTENDED_USE,
            "caveats": list(CAVEATS),
            "threshold_method": evaluation.thresholds.get("method"),
            "ece_bins": cfg.get("ece_bins"),
            "flag_gap": cfg.get("flag_gap"),
            "min_positives": cfg.get("min_positives"),
            "gates": list(gates),
            "thresholds": evaluation.thresholds,
            "splits": splits,
            "metrics": evaluation.metrics,
        }
    )


_FIGURES = {  # artifact name -> (caption, how to draw it when the evaluation logged no plots)
    "roc": ("ROC", lambda p, names, bins, caption: figures.roc_figure(p.labels, p.scores, names, caption)),
    "precision_recall": (
        "Precision-recall",
        lambda p, names, bins, caption: figures.precision_recall_figure(p.labels, p.scores, names, caption),
    ),
    "reliability": (
        "Reliability",
        lambda p, names, bins, caption: figures.reliability_figure(p.labels, p.scores, names, bins, caption),
    ),
}


def plots(evaluation: Evaluation, drawn: Mapping[str, bytes] | None = None) -> dict[str, dict[str, str]]:
    """Per split: ROC, precision-recall and reliability diagrams as base64 PNG. Given `drawn` (the PNGs an
    evaluation logged, by artifact path), those only, so the card costs no drawing of its own; without it,
    all drawn here."""
    names, bins = evaluation.pathologies, evaluation.settings.get("ece_bins", 15)
    out: dict[str, dict[str, str]] = {}
    for split, p in evaluation.predictions.items():
        title = SPLIT_TITLES.get(split, split)
        out[split] = {}
        for kind, (what, draw) in _FIGURES.items():
            caption = f"{what}, {title} set"
            png = drawn.get(f"plots/{kind}_{split}.png") if drawn is not None else None
            if drawn is None:
                png = figures.png_bytes(draw(p, names, bins, caption))
            if png:
                out[split][caption] = base64.b64encode(png).decode("ascii")
    return out


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float | int) else str(value)


def render_html(doc: dict, images: Mapping[str, Mapping[str, str]]) -> str:
    """The page: `doc` (report.json) with each split's embedded plots."""
    import jinja2  # here: only evaluations that write a card need it

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )
    env.filters["num"] = _num
    view = json.loads(json.dumps(doc))
    for split, s in view["splits"].items():
        s["plots"] = dict(images.get(split, {}))
    return env.get_template(TEMPLATE).render(doc=view)
