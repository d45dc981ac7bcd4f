"""Promotion gates: a paired patient bootstrap of candidate minus champion on the same validation patients;
a candidate better on the mean but with one collapsed finding is refused with that gate named, a clearly
better one passes, `force=true` records the override; with no champion, the best registered version is
the baseline; promote.log stays in Hydra's output folder."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from cxr.config import GatesConfig
from cxr.data.labels import NIH_PATHOLOGIES
from cxr.evaluation.gates import check_gates
from cxr.evaluation.stored_predictions import predictions_frame
from cxr.serving.inference import Predictions
from cxr.tracking import names as mn
from cxr.tracking import versions
from tests.conftest import REPO

N_PATIENTS, PER_PATIENT = 250, 3


def validation(noise: dict[int, float] | float, seed: int = 0, version_seed: int = 1) -> Predictions:
    """One validation set (fixed by `seed`) scored by a model whose evidence per finding has the given
    noise; scores are the calibrated posterior, so calibration does not tell the versions apart."""
    rng = np.random.default_rng(seed)
    n = N_PATIENTS * PER_PATIENT
    patients = np.repeat(np.arange(N_PATIENTS), PER_PATIENT)
    prevalence = np.linspace(0.15, 0.35, len(NIH_PATHOLOGIES))
    y = (rng.random((n, len(NIH_PATHOLOGIES))) < prevalence).astype(float)
    meta = pd.DataFrame(
        {
            "image_id": [f"{i:06d}.png" for i in range(n)],
            "sex": np.where(rng.random(N_PATIENTS) < 0.5, "M", "F")[patients],
            "age": rng.integers(20, 90, N_PATIENTS)[patients],
            "view": np.where(rng.random(n) < 0.5, "PA", "AP"),
            "follow_up": np.tile(np.arange(PER_PATIENT), N_PATIENTS),
        }
    )
    sigma = np.array([noise.get(k, 1.0) if isinstance(noise, dict) else noise for k in range(y.shape[1])])
    z = y + sigma * np.random.default_rng(version_seed).normal(size=y.shape)
    logit = np.log(prevalence / (1 - prevalence)) + (2 * z - 1) / (2 * sigma**2)
    return Predictions(y, 1 / (1 + np.exp(-logit)), patients, meta)


COLLAPSED = 5  # the finding one candidate loses
GATES = OmegaConf.structured(GatesConfig(resamples=300))


def by_name(gates):
    return {g.name: g for g in gates}


def test_a_candidate_better_on_the_mean_with_one_collapsed_finding_fails_that_gate_only():
    champion = validation(0.8)
    candidate = validation({**{k: 0.5 for k in range(14)}, COLLAPSED: 50.0}, version_seed=2)
    gates = by_name(check_gates(candidate, champion, NIH_PATHOLOGIES, GATES))
    assert gates["mean_auc"].passed, gates["mean_auc"].line
    assert not gates["finding_drop"].passed and NIH_PATHOLOGIES[COLLAPSED] in gates["finding_drop"].line
    assert gates["finding_drop"].line.startswith(f"fail: {NIH_PATHOLOGIES[COLLAPSED]} -0.")
    assert gates["calibration"].passed and gates["subgroup_gap"].passed, gates


def test_a_clearly_better_candidate_passes_every_gate_and_a_worse_one_fails_the_mean():
    champion, better = validation(0.8), validation(0.5, version_seed=2)
    gates = check_gates(better, champion, NIH_PATHOLOGIES, GATES)
    assert all(g.passed for g in gates), [g.line for g in gates]
    worse = by_name(check_gates(champion, better, NIH_PATHOLOGIES, GATES))["mean_auc"]
    assert not worse.passed and "does not beat" in worse.line


def test_the_paired_interval_is_tighter_than_two_separate_ones():
    from cxr.evaluation.gates import paired_auc_difference
    from cxr.evaluation.scoring import bootstrap_scores, patient_bootstrap

    a, b = validation(0.8), validation(0.75)  # two models that err on the same images, as real ones do
    _, paired = paired_auc_difference(a, b, 300, 0)
    w1, o = patient_bootstrap(a.patients, 300, 0)
    w2, _ = patient_bootstrap(a.patients, 300, 1)
    unpaired = (
        bootstrap_scores(a.labels, a.scores, w1, o)["auc"]
        - bootstrap_scores(b.labels, b.scores, w2, o)["auc"]
    )
    assert paired.mean(axis=1).std() < 0.5 * unpaired.mean(axis=1).std()


def test_the_gates_refuse_the_same_images_missing():
    a = validation(0.8)
    b = Predictions(a.labels[:-3], a.scores[:-3], a.patients[:-3], a.metadata.iloc[:-3])
    with pytest.raises(Exception, match="different images"):
        check_gates(a, b, NIH_PATHOLOGIES, GATES)


ONE_FOLD = np.repeat(np.arange(N_PATIENTS) % 5 == 1, PER_PATIENT)  # a fifth of the patients: fold 1


def test_out_of_fold_scores_pair_on_the_other_sides_validation_images_only():
    """A fold ensemble's out-of-fold scores cover all of train_val; a model trained on one split of the
    same train_val list was validated on some of those images: they are compared there."""
    oof, single = validation(0.35, version_seed=3), validation(0.8).take(ONE_FOLD)
    with pytest.raises(Exception, match="different images"):
        check_gates(oof, single, NIH_PATHOLOGIES, GATES)
    for candidate, baseline, better in ((oof, single, True), (single, oof, False)):
        gates = by_name(check_gates(candidate, baseline, NIH_PATHOLOGIES, GATES, out_of_fold=True))
        assert gates["mean_auc"].passed is better, gates["mean_auc"].line
    elsewhere = validation(0.8).take(slice(-300, None))
    elsewhere.metadata["image_id"] = [f"other-{i}.png" for i in range(300)]  # not among the OOF images
    with pytest.raises(Exception, match="different images"):
        check_gates(oof, elsewhere, NIH_PATHOLOGIES, GATES, out_of_fold=True)


# ---------------------------------------------------------------- the command, on a real registry
NAME = "gated"


def register(client: MlflowClient, p: Predictions) -> str:
    """A run that logged these validation predictions, registered as a version tagged for ranking."""
    from cxr.evaluation.scoring import evaluate_split

    with mlflow.start_run() as run:
        mlflow.log_text(
            predictions_frame(p, NIH_PATHOLOGIES).to_csv(index=False), mn.VAL_PREDICTIONS_ARTIFACT
        )
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run.info.run_id).version
    score = evaluate_split(p.labels, p.scores, p.patients, NIH_PATHOLOGIES, 0, 0.95, 0).summary["auc_mean"]
    versions.tag_version(client, NAME, str(version), {mn.RANK: repr(score), mn.RUN_TAG: run.info.run_id})
    return str(version)


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    client.create_experiment("gates", artifact_location=str(tmp_path / "mlruns" / "artifacts"))
    mlflow.set_experiment("gates")
    base = register(client, validation(0.8))
    collapsed = register(client, validation({**{k: 0.5 for k in range(14)}, COLLAPSED: 50.0}, version_seed=2))
    better = register(client, validation(0.35, version_seed=3))
    yield uri, client, (base, collapsed, better)
    mlflow.set_tracking_uri(None)


def promote(uri: str, *args: str) -> None:
    """`python -m cxr.promote` in this process (Python API): compose its config, run it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cxr.config import register_configs
    from cxr.promote import run

    register_configs()
    GlobalHydra.instance().clear()
    overrides = [f"model_name={NAME}", f"tracking.uri={uri}", "gates.resamples=300", *args]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("promote", overrides=overrides)
    GlobalHydra.instance().clear()
    run(cfg)


def champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


@pytest.mark.slow
def test_promotion_is_gated_refusals_name_the_gate_and_force_is_recorded(store, capsys, tmp_path):
    uri, client, (base, collapsed, better) = store
    # no champion yet: the best registered version is the baseline, and a worse version is refused
    with pytest.raises(Exception, match="mean_auc"):
        promote(uri, f"version={base}")
    out = capsys.readouterr().out
    assert f"no champion yet: the best registered version by {mn.RANK}, version {better}" in out
    promote(uri, f"version={base}", "force=true")
    assert champion(client) == base
    tags = client.get_model_version(NAME, base).tags
    assert tags["cxr.champion.overridden_gates"] == "mean_auc,finding_drop" and tags[
        "cxr.gate.mean_auc"
    ].startswith("fail")

    # better on the mean, one finding collapsed: refused by the command, exit 2, one line naming the gate
    command = [sys.executable, "-m", "cxr.promote", f"model_name={NAME}", f"version={collapsed}"]
    refused = subprocess.run(
        [*command, f"tracking.uri={uri}", "gates.resamples=300"], cwd=tmp_path, capture_output=True, text=True
    )
    assert refused.returncode == 2, refused.stderr[-2000:]
    (line,) = refused.stderr.strip().splitlines()[-1:]
    assert line.startswith("cxr: error: ") and "finding_drop" in line and "mean_auc" not in line
    assert (
        f"finding_drop: fail: {NIH_PATHOLOGIES[COLLAPSED]}" in refused.stdout
        and "mean_auc: pass" in refused.stdout
    )
    assert champion(client) == base
    assert not (tmp_path / "promote.log").exists()  # issue 24, item 14: Hydra's output folder only
    assert list(tmp_path.glob("outputs/promote/*/*/promote.log"))

    promote(uri, f"version={collapsed}", "force=true")
    assert client.get_model_version(NAME, collapsed).tags["cxr.champion.overridden_gates"] == "finding_drop"
    promote(uri, f"version={better}")
    assert champion(client) == better
    tags = client.get_model_version(NAME, better).tags
    assert (
        tags["cxr.champion.reason"].startswith(mn.RANK) and "every gate passed" in tags["cxr.champion.reason"]
    )
    assert all(
        tags[f"cxr.gate.{g}"].startswith("pass")
        for g in ("mean_auc", "finding_drop", "subgroup_gap", "calibration")
    )
    assert "cxr.champion.overridden_gates" not in tags


