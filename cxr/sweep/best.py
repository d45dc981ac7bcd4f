"""Cheap trials, full evaluation for the ones kept.

Every trial logs its point values (AUCs, thresholds: what pruning, ranking and registration read); the
bootstrap intervals and plots cost seconds per trial, so the sweeper turns them down for trials
(`hydra.sweeper.trial_evaluation`) and, at the end, re-evaluates the best trials' logged models with
the sweep's own evaluation settings (`cxr.evaluate`, intervals and plots as a plain run has them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from cxr.config import Config, EvaluateConfig, EvaluationConfig, check_evaluation
from cxr.runtime.errors import CxrError
from cxr.sweep.settings import TrialEvaluationConf
from cxr.sweep.study import RUN_ID_ATTR
from cxr.tracking import names as metric_names
from cxr.tracking import versions as model_registry

if TYPE_CHECKING:
    import optuna

RESAMPLES_KEY = "evaluation.bootstrap.resamples"
PLOTS_KEY = "evaluation.plots"
KEEP_MODELS_KEY = "optuna.keep_models"
LOCALISATION_KEY = "evaluation.localisation.enabled"


def trial_overrides(trial_evaluation: TrialEvaluationConf, given: set[str]) -> list[str]:
    """The overrides that give each trial the sweep's trial evaluation; a key given is left alone."""
    keep = trial_evaluation.keep_models
    wanted = {
        RESAMPLES_KEY: trial_evaluation.bootstrap_resamples,
        PLOTS_KEY: trial_evaluation.plots,
        KEEP_MODELS_KEY: "null" if keep is None else keep,
        LOCALISATION_KEY: trial_evaluation.localisation,
    }
    return [f"{key}={str(value).lower()}" for key, value in wanted.items() if key not in given]


def check_trial_evaluation(trial_evaluation: TrialEvaluationConf) -> None:
    """The trials re-evaluated at the end need their models, so they must be among those kept."""
    keep, best = trial_evaluation.keep_models, trial_evaluation.best_trials
    if keep is not None and (keep < 1 or best > keep):
        raise CxrError(
            f"hydra.sweeper.trial_evaluation.keep_models={keep}: keep at least 1 model and at least "
            f"best_trials={best} (their models are re-evaluated at the end); null keeps every trial's model"
        )


def trials_lack_full_evaluation(
    trial_evaluation: TrialEvaluationConf, evaluation: EvaluationConfig, given: set[str]
) -> bool:
    """Whether the trials computed less than `evaluation` (the sweep's config) would."""
    resamples = (
        evaluation.bootstrap.resamples if RESAMPLES_KEY in given else trial_evaluation.bootstrap_resamples
    )
    plots = evaluation.plots if PLOTS_KEY in given else trial_evaluation.plots
    wanted = evaluation.localisation.enabled
    localised = wanted if LOCALISATION_KEY in given else trial_evaluation.localisation
    fewer = resamples < evaluation.bootstrap.resamples or (evaluation.plots and not plots)
    return fewer or (localised is False and wanted is not False)


def best_trials(study: optuna.Study, n: int, direction: str) -> list[optuna.trial.FrozenTrial]:
    """The `n` best completed trials with an MLflow run, best first."""
    from optuna.trial import TrialState  # heavy: optuna, on use (Hydra's plugin scan imports this module)

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(RUN_ID_ATTR) and t.value is not None
    ]
    return sorted(done, key=lambda t: t.value, reverse=direction == "maximize")[:n]


def reevaluate(run_id: str, config: Config) -> dict[str, float]:
    """`python -m cxr.evaluate run_id=...` with the sweep's evaluation and tracking settings; the run's
    registered versions get the interval of the ranking metric as tags, as a plain run's versions do."""
    # heavy: MLflow and Keras, each of the imports below (Hydra's plugin scan imports this module)
    from mlflow.tracking import MlflowClient

    from cxr.evaluation.logged_model import evaluate

    cfg = OmegaConf.merge(
        OmegaConf.structured(EvaluateConfig),
        {"run_id": run_id, "evaluation": config.evaluation, "tracking": config.tracking},
    )
    check_evaluation(cfg.evaluation)
    metrics = evaluate(cfg)
    name = config.tracking.registered_model_name
    if name:
        model_registry.tag_run_versions(MlflowClient(config.tracking.uri), name, run_id, metrics)
    return metrics


@dataclass(frozen=True)
class Selection:
    """How far the sweep's choice can be trusted: the best trials' validation values with intervals."""

    metric: str
    rows: list[tuple[int, float, float | None, float | None]]  # trial, value, interval low, high

    @property
    def within_noise(self) -> bool | None:
        """Whether the best and runner-up intervals overlap; None without two intervals."""
        if len(self.rows) < 2 or any(low is None for _, _, low, _ in self.rows[:2]):
            return None
        (_, _, low_a, high_a), (_, _, low_b, high_b) = self.rows[:2]
        return low_a <= high_b and low_b <= high_a

    def lines(self, confidence: float) -> list[str]:
        """The summary's lines: one per trial, then the verdict on best against runner-up."""
        out = [f"[cxr sweep] validation {self.metric} [{confidence:.0%} CI] of the best trials:"]
        for number, value, low, high in self.rows:
            interval = f" [{low:.4f}, {high:.4f}]" if low is not None else " (no interval)"
            out.append(f"  trial {number}: {value:.4f}{interval}")
        verdict = self.within_noise
        if len(self.rows) < 2:
            out.append("[cxr sweep] one completed trial: no runner-up to compare with")
        elif verdict is None:
            out.append(
                "[cxr sweep] cannot say whether the best beats the runner-up: re-evaluate at least two "
                "trials with intervals (hydra.sweeper.trial_evaluation.best_trials=2)"
            )
        elif verdict:
            out.append(
                "[cxr sweep] selection is within noise: the best and runner-up intervals overlap, so the "
                "validation set cannot tell them apart; prefer more validation patients over the ranking"
            )
        else:
            out.append("[cxr sweep] the best trial's interval lies clear of the runner-up's")
        return out


def selection(study: optuna.Study, n: int, direction: str, metric: str, tracking_uri: str) -> Selection:
    """The `n` best trials' `metric` and its `_ci_low`/`_ci_high`, as their MLflow runs hold them after
    the end-of-sweep re-evaluation (a trial's own value where its run has no such metric)."""
    from mlflow.tracking import MlflowClient  # heavy: MLflow, on use (plugin scan imports this module)

    client = MlflowClient(tracking_uri)
    rows = []
    for trial in best_trials(study, n, direction):
        metrics = client.get_run(trial.user_attrs[RUN_ID_ATTR]).data.metrics
        low, high = (metrics.get(name) for name in metric_names.interval(metric))
        rows.append((trial.number, metrics.get(metric, trial.value), low, high))
    return Selection(metric, rows)
