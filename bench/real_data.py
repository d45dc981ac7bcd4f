"""Real NIH images on a CPU: cxr's commands on nih-dev against classical baselines (issue 20).

Lays `$CXR_SHARED_DATA/nih-dev` out as an NIH folder in a temporary directory (images linked, not
copied), then runs what a user would: `cxr.prepare`, `cxr.train -m seed=...` for each variant (the
defaults, `experiment=nih_cpu`, and with --ablation the recipe with one ingredient taken out at a
time), and `cxr.ensemble` over the recipe's versions. In the same run it fits the classical
baselines on the same cache and split, and prints per-finding and mean test AUC with 95%
patient-bootstrap intervals for each, on the findings with at least 3 positives and 3 negatives in
both the official train_val and test lists.

    CXR_SHARED_DATA=../shared/data python bench/real_data.py [--size 64] [--seeds 0 1 2] [--ablation]
        [--folds 5]

--folds K also trains the recipe as K fold models (`dataset.split=kfold`, each validated on its own
K-th of train_val, trained on the rest) and scores their fold ensemble (`cxr.ensemble members=folds`)
beside the seed ensemble of the single split.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.labels import NIH_PATHOLOGIES
from cxr.evaluation.scoring import SplitReport, evaluate_split

REPO = Path(__file__).resolve().parent.parent
MODEL_PREFIX = "bench"
# One ingredient of the recipe set back to cxr's default at a time (--ablation).
ABLATIONS: dict[str, list[str]] = {
    "no augmentation": [
        "dataset.augment.rotation_degrees=0",
        "dataset.augment.shift_fraction=0",
        "dataset.augment.brightness=0",
        "dataset.augment.contrast=0",
    ],
    "small_cnn's default 3 blocks": ["model.filters=[16,32,64]", "model.dense_units=64", "model.dropout=0.2"],
    "constant learning rate": ["trainer.optimizer.schedule=constant", "trainer.optimizer.warmup_epochs=0"],
    "10 epochs": ["trainer.epochs=10"],
    "batch 32": ["trainer.batch_size=32"],
    "validation share 0.1": ["dataset.val_fraction=0.1"],
    "early stopping on val_auc": [
        "callbacks.early_stopping.enabled=true",
        "callbacks.early_stopping.patience=10",
    ],
}


@dataclass
class Scored:
    """One method's test scores and, for a trained model, its validation mean AUC (what ranks it)."""

    name: str
    scores: np.ndarray  # (test images, 14)
    val_auc: float = float("nan")


# ------------------------------------------------------------------ the data
def lay_out(source: Path, folder: Path) -> Path:
    """nih-dev as an NIH release folder: Data_Entry_2017.csv, the two lists, images/ (symbolic links)."""
    labels = pd.read_csv(source / "labels.csv")
    (folder / "images").mkdir(parents=True)
    for path, name in zip(labels["path"], labels["Image Index"], strict=True):
        (folder / "images" / name).symlink_to(source / path)
    columns = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender"]
    labels[columns + ["View Position"]].to_csv(folder / "Data_Entry_2017.csv", index=False)
    for split, listing in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
        names = labels.loc[labels["official_split"] == split, "Image Index"]
        (folder / listing).write_text("\n".join(names) + "\n")
    return folder


def scored_findings(labels: np.ndarray, is_test: np.ndarray, minimum: int = 3) -> list[int]:
    """Columns with at least `minimum` positives and negatives among both train_val and test images."""
    keep = []
    for k in range(labels.shape[1]):
        sides = [labels[~is_test, k], labels[is_test, k]]
        if all(side.sum() >= minimum and (1 - side).sum() >= minimum for side in sides):
            keep.append(k)
    return keep


