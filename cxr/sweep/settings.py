"""The sweeper's typed settings, `hydra.sweeper.*` (hydra_plugins registers them as `cxr_optuna`)."""

from dataclasses import dataclass, field
from typing import Any

from cxr.tracking import names as metric_names


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe, random or grid (every combination of the choice() parameters)
    seed: int | None = 42
    n_startup_trials: int = 10  # tpe: random trials before the model takes over


@dataclass
class PrunerConf:
    name: str = "median"  # median, hyperband or none
    n_startup_trials: int = 5  # median: trials that are never pruned
    n_warmup_steps: int = 2  # median: epochs before a trial can be pruned
    interval_steps: int = 1
    min_resource: int = 1  # hyperband: epochs
    max_resource: int | None = None  # hyperband: null = learn it from the first finished trial
    reduction_factor: int = 3  # hyperband


@dataclass
class TrialEvaluationConf:
    """What each trial's evaluation computes beyond the point values (AUCs, thresholds), which every trial
    logs (ranking, pruning and registration read them). Intervals and plots cost seconds per trial and
    matter only for the trials one keeps: `best_trials` of them get the run's full evaluation at the end."""

    bootstrap_resamples: int = 0  # evaluation.bootstrap.resamples of each trial (0: no intervals)
    plots: bool = False  # evaluation.plots of each trial
    # at the end, the best completed trials re-evaluated with intervals and plots; 2 or more lets the
    # summary say whether the best trial's interval overlaps the runner-up's
    best_trials: int = 2
    # a finished trial logs and registers its model only while it ranks among the best `keep_models`
    # completed trials of the study (null: every trial); a trial outside them can never enter them later
    keep_models: int | None = 10
    # evaluation.localisation.enabled of each trial: false, as localisation is a test measure no trial is
    # chosen by; the best trials re-evaluated at the end get the sweep's own setting (auto by default)
    localisation: Any = False


@dataclass
class CxrOptunaSweeperConf:
    # Hydra instantiates plugins only from classes defined under hydra_plugins: see that package
    _target_: str = "hydra_plugins.cxr_optuna_sweeper.plugin.CxrOptunaSweeper"
    study_name: str = "cxr"
    storage: str | None = None  # any Optuna storage URL; null = sqlite:///mlruns/optuna.db
    direction: str = "maximize"  # of the value the task returns (cxr.train: optimized_metric, val/auc_mean)
    monitor: str = metric_names.MONITOR  # what each trial reports every epoch, for the pruner: val/auc
    n_trials: int = 20  # new trials this command runs (a rerun adds as many again)
    timeout: float | None = None  # seconds; no new trial starts after it
    n_jobs: int = 1  # trials launched together; they run in parallel with a parallel launcher
    # A trial's process renews its heartbeat every heartbeat_interval s; a RUNNING trial silent for
    # grace_period s (its worker was killed, its machine lost) is failed by the next sweep command on the
    # study, any worker's, and queued again with the same parameters up to max_retry times.
    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 2
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    params: dict[str, str] = field(default_factory=dict)  # key: choice(...) | interval(...) | ...
    summary_by: list[str] = field(default_factory=list)  # group finished trials by these params
    # each trial's evaluation; a key given on the command line (evaluation.plots=true) wins
    trial_evaluation: TrialEvaluationConf = field(default_factory=TrialEvaluationConf)
