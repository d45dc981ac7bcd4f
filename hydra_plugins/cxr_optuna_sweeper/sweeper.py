"""A Hydra sweeper on Optuna 5: each trial is one normal job (a `cxr.train` run), asked from and told
to a stored study, so a sweep resumes, shares its study with other processes and machines, and
prunes through the storage. One MLflow parent run per study collects the trials as child runs.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
PARENT_ATTR = "mlflow_parent_run_id"
PARENT_WAIT_S = 30.0  # a worker that joins a study created a moment ago waits this long for its parent run


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _safe_url(url: str) -> str:
    """The storage URL without its password, for logs and tags."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class CxrOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = OmegaConf.create(settings)
        self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from cxr.errors import CxrError

        try:
            return self._sweep(arguments)
        except CxrError as err:
            print(f"cxr: error: {err}", file=sys.stderr)
            sys.exit(2)

    # ------------------------------------------------------------------ the loop
    def _sweep(self, arguments: list[str]) -> Any:
        import optuna

        from cxr.errors import CxrError
        from hydra_plugins.cxr_optuna_sweeper import search_space

        s = self.settings
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{k}={v}" for k, v in (s.params or {}).items()]
        try:
            space, fixed = search_space.split(parser.parse_overrides([*params, *arguments]))
        except Exception as err:  # Hydra's parse errors and ours say what is wrong
            raise CxrError(f"search space: {err}") from None
        if not space:
            raise CxrError(
                "nothing to search: give hydra.sweeper.params (e.g. +sweep=core) or sweep overrides "
                "such as 'model.dropout=interval(0.1,0.5)'"
            )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        url = s.storage or DEFAULT_STORAGE
        study, parent = self._open_study(url, space)
        grid = search_space.grid(space) if s.sampler.name == "grid" else None
        fixed_args = [f"{k}={v}" for k, v in fixed.items()]
        print(f"[cxr sweep] study {s.study_name!r} in {_safe_url(url)}: {len(study.trials)} trials so far")

        deadline = time.monotonic() + s.timeout if s.timeout else None
        ran = 0
        while ran < s.n_trials:
            if deadline is not None and time.monotonic() >= deadline:
                print(f"[cxr sweep] timeout of {s.timeout} s reached")
                break
            if grid is not None and self._grid_done(study, grid):
                print(f"[cxr sweep] all {math.prod(map(len, grid.values()))} grid points have a trial")
                break
            size = min(s.n_jobs, s.n_trials - ran)
            trials = [study.ask(space) for _ in range(size)]
            batch = [
                [
                    *fixed_args,
                    *(f"{k}={search_space.format_value(t.params[k])}" for k in space),
                    *self._trial_overrides(url, t, parent),
                ]
                for t in trials
            ]
            try:
                self.validate_batch_is_legal(batch)
            except Exception as err:
                for t in trials:
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                raise CxrError(f"a trial's config does not compose: {err}") from None
            returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            self.job_idx += size
            for t, ret in zip(trials, returns, strict=True):
                self._tell(study, t, ret)
            ran += size
            self._update_parent(study, parent)
        self._finish(study, parent, url)
        return study

    def _trial_overrides(self, url: str, trial, parent: str) -> list[str]:
        return [
            f"trial.storage={_quote(url)}",
            f"trial.study_name={_quote(self.settings.study_name)}",
            f"trial.trial_id={trial._trial_id}",
            f"trial.number={trial.number}",
            f"trial.parent_run_id={parent}",
        ]

    @staticmethod
    def _grid_done(study, grid: dict[str, list]) -> bool:
        """Every grid point has a trial, running or finished (failed too, as Optuna's GridSampler counts)."""
        import itertools

        from optuna.trial import TrialState

        keys = list(grid)
        taken = {
            tuple(t.params.get(k) for k in keys)
            for t in study.get_trials(deepcopy=False)
            if t.state != TrialState.WAITING
        }
        return all(point in taken for point in itertools.product(*grid.values()))

    @staticmethod
    def _record(study, trial, *args, **kwargs) -> None:
        """study.tell; the grid sampler's "grid exhausted" stop() only works inside optimize(), and
        Optuna has stored the trial's state before it raises."""
        try:
            study.tell(trial, *args, **kwargs)
        except RuntimeError as err:
            if "Study.stop" not in str(err):
                raise

    @classmethod
    def _tell(cls, study, trial, ret) -> None:
        import optuna
        from optuna.trial import TrialState

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

    # ------------------------------------------------------------------ study and parent run
    def _open_study(self, url: str, space: dict):
        """Create the study, or join it; the process that creates it (atomic in the storage) also
        creates the MLflow parent run, so concurrent workers share one."""
        import optuna

        from cxr.errors import CxrError
        from cxr.trial import MONITOR_ATTR, PRUNER_ATTR, build_pruner, rdb_storage

        s = self.settings
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        storage = rdb_storage(url)
        sampler = self._sampler(space)
        pruner = build_pruner(s.pruner)
        if s.direction not in ("maximize", "minimize"):
            raise CxrError(f"hydra.sweeper.direction={s.direction!r}: choose maximize or minimize")
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=s.study_name,
                sampler=sampler,
                pruner=pruner,
                direction=s.direction,
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(
                study_name=s.study_name, storage=storage, sampler=sampler, pruner=pruner
            )
            created = False
            if study.direction.name.lower() != s.direction:
                raise CxrError(
                    f"study {s.study_name!r} exists with direction {study.direction.name.lower()}; "
                    "choose another hydra.sweeper.study_name"
                ) from None
        study.set_user_attr(PRUNER_ATTR, OmegaConf.to_container(s.pruner))
        study.set_user_attr(MONITOR_ATTR, s.monitor)
        parent = None if created else self._wait_for_parent(study)
        if parent is None:
            parent = self._create_parent(space, url)
            study.set_user_attr(PARENT_ATTR, parent)
        else:
            self._client().update_run(parent, status="RUNNING")
        return study, parent

    def _wait_for_parent(self, study) -> str | None:
        """The parent run of a study another process has just created (and is about to record)."""
        deadline = time.monotonic() + PARENT_WAIT_S
        while True:
            parent = study.user_attrs.get(PARENT_ATTR)
            if parent or study.trials or time.monotonic() >= deadline:
                return parent
            time.sleep(0.5)  # user_attrs and trials are read from the storage on each access

    def _sampler(self, space: dict):
        import optuna

        from cxr.errors import CxrError
        from hydra_plugins.cxr_optuna_sweeper import search_space

        cfg = self.settings.sampler
        if cfg.name == "tpe":
            return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.n_startup_trials)
        if cfg.name == "random":
            return optuna.samplers.RandomSampler(seed=cfg.seed)
        if cfg.name == "grid":
            try:
                return optuna.samplers.GridSampler(search_space.grid(space), seed=cfg.seed)
            except search_space.SearchSpaceError as err:
                raise CxrError(str(err)) from None
        raise CxrError(f"hydra.sweeper.sampler.name={cfg.name!r}: choose tpe, random or grid")

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.config.tracking.uri)

    def _create_parent(self, space: dict, url: str) -> str:
        from cxr import tracking

        s = self.settings
        experiment_id = tracking.configure(self.config.tracking)
        client = self._client()
        run = client.create_run(
            experiment_id,
            run_name=f"sweep-{s.study_name}",
            tags={"cxr.sweep": "true", "optuna.study_name": s.study_name, "optuna.storage": _safe_url(url)},
        )
        run_id = run.info.run_id
        params = {f"space.{k}": repr(v) for k, v in space.items()}
        params.update({f"sweeper.{k}": v for k, v in tracking.flatten(OmegaConf.to_container(s)).items()})
        params.pop("sweeper.storage", None)
        for key, value in params.items():
            client.log_param(run_id, key, str(value)[:6000])
        return run_id

    def _update_parent(self, study, parent: str) -> None:
        from optuna.trial import TrialState

        from cxr.trial import RUN_ID_ATTR

        client = self._client()
        trials = study.get_trials(deepcopy=False)
        step = len(trials)
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            count = sum(t.state == state for t in trials)
            client.log_metric(parent, f"trials_{state.name.lower()}", count, step=step)
        if not any(t.state == TrialState.COMPLETE for t in trials):
            return
        best = study.best_trial
        client.log_metric(parent, "best_value", best.value, step=step)
        client.set_tag(parent, "best_trial", str(best.number))
        client.set_tag(parent, "best_run_id", str(best.user_attrs.get(RUN_ID_ATTR)))
        for key, value in best.params.items():
            client.set_tag(parent, f"best.{key}", str(value))

    def _finish(self, study, parent: str, url: str) -> None:
        from optuna.trial import TrialState

        from cxr import tracking
        from cxr.trial import RUN_ID_ATTR

        client = self._client()
        trials = study.get_trials(deepcopy=False)
        counts = {state: sum(t.state == state for t in trials) for state in TrialState}
        summary = ", ".join(f"{n} {state.name.lower()}" for state, n in counts.items() if n)
        if self.settings.summary_by:
            table = self._summary_table(study)
            if table is not None:
                print(f"\n[cxr sweep] value by {', '.join(self.settings.summary_by)} (completed trials):")
                print(table.to_string(float_format=lambda v: f"{v:.4f}"))
                client.log_text(parent, table.to_csv(), "summary.csv")
        client.set_terminated(parent, "FINISHED")
        print(f"\n[cxr sweep] study {study.study_name!r}: {len(trials)} trials ({summary})")
        if counts[TrialState.COMPLETE]:
            best = study.best_trial
            chosen = " ".join(f"{k}={v}" for k, v in best.params.items())
            print(f"[cxr sweep] best trial {best.number}: value {best.value:.4f} with {chosen}")
            print(f"[cxr sweep] best trial's MLflow run: {best.user_attrs.get(RUN_ID_ATTR)}")
        print(f"[cxr sweep] MLflow parent run: {parent}; {tracking.ui_command(self.config.tracking.uri)}")
        print(f"[cxr sweep] the study itself: optuna-dashboard {_safe_url(url)}", flush=True)

    def _summary_table(self, study):
        """Mean, standard deviation and count of the value per group: seed noise next to differences."""
        frame = study.trials_dataframe(attrs=("number", "value", "params", "state"))
        if frame.empty:
            return None
        frame = frame[frame["state"] == "COMPLETE"]
        columns = [f"params_{k}" for k in self.settings.summary_by if f"params_{k}" in frame]
        if frame.empty or not columns:
            return None
        table = frame.groupby(columns)["value"].agg(["mean", "std", "count"])
        return table.sort_values("mean", ascending=self.settings.direction == "minimize")