# ------------------------------------------------------------------ cxr, as a user runs it
def cxr(module: str, *args: str, env: dict[str, str]) -> str:
    """`python -m <module> <args>`; its output, or the tail of it in the exception when it fails."""
    command = [sys.executable, "-m", module, *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout + done.stderr


def logged_data(uri: str, model_name: str):
    """The prepared data (cache and split) the first version of `model_name` was trained on."""
    import mlflow
    from mlflow import MlflowClient

    from cxr.data.prepared import load_prepared
    from cxr.tracking import runs
    from cxr.tracking.versions import ranked_versions

    mlflow.set_tracking_uri(uri)
    run_cfg, split = runs.logged_run_inputs(ranked_versions(MlflowClient(uri), model_name)[0].run_id)
    return load_prepared(run_cfg.dataset, split, warn=False)


def registered_scores(uri: str, model_name: str) -> list[Scored]:
    """Every version of `model_name`: its test scores on the split it logged, and its val mean AUC."""
    import mlflow
    from mlflow import MlflowClient

    from cxr.serving import pyfunc
    from cxr.serving.inference import predict_model_splits
    from cxr.tracking import runs
    from cxr.tracking.versions import ranked_versions

    mlflow.set_tracking_uri(uri)
    out = []
    for candidate in ranked_versions(MlflowClient(uri), model_name):
        model = pyfunc.load(candidate.uri)
        run_cfg, split = runs.logged_run_inputs(candidate.run_id)
        predictions, _ = predict_model_splits(model, run_cfg.dataset, ["test"], 64, split)
        out.append(Scored(f"{model_name} v{candidate.version}", predictions["test"].scores, candidate.score))
    return out


# ------------------------------------------------------------------ classical baselines
def pixel_pca_logistic(x_train, y_train, x_test, columns: list[int]) -> np.ndarray:
    """The nih-dev README's reference: 64 principal components of the 64 px pixels, balanced LR, C=0.05."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = make_pipeline(StandardScaler(), PCA(64, random_state=0))
    train, test = features.fit_transform(_resized(x_train, 64)), features.transform(_resized(x_test, 64))
    return _per_finding(
        lambda: LogisticRegression(C=0.05, class_weight="balanced", max_iter=5000),
        train,
        y_train,
        test,
        columns,
    )


def hog_logistic(x_train, y_train, x_test, columns: list[int]) -> np.ndarray:
    """Histograms of oriented gradients (8 px cells of a 64 px image, 9 unsigned orientations, each
    cell normalised) with a balanced, strongly regularised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = hog(_resized(x_train, 64)), hog(_resized(x_test, 64))
    model = lambda: make_pipeline(  # noqa: E731
        StandardScaler(), LogisticRegression(C=0.002, class_weight="balanced", max_iter=5000)
    )
    return _per_finding(model, train, y_train, test, columns)


def hog(images: np.ndarray, cell: int = 8, bins: int = 9) -> np.ndarray:
    """(N, side*side) pixels -> (N, cells * bins) gradient-orientation histograms, L2-normalised per cell."""
    n = len(images)
    side = int(round(np.sqrt(images.shape[1])))
    x = images.reshape(n, side, side).astype(np.float32)
    gy, gx = np.gradient(x, axis=(1, 2))
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    which = np.minimum((angle / np.pi * bins).astype(int), bins - 1)
    cells = side // cell
    out = np.zeros((n, cells, cells, bins), np.float32)
    rows, cols = np.divmod(np.arange(side * side), side)
    cell_index = (rows // cell * cells + cols // cell).reshape(side, side)
    flat = out.reshape(n, cells * cells * bins)
    target = cell_index[None] * bins + which
    for i in range(n):
        np.add.at(flat[i], target[i].ravel(), magnitude[i].ravel())
    flat /= np.linalg.norm(out, axis=-1).reshape(n, -1).repeat(bins, axis=1) + 1e-6
    return flat


def _resized(images: np.ndarray, side: int) -> np.ndarray:
    """(N, H, W[, 1]) uint8 -> (N, side*side) floats in [0, 1], area-averaged (H a multiple of side)."""
    x = images.reshape(len(images), images.shape[1], images.shape[2]).astype(np.float32) / 255.0
    f = x.shape[1] // side
    if f > 1:
        x = x[:, : side * f, : side * f].reshape(len(x), side, f, side, f).mean(axis=(2, 4))
    return x.reshape(len(x), -1)


def _per_finding(make, train, y_train, test, columns: list[int]) -> np.ndarray:
    scores = np.full((len(test), y_train.shape[1]), 0.5)
    for k in columns:
        scores[:, k] = make().fit(train, y_train[:, k]).predict_proba(test)[:, 1]
    return scores


# ------------------------------------------------------------------ the tables
def report(scored: Scored, y, patients, columns: list[int], resamples: int) -> SplitReport:
    names = [NIH_PATHOLOGIES[k] for k in columns]
    return evaluate_split(y[:, columns], scored.scores[:, columns], patients, names, resamples, 0.95, 0)


AUC = ("auc", "auc_ci_low", "auc_ci_high")


def interval(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def mean_interval(r: SplitReport) -> str:
    return interval(*(r.summary[f"{k.replace('auc', 'auc_mean', 1)}"] for k in AUC))


def per_finding_table(reports: dict[str, SplitReport]) -> str:
    names = list(reports)
    lines = ["| finding (test positives) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    first = next(iter(reports.values())).table
    for disease in first.index:
        cells = [
            interval(*r.table.loc[disease, ["auc", "auc_ci_low", "auc_ci_high"]]) for r in reports.values()
        ]
        lines.append(f"| {disease} ({first.loc[disease, 'n_positive']}) | " + " | ".join(cells) + " |")
    means = [
        interval(*(r.summary[k] for k in ("auc_mean", "auc_mean_ci_low", "auc_mean_ci_high")))
        for r in reports.values()
    ]
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines)


def summary_table(groups: dict[str, list[tuple[Scored, SplitReport]]], baseline: float) -> str:
    lines = [
        "| method | runs | mean test AUC over runs (sd) | each run: mean AUC [95% CI] | vs pixel baseline |",
        "|---|---|---|---|---|",
    ]
    for name, runs_ in groups.items():
        means = np.array([r.summary["auc_mean"] for _, r in runs_])
        each = "; ".join(mean_interval(r) for _, r in runs_)
        sd = f" ({means.std(ddof=1):.3f})" if len(means) > 1 else ""
        lines.append(
            f"| {name} | {len(means)} | {means.mean():.3f}{sd} | {each} | {means.mean() - baseline:+.3f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ the run
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=os.environ.get("CXR_SHARED_DATA", ""), help="the shared data folder"
    )
    parser.add_argument("--size", type=int, default=64, help="dataset.image_size")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="for the recipe")
    parser.add_argument(
        "--default-seeds", type=int, nargs="+", default=[0, 1, 2], help="for cxr's defaults and ablations"
    )
    parser.add_argument("--epochs", type=int, default=None, help="trainer.epochs for every variant")
    parser.add_argument(
        "--ablation",
        nargs="*",
        choices=list(ABLATIONS),
        default=None,
        help="also the recipe with these ingredients set back, one at a time (all when none is named)",
    )
    parser.add_argument("--no-defaults", action="store_true", help="leave out the run with cxr's defaults")
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="also the recipe as K fold models (dataset.split=kfold, default seed) and their ensemble",
    )
    parser.add_argument("--resamples", type=int, default=1000, help="patient-bootstrap resamples")
    parser.add_argument("--work", default=None, help="keep the release, cache and store here")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every training run")
    args = parser.parse_args()
    if not args.data:
        sys.exit("set CXR_SHARED_DATA or --data to the shared data folder (it holds nih-dev/)")

    started = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="cxr-real-"))
    release = lay_out(Path(args.data) / "nih-dev", work / "release")
    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CXR_NIH_ROOT": str(release)}
    common = [
        "dataset=nih",
        f"dataset.root={release}",
        f"dataset.image_size={args.size}",
        f"dataset.cache_dir={work}/prepared",
    ]
    cxr("cxr.prepare", *common, f"hydra.run.dir={work}/outputs/prepare", env=env)

    variants: dict[str, list[str]] = {} if args.no_defaults else {"cxr defaults": []}
    variants["experiment=nih_cpu"] = ["experiment=nih_cpu"]
    if args.ablation is not None:
        chosen = args.ablation or list(ABLATIONS)
        variants.update({f"nih_cpu, {k}": ["experiment=nih_cpu", *ABLATIONS[k]] for k in chosen})
    tracking = [
        f"tracking.uri={uri}",
        f"tracking.artifact_root={work}/mlruns/artifacts",
        "evaluation.plots=false",
        "trainer.verbose=0",
        *([f"trainer.epochs={args.epochs}"] if args.epochs else []),
        *args.set,
    ]
    timings = {}
    for i, (name, overrides) in enumerate(variants.items()):
        chosen_seeds = args.seeds if name == "experiment=nih_cpu" else args.default_seeds
        seeds = "seed=" + ",".join(map(str, chosen_seeds))
        t0 = time.perf_counter()
        model_name = f"{MODEL_PREFIX}-{i}"
        sweep_dir = f"hydra.sweep.dir={work}/outputs/train-{i}"
        registered = f"tracking.registered_model_name={model_name}"
        cxr("cxr.train", "-m", *overrides, *common, *tracking, registered, seeds, sweep_dir, env=env)
        timings[name] = time.perf_counter() - t0
        print(f"trained {name}: {seeds} in {timings[name]:.0f} s", flush=True)
    recipe = f"{MODEL_PREFIX}-{list(variants).index('experiment=nih_cpu')}"
    ensemble_args = [f"model_name={recipe}", f"ensemble_name={recipe}-ensemble", f"tracking.uri={uri}"]
    ensemble_args += [f"tracking.artifact_root={work}/mlruns/artifacts", "evaluation.plots=false"]
    cxr("cxr.ensemble", *ensemble_args, f"hydra.run.dir={work}/outputs/ensemble", env=env)
    folds = f"{MODEL_PREFIX}-folds"
    if args.folds:
        t0 = time.perf_counter()
        kfold = ["dataset.split=kfold", f"dataset.folds={args.folds}"]
        fold_list = "dataset.fold=" + ",".join(map(str, range(args.folds)))
        registered = f"tracking.registered_model_name={folds}"
        sweep_dir = f"hydra.sweep.dir={work}/outputs/train-folds"
        cxr("cxr.train", "-m", "experiment=nih_cpu", *kfold, *common, *tracking, registered, fold_list,
            sweep_dir, env=env)  # fmt: skip
        timings[f"{args.folds} fold models"] = time.perf_counter() - t0
        fold_args = ["members=folds", f"model_name={folds}", f"ensemble_name={folds}-ensemble"]
        fold_args += ensemble_args[2:]
        cxr("cxr.ensemble", *fold_args, f"hydra.run.dir={work}/outputs/ensemble-folds", env=env)

    # the cache and split the recipe's runs used, for the baselines and the labels
    data = logged_data(uri, recipe)
    fit_rows = np.concatenate([data.rows["train"], data.rows["val"]])  # the official train_val list
    test_rows = data.rows["test"]
    is_test = np.zeros(len(data.labels), bool)
    is_test[test_rows] = True
    used = np.concatenate([fit_rows, test_rows])
    columns = scored_findings(data.labels[used], is_test[used])
    y, patients = data.labels[test_rows], data.patients[test_rows]
    x_fit, y_fit, x_test = data.images[fit_rows], data.labels[fit_rows], data.images[test_rows]

    groups: dict[str, list[tuple[Scored, SplitReport]]] = {}
    for name, method in (("pixel PCA + logistic", pixel_pca_logistic), ("HOG + logistic", hog_logistic)):
        scored = Scored(name, method(x_fit, y_fit, x_test, columns))
        groups[name] = [(scored, report(scored, y, patients, columns, args.resamples))]
    for i, name in enumerate(variants):
        members = registered_scores(uri, f"{MODEL_PREFIX}-{i}")
        groups[name] = [(m, report(m, y, patients, columns, args.resamples)) for m in members]
    ensemble = registered_scores(uri, f"{recipe}-ensemble")[0]
    groups["nih_cpu top-5 ensemble"] = [(ensemble, report(ensemble, y, patients, columns, args.resamples))]
    if args.folds:
        fold_models = registered_scores(uri, folds)
        groups[f"nih_cpu, {args.folds} fold models"] = [
            (m, report(m, y, patients, columns, args.resamples)) for m in fold_models
        ]
        fold_ensemble = registered_scores(uri, f"{folds}-ensemble")[0]
        groups[f"nih_cpu {args.folds}-fold ensemble"] = [
            (fold_ensemble, report(fold_ensemble, y, patients, columns, args.resamples))
        ]

    baseline = groups["pixel PCA + logistic"][0][1].summary["auc_mean"]
    print(f"\n{platform.machine()}, {os.cpu_count()} cores; {args.size} px; seeds {args.seeds}; ", end="")
    print(f"{len(fit_rows)} train_val images ({len(data.rows['val'])} validation), {len(test_rows)} test")
    print(f"findings scored: {', '.join(NIH_PATHOLOGIES[k] for k in columns)}\n")
    print(summary_table(groups, baseline))
    members = groups["experiment=nih_cpu"]
    best_val = max(members, key=lambda m: m[0].val_auc)
    best_test = max(r.summary["auc_mean"] for _, r in members)
    ens = groups["nih_cpu top-5 ensemble"][0][1].summary["auc_mean"]
    print(
        f"\nensemble {ens:.3f}; its members' best by validation {best_val[1].summary['auc_mean']:.3f}, ",
        end="",
    )
    print(f"best by test {best_test:.3f}")
    shown = {name: groups[name][0][1] for name in ("pixel PCA + logistic", "HOG + logistic")}
    if "cxr defaults" in groups:
        shown["cxr defaults (best val)"] = max(groups["cxr defaults"], key=lambda m: m[0].val_auc)[1]
    shown["nih_cpu (best val)"] = best_val[1]
    shown["nih_cpu ensemble"] = groups["nih_cpu top-5 ensemble"][0][1]
    if args.folds:
        shown[f"nih_cpu {args.folds}-fold ensemble"] = groups[f"nih_cpu {args.folds}-fold ensemble"][0][1]
    print("\nTest AUC [95% patient-bootstrap CI] per finding:\n")
    print(per_finding_table(shown))
    print("\ntraining: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"whole benchmark: {time.perf_counter() - started:.0f} s; work folder {work}")


if __name__ == "__main__":
    main()
