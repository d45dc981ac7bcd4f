"""The fixed cost of one sweep trial: everything a trial spends besides its epochs.

Runs the CPU demo sweep (`python -m cxr.train -m experiment=demo +sweep=core model=small_cnn`) twice
with small data, once with 1 epoch per trial and once with `--epochs` epochs, in a fresh MLflow store
and Optuna storage, then reads each trial's MLflow run: its wall time (run start to end) and the
`time/*_s` phase durations cxr.train logs, with each epoch's `time/epoch_s`. The fixed cost of a trial
is its run time less its epochs at the steady epoch time (the median epoch after the first: the first
one traces the graphs, so tracing lands in the fixed cost, where it belongs), plus the sweeper's time
between trials. The intercept of the 1-epoch and k-epoch run times says the same on a quiet machine;
on a shared one it is noisier, as it differences two sweeps run minutes apart.

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

from cxr.tracking import names as mn

RUN_S, EPOCH_S, PHASE = mn.timing("run"), mn.timing("epoch"), mn.timing("")[: -len("_s")]
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
    warnings = [
        line for line in (out.stdout + out.stderr).splitlines() if "triggered tf.function retracing" in line
    ]
    print(f"  {epochs} epoch(s): {trials} trials in {seconds:.1f} s; retracing warnings: {len(warnings)}")
    if warnings:
        print(f"    the first: {warnings[0][:300]}")
    return seconds


def trial_runs(work: Path, epochs: int) -> list[dict]:
    """Each finished trial's run: start time (s), `time/*_s` metrics and its epochs' durations."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    experiment = client.get_experiment_by_name(f"overhead_e{epochs}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return sorted(
        (
            {
                "start": r.info.start_time / 1000,
                **{k: v for k, v in r.data.metrics.items() if k.startswith(PHASE)},
                "epochs": [m.value for m in client.get_metric_history(r.info.run_id, EPOCH_S)],
            }
            for r in runs
            if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags  # trials, not the parent
        ),
        key=lambda run: run["start"],
    )


def fixed_costs(runs: list[dict]) -> tuple[float, float, float]:
    """(fixed cost per trial, steady epoch, time between trials) from one sweep's trials.

    A trial's run time less its epochs at the steady epoch time (the median of the epochs after the
    first, which traces the graphs), plus the sweeper's time between one trial's end and the next's start.
    """
    import numpy as np

    steady = float(np.median([e for run in runs for e in run["epochs"][1:]]))
    inside = np.mean([run[RUN_S] - len(run["epochs"]) * steady for run in runs])
    gaps = [b["start"] - a["start"] - a[RUN_S] for a, b in zip(runs, runs[1:], strict=False)]
    between = float(np.mean(gaps)) if gaps else 0.0
    return float(inside) + between, steady, between


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
    fixed, steady, between = fixed_costs(runs[args.epochs])
    short, long = (np.mean([r[RUN_S] for r in runs[e]]) for e in (1, args.epochs))
    print(f"\ntrial run time ({RUN_S}): {short:.2f} s at 1 epoch, {long:.2f} s at {args.epochs} epochs")
    print(f"intercept of the two: {short - (long - short) / (args.epochs - 1):.2f} s")
    first = np.mean([r["epochs"][0] for r in runs[args.epochs]])
    print(f"steady epoch: {steady:.2f} s; the first epoch: {first:.2f} s")
    print(f"sweeper time between trials: {between:.2f} s")
    print(f"FIXED COST PER TRIAL: {fixed:.2f} s (run time less steady epochs, plus the time between trials)")
    outside = walls[1] - sum(r[RUN_S] for r in runs[1])
    print(f"sweep wall time less its trials' run time (start-up, end): {outside:.1f} s")
    phases = sorted({k for r in runs[args.epochs] for k in r if k.startswith(PHASE)})
    print(f"\nphases of the {args.epochs}-epoch trials (mean s):")
    for name in phases:
        print(f"  {name:28s} {np.mean([r.get(name, np.nan) for r in runs[args.epochs]]):6.2f}")


if __name__ == "__main__":
    main()
