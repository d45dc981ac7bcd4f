"""The same 20-trial Optuna sweep with the median pruner and without: epochs trained, wall time,
best validation AUC. Synthetic data, the small CNN, TPE with the same seed.

    python bench/sweep_pruning.py [--trials 20] [--workdir /tmp/cxr-bench-sweep]
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
    "evaluation.plots=false",
    "evaluation.bootstrap.resamples=0",
    "tracking.log_model=false",
]


def run_sweep(work: Path, name: str, pruner: str, trials: int) -> dict:
    storage = f"sqlite:///{work}/optuna.db"
    command = [
        sys.executable, "-m", "cxr.train", "-m", *TASK,
        f"dataset.root={work}/data", f"dataset.cache_dir={work}/prepared",
        f"tracking.uri=sqlite:///{work}/mlflow.db", f"tracking.artifact_root={work}/artifacts",
        f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.pruner.name={pruner}", f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweep.dir={work}/multirun-{name}",
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
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cxr-bench-sweep"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    print(f"{platform.machine()}, {args.trials} trials each; task: {' '.join(TASK)}", flush=True)
    # the unpruned sweep goes first and generates and prepares the data, so neither timing pays for it
    subprocess.run(
        [sys.executable, "-m", "cxr.prepare", *TASK[3:5], "experiment=demo",
         f"dataset.root={args.workdir}/data", f"dataset.cache_dir={args.workdir}/prepared",
         f"hydra.run.dir={args.workdir}/prepare"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    rows = [
        run_sweep(args.workdir, name, pruner, args.trials)
        for name, pruner in (("unpruned", "none"), ("pruned", "median"))
    ]
    for row in rows:
        print(
            f"{row['sweep']:>9}: {row['epochs']:4d} epochs, {row['wall_s']:7.1f} s, best val AUC "
            f"{row['best_val_auc']:.4f} ({row['complete']} complete, {row['pruned']} pruned)"
        )
    saved = 1 - rows[1]["epochs"] / rows[0]["epochs"]
    gap = rows[0]["best_val_auc"] - rows[1]["best_val_auc"]
    faster = 1 - rows[1]["wall_s"] / rows[0]["wall_s"]
    print(f"pruning saved {saved:.0%} of the epochs and {faster:.0%} of the time;")
    print(f"best AUC unpruned minus pruned: {gap:+.4f} (target: >= 40% epochs saved, gap <= 0.005)")


if __name__ == "__main__":
    main()
