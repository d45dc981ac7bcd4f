"""The fixed cost of one sweep trial: everything a trial spends besides its epochs.

Runs the CPU demo sweep (`python -m cxr.train -m experiment=demo +sweep=core model=small_cnn`) twice
with small data, once with 1 epoch per trial and once with `--epochs` epochs, in a fresh MLflow store
and Optuna storage, then reads each trial's MLflow run: its wall time (run start to end) and the
`time_*_s` phase durations cxr.train logs. A trial's cost is `fixed + epochs * per_epoch`; the two
sweeps give both terms (the intercept is the fixed cost). Graph tracing happens in the first epoch, so
it lands in the fixed cost, where it belongs.

    python bench/trial_overhead.py [--trials 4] [--epochs 3] [extra overrides ...]

Early stopping is off and the pruner has no effect at 4 trials (5 start-up trials), so every trial
trains exactly its epochs. The sweep's own start-up (imports, study, parent run) is paid once per
sweep, not per trial, and is printed separately.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = [
    "dataset.generator.n_patients=100",
    "dataset.image_size=32",
    "callbacks.early_stopping.enabled=false",
    "trainer.verbose=0",
]


def sweep(work: Path, epochs: int, trials: int, extra: list[str]) -> float:
    """Run one sweep of `trials` trials with `epochs` epochs each; returns its wall time."""
    command = [
        sys.executable,
        "-m",
        "cxr.train",
        "-m",
        "experiment=demo",
        "+sweep=core",
        "model=small_cnn",
        *SMALL,
        f"trainer.epochs={epochs}",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweeper.study_name=overhead_e{epochs}",
        f"hydra.sweeper.storage=sqlite:///{work}/optuna.db",
        f"hydra.sweep.dir={work}/multirun/e{epochs}",
        f"tracking.uri=sqlite:///{work}/mlflow.db",
        f"tracking.artifact_root={work}/artifacts",
        f"tracking.experiment_name=overhead_e{epochs}",
        f"dataset.root={work}/synthetic",
        f"dataset.cache_dir={work}/prepared",
        *extra,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"sweep failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    retracing = out.stdout.count("retracing") + out.stderr.count("retracing")
    print(f"  {epochs} epoch(s): {trials} trials in {seconds:.1f} s; 'retracing' warnings: {retracing}")
    return seconds


def trial_runs(work: Path, epochs: int):
    """(wall seconds, phase metrics) of each trial's run."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    experiment = client.get_experiment_by_name(f"overhead_e{epochs}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [
        (
            (r.info.end_time - r.info.start_time) / 1000,
            {k: v for k, v in r.data.metrics.items() if k.startswith("time_")},
        )
        for r in runs
        if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags  # trials, not the parent
    ]


def prepare(work: Path, extra: list[str]) -> None:
    """Generate and prepare the data once, so no trial pays for it."""
    command = [
        sys.executable,
        "-m",
        "cxr.prepare",
        "experiment=demo",
        *SMALL[:2],
        f"dataset.root={work}/synthetic",
        f"dataset.cache_dir={work}/prepared",
        "hydra.run.dir=" + str(work / "prepare"),
        *[e for e in extra if e.startswith("dataset.")],
    ]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both sweeps")
    args = parser.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="cxr-overhead-") as tmp:
        work = Path(tmp)
        prepare(work, args.overrides)
        walls, runs = {}, {}
        for epochs in (1, args.epochs):
            walls[epochs] = sweep(work, epochs, args.trials, args.overrides)
            runs[epochs] = trial_runs(work, epochs)
    short, long = (np.mean([w for w, _ in runs[e]]) for e in (1, args.epochs))
    per_epoch = (long - short) / (args.epochs - 1)
    fixed = short - per_epoch
    startup = walls[1] - sum(w for w, _ in runs[1])
    print(f"\ntrial wall time: {short:.2f} s at 1 epoch, {long:.2f} s at {args.epochs} epochs")
    print(f"per epoch: {per_epoch:.2f} s")
    print(f"FIXED COST PER TRIAL: {fixed:.2f} s")
    print(f"sweep start-up and between-trial time (once per sweep, {args.trials} trials): {startup:.1f} s")
    phases = sorted({k for _, m in runs[1] for k in m})
    if phases:
        print("\nphases of the 1-epoch trials (mean s):")
        for name in phases:
            print(f"  {name:28s} {np.mean([m.get(name, np.nan) for _, m in runs[1]]):6.2f}")


if __name__ == "__main__":
    main()
