"""Localisation on real X-rays: a model trained on nih-dev's train_val images, scored on its boxed test
images, against a random and a centre heatmap computed the same way, per finding, with intervals.

nih-dev (`$CXR_SHARED_DATA/nih-dev`, see its README) is laid out as an NIH folder in a temporary
directory (label file, split lists, `images/` as links, the box file filtered to its images); the
model is trained with `cxr.train` on that folder, which scores its localisation on the test split
like any run; the baselines are scored on the same (image, finding) pairs by the same code. Any
`cxr.train` override is passed through, so the run can use another recipe:

    python bench/localisation_nih_dev.py                       # small_cnn, 128 px (the default below)
    python bench/localisation_nih_dev.py experiment=nih_cpu    # the real-data recipe, once it exists
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from cxr.config import CONF_DIR, register_configs
from cxr.data.boxes import BOX_FRAME, COORDINATES
from cxr.data.nih import BBOX_FILE, TEST_LIST, TRAIN_VAL_LIST, read_bboxes
from cxr.evaluation.localisation import (
    centre_map,
    measures,
    random_maps,
    score_map,
    summarise,
)
from cxr.serving.gradcam import heatmap_at
from cxr.tracking import names as mn

DEFAULTS = [  # a small model that trains in minutes on 2 CPU cores; later overrides win
    "model=small_cnn",
    "dataset.image_size=128",
    "trainer.epochs=25",
    "trainer.batch_size=32",
    "callbacks.early_stopping.patience=6",
    "dataset.augment.shift_fraction=0.05",
    "dataset.augment.rotation_degrees=5",
]
CELLS = 10  # baseline maps' resolution before upsampling: DenseNet121's feature map at 320 px
PERCENTS = (5.0, 10.0, 20.0)
COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
]


def nih_folder(dev: Path, meta: Path, folder: Path) -> Path:
    """nih-dev as the NIH release lays it out, images linked (never copied)."""
    labels = pd.read_csv(dev / "labels.csv")
    (folder / "images").mkdir(parents=True)
    for path, name in zip(labels["path"], labels["Image Index"], strict=True):
        os.symlink(dev / path, folder / "images" / name)
    labels[COLUMNS].to_csv(folder / "Data_Entry_2017.csv", index=False)
    for split, listing in (("train_val", TRAIN_VAL_LIST), ("test", TEST_LIST)):
        names = labels.loc[labels["official_split"] == split, "Image Index"]
        (folder / listing).write_text("\n".join(names) + "\n")
    boxes = pd.read_csv(meta / BBOX_FILE)
    boxes[boxes["Image Index"].isin(labels["Image Index"])].to_csv(folder / BBOX_FILE, index=False)
    return folder


def baseline(pairs: pd.DataFrame, boxes: pd.DataFrame, maps: np.ndarray) -> pd.DataFrame:
    """The pairs scored with `maps` (one per pair, at CELLS x CELLS) instead of the model's heatmaps."""
    by_pair = {key: b[list(COORDINATES)].to_numpy() for key, b in boxes.groupby(["image_id", "finding"])}
    scored = [
        score_map(heatmap_at((BOX_FRAME, BOX_FRAME), m), by_pair[(image, finding)], 0.0, PERCENTS)
        for m, image, finding in zip(maps, pairs["image_id"], pairs["finding"], strict=True)
    ]
    return pairs[["image_id", "patient", "finding"]].assign(**pd.DataFrame(scored).to_dict("list"))


def interval(values: pd.Series | dict, name: str) -> str:
    """`0.42 [0.36, 0.48]`: a value with its interval bounds (`<name>_ci_low`, `<name>_ci_high`)."""
    return f"{values[name]:.2f} [{values[name + '_ci_low']:.2f}, {values[name + '_ci_high']:.2f}]"


def main(overrides: list[str]) -> None:
    shared = Path(os.environ.get("CXR_SHARED_DATA", "../shared/data"))
    work = Path(tempfile.mkdtemp(prefix="cxr-nih-dev-"))
    folder = nih_folder(shared / "nih-dev", shared / "nih-meta", work / "nih")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            [
                "dataset=nih",
                f"dataset.root={folder}",
                f"dataset.cache_dir={work}/prepared",
                f"tracking.uri=sqlite:///{work}/mlruns/mlflow.db",
                f"tracking.artifact_root={work}/mlruns/artifacts",
                f"output_dir={work}/output",
                "tracking.experiment_name=localisation-nih-dev",
                *DEFAULTS,
                *overrides,
            ],
        )
    from cxr.train import train  # heavy: Keras, MLflow

    train(cfg, overrides)
    client = MlflowClient(cfg.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment_name).experiment_id])
    pairs_csv = client.download_artifacts(
        run.info.run_id, mn.localisation_table(mn.TEST, "localisation_images")
    )
    pairs = pd.read_csv(pairs_csv)
    boxes = read_bboxes(folder / BBOX_FILE)
    names, b = measures(PERCENTS), cfg.evaluation.bootstrap
    findings = sorted(pairs["finding"].unique())
    scored = {
        "model": pairs,
        "random heatmap": baseline(pairs, boxes, random_maps(len(pairs), CELLS, 0)),
        "centre heatmap": baseline(pairs, boxes, np.repeat(centre_map(CELLS)[None], len(pairs), 0)),
    }
    reports = {k: summarise(v, findings, names, b.resamples, b.confidence, b.seed) for k, v in scored.items()}
    auc = run.data.metrics.get(mn.split_metric(mn.TEST, mn.AUC_MEAN), float("nan"))
    print(f"\nrun {run.info.run_id}: test mean AUC {auc:.3f}; overrides: {' '.join(DEFAULTS + overrides)}")
    for name in ("pointing", "iou_top10", "mass_in_box"):
        print(f"\n{name} [{b.confidence:.0%} CI, patients resampled]\n")
        print("| finding | boxed images | " + " | ".join(reports) + " |")
        print("|---|---|" + "---|" * len(reports))
        for finding in findings:
            cells = [interval(r.table.loc[finding], name) for r in reports.values()]
            n = int(reports["model"].table.loc[finding, "n_images"])
            print(f"| {finding} | {n} | " + " | ".join(cells) + " |")
        cells = [interval(r.summary, f"{name}_mean") for r in reports.values()]
        print(f"| mean over findings | {len(pairs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