def test_compare_pairs_two_versions_on_validation_with_the_gates_bootstrap(store):
    """`cxr.report compare=`'s numbers: the collapsed finding's paired difference is its gate's."""
    from cxr.evaluation.comparison import compare_versions

    _, client, (base, collapsed, _) = store
    ours, theirs = client.get_model_version(NAME, collapsed), client.get_model_version(NAME, base)
    rows = {r["finding"]: r for r in compare_versions(client, ours, theirs, 300, 0.95, 0)["rows"]}
    assert list(rows) == [*NIH_PATHOLOGIES, "mean"]
    for r in rows.values():
        assert r["difference"] == pytest.approx(r["auc"] - r["other_auc"], abs=1e-9)
        assert r["ci_low"] <= r["difference"] <= r["ci_high"] and r["test_auc"] is None  # no test logged
    lost = rows[NIH_PATHOLOGIES[COLLAPSED]]
    assert lost["ci_high"] < 0 and rows["mean"]["difference"] > 0
    p = {v: validation_of(client, v) for v in (collapsed, base)}
    gate = by_name(check_gates(p[collapsed], p[base], NIH_PATHOLOGIES, GATES))["finding_drop"]
    bounds = f"[{lost['ci_low']:+.4f}, {lost['ci_high']:+.4f}]"
    assert f"{NIH_PATHOLOGIES[COLLAPSED]} {lost['difference']:+.4f} {bounds}" in gate.line


def validation_of(client: MlflowClient, version: str) -> Predictions:
    from cxr.evaluation.stored_predictions import frame_predictions
    from cxr.tracking.promotion import validation_predictions

    run_id = client.get_model_version(NAME, version).tags[mn.RUN_TAG]
    return frame_predictions(validation_predictions(client, run_id), "test")[0]


def test_a_fold_ensemble_is_gated_against_a_champion_on_the_champions_validation_images(store):
    """Its out-of-fold scores, tagged so (cxr.validation), on the champion's images; `cxr.report
    compare=` pairs the same way."""
    from cxr.evaluation.comparison import compare_versions

    uri, client, _ = store
    single = register(client, validation(0.8, version_seed=4).take(ONE_FOLD))
    client.set_registered_model_alias(NAME, "champion", single)  # a champion validated on fold 1 alone
    folds = register(client, validation(0.35, version_seed=3))
    client.set_model_version_tag(NAME, folds, mn.VALIDATION_TAG, mn.OUT_OF_FOLD)
    promote(uri, f"version={folds}")
    assert champion(client) == folds
    assert client.get_model_version(NAME, folds).tags["cxr.gate.mean_auc"].startswith("pass")
    ours, theirs = client.get_model_version(NAME, folds), client.get_model_version(NAME, single)
    assert compare_versions(client, ours, theirs, 50, 0.95, 0)["n_images"] == int(ONE_FOLD.sum())
