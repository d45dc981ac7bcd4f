"""Nothing lost when workers die: M sweep workers and K training runs SIGKILLed mid-trial / mid-fit,
then the recovery step (one sweep command on the study, one `cxr.train`), and the count of trials and
runs lost or left RUNNING, which must be 0. Synthetic data, the tiny small CNN.

    python bench/fault_runs.py [--workers 2] [--runs 2] [--grace 3]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from cxr.tracking import names as mn

REPO = Path(__file__).resolve().parents[1]
TASK = [
    "dataset.image_size=32",
    "dataset.generator.n_patients=80",
    "dataset.generator.resolution=48",
    "dataset.generator.min_prevalence=0.15",
    "model=small_cnn",
    "model.filters=[8,16]",
    "model.dense_units=16",
    "trainer.epochs=2",
    "trainer.verbose=0",
    "evaluation.plots=false",
    "evaluation.bootstrap.resamples=0",
    "tracking.log_model=false",
]


def stores(work: Path) -> list[str]:
    return [
        f"dataset.root={work}/data", f"dataset.cache_dir={work}/prepared", f"output_dir={work}/out",
        f"tracking.uri=sqlite:///{work}/mlflow.db", f"tracking.artifact_root={work}/artifacts",
    ]  # fmt: skip


def sweep_command(work: Path, grace: int, trials: int) -> list[str]:
    return [
        sys.executable, "-m", "cxr.train", "-m", *TASK, *(s for s in stores(work) if "output_dir" not in s),
        "hydra/sweeper=cxr_optuna", "hydra.sweeper.sampler.name=grid", "hydra.sweeper.pruner.name=none",
        "seed=range(0,64)", f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweeper.storage=sqlite:///{work}/optuna.db", "hydra.sweeper.study_name=faults",
        "hydra.sweeper.heartbeat_interval=1", f"hydra.sweeper.grace_period={grace}",
        f"hydra.sweep.dir={work}/multirun",
    ]  # fmt: skip


def wait_for(probe, timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except Exception:  # a store another process is creating
            pass
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {probe.__doc__}")


def killed_sweep_workers(work: Path, workers: int, grace: int) -> dict:
    """`workers` sweep processes on one study, each SIGKILLed once it runs a trial; then one sweep
    command resumes the study. Lost: a killed trial's seed without a COMPLETE trial."""
    storage = f"sqlite:///{work}/optuna.db"
    procs = [subprocess.Popen(sweep_command(work, grace, 1), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(workers)]  # fmt: skip

    def every_worker_runs_a_trial():
        """each worker running a trial with an MLflow run"""
        study = optuna.load_study(study_name="faults", storage=storage)
        return sum(bool(t.user_attrs.get("mlflow_run_id")) for t in study.trials) >= workers

    wait_for(every_worker_runs_a_trial)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    study = optuna.load_study(study_name="faults", storage=storage)
    killed = [t for t in study.trials if t.state == TrialState.RUNNING]
    time.sleep(grace + 1)
    start = time.perf_counter()
    subprocess.run(sweep_command(work, grace, workers), cwd=REPO, check=True, capture_output=True)
    recovery = time.perf_counter() - start
    trials = optuna.load_study(study_name="faults", storage=storage).trials
    done = {t.params["seed"] for t in trials if t.state == TrialState.COMPLETE}
    runs = MlflowClient(f"sqlite:///{work}/mlflow.db").search_runs(["1"], "attributes.status = 'RUNNING'")
    return {
        "killed": len(killed),
        "lost": sum(t.params["seed"] not in done for t in killed),
        "running": sum(t.state == TrialState.RUNNING for t in trials) + len(runs),
        "recovery_s": recovery,
    }


def killed_training_runs(work: Path, runs: int) -> dict:
    """`runs` cxr.train processes SIGKILLed mid-fit; then one `cxr.train` ends their runs KILLED."""
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    command = [sys.executable, "-m", "cxr.train", *TASK, *stores(work), "trainer.epochs=1000",
               "callbacks.early_stopping.enabled=false"]  # fmt: skip
    procs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(runs)]  # fmt: skip
    pids = {str(p.pid) for p in procs}

    def mid_fit():
        """each training run mid-fit"""
        epoch = f"metrics.`{mn.timing('epoch')}` > 0"
        found = client.search_runs(["1"], f"attributes.status = 'RUNNING' and {epoch}")
        return {r.data.tags.get("cxr.pid") for r in found} >= pids

    wait_for(mid_fit)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cxr.train", *TASK, *stores(work), "trainer.epochs=1"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    recovery = time.perf_counter() - start
    mine = [r for r in client.search_runs(["1"]) if r.data.tags.get("cxr.pid") in pids]
    return {
        "killed": len(mine),
        "lost": runs - len(mine),
        "running": sum(r.info.status == "RUNNING" for r in mine),
        "recovery_s": recovery,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="M: sweep workers SIGKILLed mid-trial")
    parser.add_argument("--runs", type=int, default=2, help="K: training runs SIGKILLed mid-fit")
    parser.add_argument("--grace", type=int, default=3, help="hydra.sweeper.grace_period, seconds")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cxr-bench-faults"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    print(f"{platform.machine()}; task: {' '.join(TASK)}", flush=True)
    # the data is generated and prepared first: concurrent first prepares are the image cache's business
    subprocess.run(
        [sys.executable, "-m", "cxr.prepare", *TASK[:4], f"dataset.root={args.workdir}/data",
         f"dataset.cache_dir={args.workdir}/prepared", f"hydra.run.dir={args.workdir}/prepare"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    sweep = killed_sweep_workers(args.workdir, args.workers, args.grace)
    print(
        f"sweep: {sweep['killed']} trials killed with their {args.workers} workers; after one resumed sweep "
        f"({sweep['recovery_s']:.1f} s): {sweep['lost']} lost, {sweep['running']} left RUNNING",
        flush=True,
    )
    train = killed_training_runs(args.workdir, args.runs)
    print(
        f"train: {train['killed']} runs killed mid-fit; after one cxr.train ({train['recovery_s']:.1f} s): "
        f"{train['lost']} lost, {train['running']} left RUNNING"
    )
    bad = sweep["lost"] + sweep["running"] + train["lost"] + train["running"]
    print("target: 0 trials and runs lost or left RUNNING:", "met" if bad == 0 else f"NOT met ({bad})")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
