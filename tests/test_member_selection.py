"""Which versions an ensemble takes: greedy forward selection with replacement on validation (Caruana et
al. 2004) and what `cxr.ensemble` says when the ensemble does not beat its best member."""

from __future__ import annotations

import numpy as np

from cxr.evaluation.member_selection import greedy_picks, verdict
from cxr.evaluation.scoring import mean_auc

RNG = np.random.default_rng(0)
Y = (RNG.random((400, 14)) < 0.3).astype(np.float32)


def informed(columns: slice, noise: float, seed: int) -> np.ndarray:
    """Scores that know the labels of `columns` (through noise) and nothing of the others."""
    rng = np.random.default_rng(seed)
    scores = rng.random(Y.shape)
    scores[:, columns] = Y[:, columns] + noise * rng.standard_normal(Y[:, columns].shape)
    return scores


def test_greedy_starts_from_the_best_and_never_adds_what_makes_it_worse():
    good = informed(slice(0, 14), 0.6, 1)
    noise = [np.random.default_rng(s).random(Y.shape) for s in (2, 3, 4, 5)]
    candidates = [noise[0], good, *noise[1:]]
    top = np.mean(candidates, axis=0)
    assert mean_auc(Y, top) < mean_auc(Y, good)  # what the mean of all five gave in issue 24
    picks = greedy_picks(Y, candidates, max_members=10)
    assert picks[1] >= 1 and sum(picks) <= 10
    chosen = np.tensordot(np.array(picks) / sum(picks), np.stack(candidates), axes=1)
    assert mean_auc(Y, chosen) >= mean_auc(Y, good)


def test_greedy_combines_complementary_members_and_repeats_the_stronger():
    left, right = informed(slice(0, 7), 0.5, 1), informed(slice(7, 14), 1.0, 2)
    picks = greedy_picks(Y, [right, left], max_members=10)
    assert picks[0] >= 1 and picks[1] >= 1  # each knows half the findings: together they beat either
    both = np.tensordot(np.array(picks) / sum(picks), np.stack([right, left]), axes=1)
    assert mean_auc(Y, both) > max(mean_auc(Y, left), mean_auc(Y, right))
    assert greedy_picks(Y, [right, left], max_members=1) == [0, 1]  # one pick: the best single model


def test_the_verdict_names_the_best_member_and_the_remedy_in_place_of_promote_it():
    assert verdict(0.75, 0.74, "3", "cxr", "top_k") is None  # it beats its best member: promote it
    line = verdict(0.7252, 0.7472, "3", "cxr", "top_k")
    assert "does not beat its best member on validation: mean AUC 0.7252 against 0.7472 for version 3" in line
    assert "python -m cxr.ensemble model_name=cxr selection=greedy" in line
    assert "python -m cxr.promote model_name=cxr version=3" in line
    alone = verdict(0.7472, 0.7472, "3", "cxr", "greedy")  # greedy kept the best member alone
    assert "selection=greedy" not in alone and "no combination beat it alone" in alone
