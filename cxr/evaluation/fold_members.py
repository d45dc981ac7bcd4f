"""The fold models of one configuration as an ensemble's members, and their out-of-fold predictions.

`python -m cxr.train -m dataset.split=kfold dataset.fold=0,1,2,3,4` trains one model per fold, each
validated on its own fold, so their validation sets differ and no image is unseen by all of them. A
fold ensemble is therefore scored in two parts: on test (shared) by the members' mean, and on
validation by the out-of-fold (OOF) predictions, each train_val image scored by the one member that
did not train on it: the configuration's validation estimate, on every train_val image once. Members
must make one complete, consistent set of folds, else the error names the versions; `mixed_folds=true`
turns that into a warning and scores each image by the mean of the members that validated it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from cxr.runtime.console import log
from cxr.runtime.errors import CxrError

# what makes two fold models one configuration: the training config, less which fold validates and
# where things are (seed and tracking name a run, not a configuration)
CONFIGURATION_KEYS = ("dataset", "model", "loss", "callbacks", "trainer")
NOT_CONFIGURATION = ("fold", "root", "cache_dir")


@dataclass(frozen=True)
class FoldMember:
    """One registered fold model: its version, run, logged config and logged split (image_id, split)."""

    version: str
    run_id: str
    config: DictConfig
    split: pd.DataFrame

    @property
    def fold(self) -> tuple[int, int, int]:
        """(folds, split_seed, fold) as its run configured them."""
        d = self.config.dataset
        return int(d.get("folds", 0)), int(d.split_seed), int(d.get("fold", 0))

    def validated(self) -> set[str]:
        """The images this member did not train on and was validated on."""
        return set(self.split.loc[self.split["split"] == "val", "image_id"])


def configuration(config: DictConfig) -> dict:
    """The parts of a run's config that define its configuration (see CONFIGURATION_KEYS)."""
    out = {k: OmegaConf.to_container(config[k], resolve=True) for k in CONFIGURATION_KEYS if k in config}
    for key in NOT_CONFIGURATION:
        out.get("dataset", {}).pop(key, None)
    return out


def fold_problems(members: Sequence[FoldMember]) -> list[str]:
    """Why `members` are not one complete set of folds of one configuration (empty when they are)."""
    problems = []
    not_kfold = [m.version for m in members if m.config.dataset.split != "kfold"]
    if not_kfold:
        problems.append(f"version(s) {', '.join(not_kfold)} were not trained with dataset.split=kfold")
    first = members[0]
    settings = [m.version for m in members if m.fold[:2] != first.fold[:2]]
    if settings:
        problems.append(
            f"version(s) {', '.join(settings)} have other dataset.folds/split_seed than version "
            f"{first.version} (folds={first.fold[0]}, split_seed={first.fold[1]})"
        )
    differ = [m.version for m in members if configuration(m.config) != configuration(first.config)]
    if differ:
        problems.append(
            f"version(s) {', '.join(differ)} were trained with another configuration than version "
            f"{first.version} (more than dataset.fold differs)"
        )
    by_fold: dict[int, list[str]] = {}
    for m in members:
        by_fold.setdefault(m.fold[2], []).append(m.version)
    twice = {f: v for f, v in sorted(by_fold.items()) if len(v) > 1}
    problems += [f"versions {', '.join(v)} were all validated on fold {f}" for f, v in twice.items()]
    missing = sorted(set(range(first.fold[0])) - set(by_fold))
    if missing:
        problems.append(f"no version was validated on fold(s) {', '.join(map(str, missing))}")
    return problems


def check_folds(members: Sequence[FoldMember], mixed: bool) -> None:
    """Raise naming the versions unless `members` are one complete set of folds; with `mixed`, warn."""
    problems = fold_problems(members)
    if not problems:
        return
    text = "; ".join(problems)
    if mixed:
        log.warning(f"cxr: warning: mixed_folds=true: {text}")
        return
    raise CxrError(
        f"the fold models are not one complete set of folds of one configuration: {text}. Select one set "
        "(parent_run=<the grid parent run of the -m dataset.fold=... multirun>, study= or tags=), or give "
        "mixed_folds=true to score each image by the members that validated it"
    )


def validation_split(members: Sequence[FoldMember]) -> pd.DataFrame:
    """The ensemble's split: test as its members' test, every image some member validated as `val`
    (scored out of fold), the rest `train`. Members must agree on the test images."""
    first = members[0].split
    test = set(first.loc[first["split"] == "test", "image_id"])
    for m in members[1:]:
        if set(m.split.loc[m.split["split"] == "test", "image_id"]) != test:
            raise CxrError(
                f"version {m.version} was tested on other images than version {members[0].version}; "
                "fold models share the official test list"
            )
    validated = set().union(*(m.validated() for m in members))
    split = np.where(
        first["image_id"].isin(test), "test", np.where(first["image_id"].isin(validated), "val", "train")
    )
    return first.assign(split=split)


def out_of_fold(
    image_ids: Sequence[str], members: Sequence[FoldMember], member_scores: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(OOF scores for `image_ids`, how many members scored each): each image's score is the mean of the
    members that validated it (exactly one for a complete set of folds); `member_scores[i]` holds member
    i's scores on `image_ids`. A member's score on an image it trained on is never used."""
    ids = pd.Index(image_ids)
    total = np.zeros_like(np.asarray(member_scores[0], np.float64))
    count = np.zeros(len(ids), np.int64)
    for member, scores in zip(members, member_scores, strict=True):
        mine = ids.isin(list(member.validated()))
        total[mine] += np.asarray(scores, np.float64)[mine]
        count += mine
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count[:, None], count
