"""The same 20-trial Optuna sweep without pruning and with each given pruner: epochs trained, wall
time, best validation AUC. Synthetic data, the small CNN, `+sweep=core`'s space, TPE with the same seed.

    python bench/sweep_pruning.py [--trials 20] [--pruners median,hyperband] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
TASK = [
    "experiment=demo",
    "+sweep=core",
    "model=small_cnn",
    "dataset.image_size=64",
    "dataset.generator.n_patients=400",
    "trainer.epochs=12",
    "callbacks.early_stopping.patience=4",
    "trainer.verbose=0",
    "trainer.deterministic=true",  # same settings, same AUC: run-to-run noise (~0.008) would swamp the gap
    "evaluation.plots=false",
    "evaluation.bootstrap.resamples=0",
    "tracking.log_model=false",
]


def run_sweep(work: Path, name: str, pruner: str, trials: int, extra: tuple[str, ...] = ()) -> dict:
    storage = f"sqlite:///{work}/optuna.db"
    command = [
        sys.executable, "-m", "cxr.train", "-m", *TASK,
        f"dataset.root={work}/data", f"dataset.cache_dir={work}/prepared",
        f"tracking.uri=sqlite:///{work}/mlflow.db", f"tracking.artifact_root={work}/artifacts",
        f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.pruner.name={pruner}", f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweep.dir={work}/multirun-{name}",
        *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state.name for t in study.trials]
    return {
        "sweep": name,
        "epochs": sum(len(t.intermediate_values) for t in study.trials),
        "wall_s": wall,
        "best_val_auc": study.best_value,
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--pruners", default="median,hyperband", help="comma-separated, compared with none")
    parser.add_argument(
        "--set", nargs="*", default=[], help="pruner settings, e.g. hydra.sweeper.pruner.min_resource=3"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cxr-bench-sweep"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    print(f"{platform.machine()}, {args.trials} trials each; task: {' '.join(TASK)}", flush=True)
    if args.set:
        print(f"pruned sweeps also set: {' '.join(args.set)}", flush=True)
    # the unpruned sweep goes first and generates and prepares the data, so neither timing pays for it
    subprocess.run(
        [sys.executable, "-m", "cxr.prepare", *TASK[3:5], "experiment=demo",
         f"dataset.root={args.workdir}/data", f"dataset.cache_dir={args.workdir}/prepared",
         f"hydra.run.dir={args.workdir}/prepare"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    baseline = run_sweep(args.workdir, "unpruned", "none", args.trials)
    print(_line(baseline), flush=True)
    for pruner in args.pruners.split(","):
        row = run_sweep(args.workdir, pruner, pruner, args.trials, tuple(args.set))
        saved = 1 - row["epochs"] / baseline["epochs"]
        faster = 1 - row["wall_s"] / baseline["wall_s"]
        gap = baseline["best_val_auc"] - row["best_val_auc"]
        print(f"{_line(row)}; saves {saved:.0%} of the epochs, {faster:.0%} of the time; AUC gap {gap:+.4f}")
    print("target: >= 40% of the epochs saved with the best AUC within 0.005 of the unpruned sweep")


def _line(row: dict) -> str:
    return (
        f"{row['sweep']:>9}: {row['epochs']:4d} epochs, {row['wall_s']:6.1f} s, best val AUC "
        f"{row['best_val_auc']:.4f} ({row['complete']} complete, {row['pruned']} pruned)"
    )


if __name__ == "__main__":
    main()
