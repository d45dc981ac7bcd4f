"""Which registered versions an ensemble takes, and each one's weight.

`top_k` (the default, the mission's "top five"): the K best versions by validation mean AUC, averaged
equally or by their skill (`weights`). `greedy`: forward selection with replacement on the validation
predictions (Caruana et al., "Ensemble selection from libraries of models", ICML 2004; what
auto-sklearn builds its ensembles with): start from the best single version, add the version (a
repeat allowed) whose addition raises validation mean AUC most, stop when none raises it or at
`max_members` picks; a version's weight is its share of the picks. Greedy starts from the best member
and only ever adds what improves, so on validation it is never worse than its best member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cxr.evaluation.scoring import mean_auc
from cxr.runtime.builders import Builders
from cxr.runtime.errors import CxrError

if TYPE_CHECKING:
    from cxr.config import EnsembleConfig

WEIGHTINGS = ("mean", "val_auc")
# `members=`: which versions make an ensemble -> the module whose `build(cfg)` builds it. ranked: the
# top_k or greedy selection by validation AUC, scored on one shared split; folds: the fold models of one
# configuration (dataset.split=kfold), validated out of fold (cxr.evaluation.fold_ensemble)
MEMBER_SETS = {"ranked": "cxr.evaluation.ensemble", "folds": "cxr.evaluation.fold_ensemble"}


def member_weights(scores: Sequence[float], method: str) -> list[float]:
    """Each member's share: equal, or proportional to its validation AUC above chance (0.5)."""
    if method == "mean":
        return [1.0 / len(scores)] * len(scores)
    if method == "val_auc":
        skill = np.clip(np.asarray(scores, np.float64) - 0.5, 1e-6, None)
        return (skill / skill.sum()).tolist()
    raise CxrError(f"weights={method!r}: choose one of {', '.join(WEIGHTINGS)}")


def greedy_picks(y_val: np.ndarray, val_scores: Sequence[np.ndarray], max_members: int) -> list[int]:
    """How many times greedy forward selection with replacement picks each candidate (Caruana et al.
    2004): from the best single candidate, each round adds the one whose addition gives the highest
    validation mean AUC, while that is strictly higher; at most `max_members` picks. Ties go to the
    earlier candidate (candidates come ranked, best first)."""
    single = [mean_auc(y_val, s) for s in val_scores]
    picks = [0] * len(val_scores)
    best = int(np.nanargmax(single))
    picks[best], total, current = 1, np.asarray(val_scores[best], np.float64), single[best]
    for n in range(1, max_members):
        trial = [mean_auc(y_val, (total + s) / (n + 1)) for s in val_scores]
        j = int(np.nanargmax(trial))
        if not trial[j] > current:
            break
        picks[j] += 1
        total, current = total + val_scores[j], trial[j]
    return picks


@dataclass(frozen=True)
class Choice:
    """What a selection made of the scored candidates: a weight each (0: not a member)."""

    weights: list[float]
    picks: list[int] | None = None  # greedy's picks per candidate (repeats: integer weights)


SELECTIONS: Builders = Builders("ensemble selection")


@SELECTIONS.register("top_k")
def top_k(
    ranked_scores: Sequence[float], y_val: np.ndarray, val_scores: Sequence[np.ndarray], cfg: EnsembleConfig
) -> Choice:
    """The first `top_k` candidates (they come ranked by their validation AUC tag), `weights` applied."""
    return Choice(member_weights(ranked_scores, cfg.weights))


@SELECTIONS.register("greedy")
def greedy(
    ranked_scores: Sequence[float], y_val: np.ndarray, val_scores: Sequence[np.ndarray], cfg: EnsembleConfig
) -> Choice:
    """Greedy forward selection with replacement; the weights are the picks' shares."""
    picks = greedy_picks(y_val, val_scores, cfg.max_members)
    return Choice([p / sum(picks) for p in picks], picks)


def pool_size(cfg: EnsembleConfig) -> int | None:
    """How many ranked versions a selection scores: top_k's K, or every candidate for greedy."""
    return cfg.top_k if cfg.selection == "top_k" else None


def verdict(
    ensemble_val: float, best_val: float, best_version: str, model_name: str, selection: str
) -> str | None:
    """None when the ensemble beats its best member's validation mean AUC; else the plain statement and
    the remedy (greedy selection, or the best member itself), in place of "Promote it"."""
    if ensemble_val > best_val:
        return None
    remedy = (
        f"python -m cxr.ensemble model_name={model_name} selection=greedy (never worse than its best "
        "member on validation), or promote"
        if selection != "greedy"
        else "no combination beat it alone: promote"
    )
    return (
        f"cxr: warning: the ensemble does not beat its best member on validation: mean AUC "
        f"{ensemble_val:.4f} against {best_val:.4f} for version {best_version}. Do not promote it; "
        f"instead: {remedy} version {best_version} itself: python -m cxr.promote model_name={model_name} "
        f"version={best_version}"
    )
