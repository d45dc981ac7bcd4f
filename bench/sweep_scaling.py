"""One study, more workers: the same 12-trial sweep with 1 and with 2 worker processes on PostgreSQL.

Starts a private PostgreSQL server (Debian's `postgresql` package, as the tests do), prepares the
small demo data once, then for each worker count runs the README's sweep command
(`python -m cxr.train -m experiment=demo +sweep=core model=small_cnn ...`) in that many processes
against a fresh database, `12 / workers` trials each, and reports the wall time and trials per hour.
Storage overhead per trial: the same trial's storage round trips (ask, suggest 4 parameters with
TPE, report and should_prune per epoch, tell) with no training, timed against the same server from
one process, and against a SQLite file for reference.

    python bench/sweep_scaling.py [--trials 12] [--epochs 2] [--workers 1 2] [extra overrides ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import new_database, running_postgres  # noqa: E402  (the tests' own server)

SMALL = [
    "experiment=demo",
    "model=small_cnn",
    "dataset.generator.n_patients=100",
    "dataset.image_size=32",
    "callbacks.early_stopping.enabled=false",
    "trainer.verbose=0",
    "evaluation.plots=false",
    "tracking.log_model=false",
]


def cxr(module: str, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, **popen)


def sweep(work: Path, url: str, workers: int, trials: int, epochs: int, extra: list[str]) -> float:
    """`workers` processes sharing one study until it has `trials` trials; returns the wall time."""
    common = [
        "-m",
        "+sweep=core",
        *SMALL,
        f"trainer.epochs={epochs}",
        f"dataset.root={work}/data/synthetic",
        f"dataset.cache_dir={work}/data/prepared",
        f"tracking.uri=sqlite:///{work}/w{workers}/mlruns/mlflow.db",
        f"tracking.artifact_root={work}/w{workers}/mlruns/artifacts",
        f"output_dir={work}/w{workers}/output",
        f"hydra.sweeper.storage={url}",
        f"hydra.sweeper.n_trials={trials // workers}",
        *extra,
    ]
    started = time.perf_counter()
    jobs = [
        cxr("cxr.train", *common, f"hydra.sweep.dir={work}/w{workers}/multirun{i}", stdout=subprocess.DEVNULL)
        for i in range(workers)
    ]
    for job in jobs:
        if job.wait() != 0:
            raise SystemExit(f"a worker failed (exit {job.returncode})")
    return time.perf_counter() - started


def storage_overhead(url: str, trials: int, epochs: int) -> float:
    """Seconds of storage round trips per trial, with the sweeper's own storage and a TPE sampler."""
    import optuna

    from cxr.sweep.study import rdb_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=rdb_storage(url), direction="maximize", study_name="overhead")
    started = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        x = trial.suggest_float("lr", 1e-5, 1e-2, log=True) + trial.suggest_float("dropout", 0.0, 0.5)
        trial.suggest_categorical("batch", [16, 32])
        trial.suggest_float("smoothing", 0.0, 0.3)
        for epoch in range(epochs):
            trial.report(x + epoch, epoch)
            trial.should_prune()
        study.tell(trial, x)
    return (time.perf_counter() - started) / trials


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args, extra = parser.parse_known_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    with tempfile.TemporaryDirectory() as tmp, running_postgres() as admin:
        work = Path(tmp)
        data = [s for s in SMALL if s.startswith("dataset.")]
        prepared = cxr(
            "cxr.prepare",
            *data,
            f"dataset.root={work}/data/synthetic",
            f"dataset.cache_dir={work}/data/prepared",
            f"hydra.run.dir={work}/prepare",
            stdout=subprocess.DEVNULL,
        )
        if prepared.wait() != 0:
            raise SystemExit("cxr.prepare failed")
        print(f"{args.trials} trials of {args.epochs} epochs (core search space, small_cnn at 32 px)")
        print("workers | wall s | trials/hour | load average before (1, 5, 15 min)")
        for n in args.workers:
            load = os.getloadavg()
            wall = sweep(work, new_database(admin, f"w{n}"), n, args.trials, args.epochs, extra)
            print(
                f"{n} | {wall:.0f} | {args.trials / wall * 3600:.0f} | {', '.join(f'{x:.1f}' for x in load)}"
            )
        for name, url in [
            ("PostgreSQL on 127.0.0.1", new_database(admin, "overhead")),
            ("SQLite file, for reference", f"sqlite:///{work}/overhead.db"),
        ]:
            per_trial = storage_overhead(url, 50, args.epochs)
            print(f"storage round trips per trial ({name}, 50 trials): {per_trial * 1000:.0f} ms")
        print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
