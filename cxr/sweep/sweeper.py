"""A Hydra sweeper on Optuna 5: each trial is one normal job (a `cxr.train` run), asked from and told
to a stored study, so a sweep resumes, shares its study with other processes and machines, and
prunes through the storage. One MLflow parent run per study collects the trials as child runs.

Hydra's plugin scan imports this module (through hydra_plugins) at every command's start-up, so
optuna and mlflow are imported on use.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from cxr.config import check_sweep_monitor
from cxr.runtime import heartbeat
from cxr.runtime.errors import CxrError, exit_on_user_error
from cxr.runtime.masking import mask
from cxr.sweep import best, space
from cxr.sweep.parent_run import ParentRun, summary_table
from cxr.sweep.study import RUN_ID_ATTR, create_or_join, stale_trials_failed_here, storage_url
from cxr.tracking.names import SELECTION_TAG

if TYPE_CHECKING:
    import optuna


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class CxrOptunaSweeper(Sweeper):
    """The ask / launch / tell loop; `hydra/sweeper=cxr_optuna` with `cxr.sweep.settings` as settings."""

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = OmegaConf.create(settings)
        self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # `config`: the sweep's whole config with its `hydra` node, which no cxr schema describes
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        return exit_on_user_error(self._sweep)(arguments)

    # ------------------------------------------------------------------ the loop
    def _sweep(self, arguments: list[str]) -> Any:
        import optuna  # heavy: optuna, on use (Hydra's plugin scan imports this module)

        s = self.settings
        best.check_trial_evaluation(s.trial_evaluation)
        check_sweep_monitor("hydra.sweeper.monitor", s.monitor)  # else every trial fails after an epoch
        searched, fixed = space.parse(self.hydra_context.config_loader, s.params, arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "multirun.yaml").write_text(mask(OmegaConf.to_yaml(self.config)))

        url = storage_url(s.storage)
        study, created = create_or_join(s, url, searched, self.config.get("optimized_metric"))
        parent = ParentRun.open(self.config.tracking, study, created, searched, s, url)
        self._recover(study, parent)
        grid = space.grid(searched) if s.sampler.name == "grid" else None
        given = {*fixed, *searched}
        fixed_args = [f"{k}={v}" for k, v in fixed.items()] + best.trial_overrides(s.trial_evaluation, given)
        print(f"[cxr sweep] study {s.study_name!r} in {mask(url)}: {len(study.trials)} trials so far")

        deadline = time.monotonic() + s.timeout if s.timeout else None
        ran = 0
        while ran < s.n_trials:
            if deadline is not None and time.monotonic() >= deadline:
                print(f"[cxr sweep] timeout of {s.timeout} s reached")
                break
            if grid is not None and self._grid_done(study, grid):
                print(f"[cxr sweep] all {math.prod(map(len, grid.values()))} grid points have a trial")
                break
            if ran:
                self._recover(study, parent)  # another worker's trials may have died meanwhile
            size = min(s.n_jobs, s.n_trials - ran)
            trials = [study.ask(searched) for _ in range(size)]
            batch = [
                [
                    *fixed_args,
                    *(f"{k}={space.format_value(t.params[k])}" for k in searched),
                    *self._job_overrides(url, t, parent.run_id),
                ]
                for t in trials
            ]
            try:
                self.validate_batch_is_legal(batch)
            except Exception as err:
                for t in trials:
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                raise CxrError(f"a trial's config does not compose: {err}") from None
            with heartbeat.beating(self._beat(study, trials), s.heartbeat_interval):
                returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            self.job_idx += size
            for k, (t, ret) in enumerate(zip(trials, returns, strict=True)):
                self._tell(study, t, ret)
                print(self._progress(study, t.number, ran + k + 1, s.n_trials), flush=True)
            ran += size
            parent.log_progress(study)
        self._evaluate_best(study, given)  # before the summary, which ends the output
        self._finish(study, parent, url)
        return study

    def _job_overrides(self, url: str, trial: optuna.Trial, parent_run_id: str) -> list[str]:
        """The job's `optuna` config node: how it reopens its trial from the storage."""
        return [
            f"optuna.storage={_quote(url)}",
            f"optuna.study_name={_quote(self.settings.study_name)}",
            f"optuna.trial_id={trial._trial_id}",
            f"optuna.trial_number={trial.number}",
            f"optuna.parent_run_id={parent_run_id}",
        ]

    @staticmethod
    def _beat(study: optuna.Study, trials: list[optuna.Trial]):
        """The heartbeat of a launched batch, from the sweeper while its jobs start and run: each job
        renews its own too (`TrialReporter.heartbeat`), which is what counts when jobs run in other
        processes (the joblib launcher)."""

        def beat() -> None:
            for trial in trials:
                study._storage.record_heartbeat(trial._trial_id)

        return beat

    @staticmethod
    def _progress(study: optuna.Study, number: int, done: int, total: int) -> str:
        """`trial 3/20 done (number 7): 0.8123, best so far 0.8345 (trial 5)`."""
        from optuna.trial import TrialState  # heavy: optuna, on use

        trial = study.get_trials(deepcopy=False)[number]
        value = f"{trial.value:.4f}" if trial.state == TrialState.COMPLETE else trial.state.name.lower()
        line = f"[cxr sweep] trial {done}/{total} done (number {number}): {value}"
        if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            line += f", best so far {study.best_value:.4f} (trial {study.best_trial.number})"
        return line

    def _recover(self, study: optuna.Study, parent: ParentRun) -> None:
        """Trials whose worker died (no heartbeat for `grace_period` s) become FAIL and are queued again
        (`max_retry`); their runs, and the study's runs whose process is gone, end KILLED."""
        s = self.settings
        for trial in stale_trials_failed_here(study):  # of workers recovering together, one ends each
            print(
                f"[cxr sweep] trial {trial.number} stopped beating for {s.grace_period} s (its worker died): "
                f"FAIL, run again up to {s.max_retry} times",
                file=sys.stderr,
            )
            run_id = trial.user_attrs.get(RUN_ID_ATTR)
            if run_id:
                parent.end_killed(run_id, f"trial {trial.number} had no heartbeat for {s.grace_period} s")
        parent.reap_children(self.config.tracking.orphan_grace_s)

    @staticmethod
    def _grid_done(study: optuna.Study, grid: dict[str, list]) -> bool:
        """Every grid point has a trial, running or finished (failed too, as Optuna's GridSampler counts),
        and no trial waits to be run again (a dead worker's, `_recover`)."""
        from optuna.trial import TrialState  # heavy: optuna, on use

        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return False
        keys = list(grid)
        taken = {
            tuple(t.params.get(k) for k in keys)
            for t in study.get_trials(deepcopy=False)
            if t.state != TrialState.WAITING
        }
        return all(point in taken for point in itertools.product(*grid.values()))

    @staticmethod
    def _record(study: optuna.Study, trial: optuna.Trial, *args, **kwargs) -> None:
        """study.tell; the grid sampler's "grid exhausted" stop() only works inside optimize(), and
        Optuna has stored the trial's state before it raises. A trial another worker failed as dead
        meanwhile (a stall longer than the grace period) keeps that state."""
        try:
            study.tell(trial, *args, skip_if_finished=True, **kwargs)
        except RuntimeError as err:
            if "Study.stop" not in str(err):
                raise

    @classmethod
    def _tell(cls, study: optuna.Study, trial: optuna.Trial, ret: JobReturn) -> None:
        """COMPLETE with the job's value if it is a finite number, PRUNED if it raised TrialPruned,
        FAIL otherwise."""
        import optuna  # heavy: optuna, on use (Hydra's plugin scan imports this module)
        from optuna.trial import TrialState  # heavy: optuna, on use

        if ret.status == JobStatus.COMPLETED:
            value = ret._return_value
            if isinstance(value, (int, float)) and math.isfinite(value):
                cls._record(study, trial, float(value))
                return
            print(f"[cxr sweep] trial {trial.number} returned {value!r}: recorded FAIL", file=sys.stderr)
            cls._record(study, trial, state=TrialState.FAIL)
            return
        error = ret._return_value
        if isinstance(error, optuna.TrialPruned):
            print(f"[cxr sweep] trial {trial.number} pruned")
            cls._record(study, trial, state=TrialState.PRUNED)
            return
        print(f"[cxr sweep] trial {trial.number} failed: {type(error).__name__}: {error}", file=sys.stderr)
        cls._record(study, trial, state=TrialState.FAIL)

    def _evaluate_best(self, study: optuna.Study, given: set[str]) -> None:
        """Intervals and plots, skipped by the trials, for the best `trial_evaluation.best_trials`."""
        s, cfg = self.settings, self.config
        if not s.trial_evaluation.best_trials or not best.trials_lack_full_evaluation(
            s.trial_evaluation, cfg.evaluation, given
        ):
            return
        if cfg.optuna.cv_folds:  # a trial's run holds its folds' runs, each evaluated already
            print(
                "[cxr sweep] optuna.cv_folds: each trial is a mean over fold runs; re-evaluate a fold's run"
            )
            return
        chosen = best.best_trials(study, s.trial_evaluation.best_trials, s.direction)
        if chosen and not cfg.tracking.log_model:
            print("[cxr sweep] tracking.log_model=false: no model to re-evaluate with intervals and plots")
            return
        for trial in chosen:
            run_id = trial.user_attrs[RUN_ID_ATTR]
            print(f"\n[cxr sweep] trial {trial.number}, one of the best: intervals and plots (run {run_id})")
            try:
                best.reevaluate(run_id, cfg)
            except CxrError as err:  # the trials are done and recorded; say how to finish this by hand
                print(
                    f"[cxr sweep] could not re-evaluate trial {trial.number}: {err}; later: "
                    f"python -m cxr.evaluate run_id={run_id}",
                    file=sys.stderr,
                )

    def _report_selection(self, study: optuna.Study, parent: ParentRun) -> None:
        """The best trials' validation values with intervals, and whether best and runner-up overlap."""
        s, cfg = self.settings, self.config
        chosen = best.selection(
            study, max(s.trial_evaluation.best_trials, 2), s.direction, cfg.optimized_metric, cfg.tracking.uri
        )
        for line in chosen.lines(cfg.evaluation.bootstrap.confidence):
            print(line)
        if chosen.within_noise is not None:
            parent.set_tags({SELECTION_TAG: str(chosen.within_noise).lower()})

    def _finish(self, study: optuna.Study, parent: ParentRun, url: str) -> None:
        from optuna.trial import TrialState  # heavy: optuna, on use

        s = self.settings
        trials = study.get_trials(deepcopy=False)
        counts = {state: sum(t.state == state for t in trials) for state in TrialState}
        summary = ", ".join(f"{n} {state.name.lower()}" for state, n in counts.items() if n)
        table = summary_table(study, list(s.summary_by), s.direction) if s.summary_by else None
        if table is not None:
            print(f"\n[cxr sweep] value by {', '.join(s.summary_by)} (completed trials):")
            print(table.to_string(float_format=lambda v: f"{v:.4f}"))
        parent.finish(table)
        print(f"\n[cxr sweep] study {study.study_name!r}: {len(trials)} trials ({summary})")
        if counts[TrialState.COMPLETE]:
            best = study.best_trial
            chosen = " ".join(f"{k}={v}" for k, v in best.params.items())
            print(f"[cxr sweep] best trial {best.number}: value {best.value:.4f} with {chosen}")
            print(f"[cxr sweep] best trial's MLflow run: {best.user_attrs.get(RUN_ID_ATTR)}")
            self._report_selection(study, parent)
        print(f"[cxr sweep] MLflow parent run: {parent.run_id}; {parent.ui_command()}")
        print(f"[cxr sweep] the study itself: optuna-dashboard {mask(url)}", flush=True)
