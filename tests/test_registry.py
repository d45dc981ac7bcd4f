"""The registry end: versions ranked by validation AUC, the top-5 ensemble, promotion by alias.

Real SQLite MLflow store and registry, real Keras models: one tiny run trained by `cxr.train`
gives the dataset and split every version refers to; six more versions are real small models
logged as cxr pyfuncs, registered with chosen validation AUCs, at two image sizes.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cxr import model_registry, pyfunc
from cxr.labels import NIH_PATHOLOGIES
from tests.conftest import TINY, hydra_compose, run_cli, store_overrides

pytestmark = pytest.mark.slow

NAME = "cxr-registry-test"
# version -> (validation mean AUC tag, test mean AUC metric, image size); version 1 is the trained run
# (the trained version 1 lands in between: a tiny model's validation AUC is far from both ends)
PLANTED = {
    2: (0.96, 0.60, 32),
    3: (0.99, 0.62, 48),
    4: (0.30, 0.99, 32),  # the best on test and the worst on validation: never picked
    5: (0.98, 0.61, 48),
    6: (0.97, 0.63, 32),
}


def plant_version(cfg, source_run, val_auc: float, test_auc: float, size: int, seed: int) -> str:
    """A real small model in its own run, with the trained run's dataset config and split."""
    import keras
    from omegaconf import OmegaConf

    from cxr.config import SmallCnnConfig
    from cxr.models import build_model

    client = MlflowClient(cfg.tracking.uri)
    keras.utils.set_random_seed(seed)
    model = build_model(OmegaConf.structured(SmallCnnConfig(filters=[4], dense_units=8)), size, 14)
    spec = pyfunc.ModelSpec(list(NIH_PATHOLOGIES), dict.fromkeys(NIH_PATHOLOGIES, 0.5), [size], [1.0])
    mlflow.set_tracking_uri(cfg.tracking.uri)
    mlflow.set_experiment(cfg.tracking.experiment_name)
    with mlflow.start_run() as run:
        for artifact in ("config.yaml", "split.csv"):
            mlflow.log_text(mlflow.artifacts.load_text(f"runs:/{source_run}/{artifact}"), artifact)
        mlflow.log_metrics({"val_auc_mean": val_auc, "test_auc_mean": test_auc})
        info = pyfunc.log_model([model], spec, registered_model_name=NAME)
    source_tags = client.get_model_version(NAME, "1").tags
    tags = model_registry.version_tags(
        {"val_auc_mean": val_auc}, run.info.run_id, spec, source_tags["split_digest"], "cxr"
    )
    version = str(info.registered_model_version)
    model_registry.tag_version(client, NAME, version, tags)
    return version


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    overrides = [*TINY, *store_overrides(tmp), f"tracking.registered_model_name={NAME}"]
    with hydra_compose() as compose_cfg:
        cfg = compose_cfg(overrides)
    from cxr.train import train

    train(cfg, overrides)
    client = MlflowClient(cfg.tracking.uri)
    trained = client.get_model_version(NAME, "1")
    for version, (val, test, size) in PLANTED.items():
        assert plant_version(cfg, trained.run_id, val, test, size, seed=version) == str(version)
    return cfg, client


def cli(cfg, module: str, *args: str):
    return run_cli(
        module, f"tracking.uri={cfg.tracking.uri}", f"hydra.run.dir={cfg.output_dir}/{module}", *args
    )


def test_a_trained_version_carries_what_ranking_and_use_need(registry):
    cfg, client = registry
    tags = client.get_model_version(NAME, "1").tags
    run = client.get_run(tags["run_id"])
    assert float(tags["val_auc_mean"]) == pytest.approx(run.data.metrics["val_auc_mean"])
    assert (
        float(tags["val_auc_mean_ci_low"])
        <= float(tags["val_auc_mean"])
        <= float(tags["val_auc_mean_ci_high"])
    )
    assert tags["cxr.kind"] == "single" and tags["image_size"] == "32" and len(tags["split_digest"]) == 16
    assert set(__import__("json").loads(tags["thresholds"])) == set(NIH_PATHOLOGIES)


def test_ranking_is_by_validation_and_filters_apply(registry):
    cfg, client = registry
    ranked = model_registry.ranked_versions(client, NAME)
    scores = [c.score for c in ranked]
    assert scores == sorted(scores, reverse=True) and ranked[-1].version == "4"
    assert [c.version for c in model_registry.ranked_versions(client, NAME, tags={"image_size": "48"})] == [
        "3",
        "5",
    ]
    with pytest.raises(Exception, match="rank on a validation metric"):
        model_registry.ranked_versions(client, NAME, metric="test_auc_mean")


@pytest.fixture(scope="module")
def ensemble(registry):
    cfg, client = registry
    out = cli(cfg, "cxr.ensemble", f"model_name={NAME}", "evaluation.bootstrap.resamples=50")
    assert out.returncode == 0, out.stderr[-3000:]
    version = out.stdout.split(f"registered as models:/{NAME}/")[1].split()[0]
    return out, version


def test_the_ensemble_takes_the_top_five_on_validation_never_test(registry, ensemble):
    cfg, client = registry
    out, version = ensemble
    tags = client.get_model_version(NAME, version).tags
    expected = [c.version for c in model_registry.ranked_versions(client, NAME, kind="single")[:5]]
    assert "4" not in expected and len(expected) == 5
    assert tags["members"] == ",".join(f"{NAME}/{v}" for v in expected)
    assert tags["cxr.kind"] == "ensemble"
    run = client.get_run(tags["run_id"])
    assert [run.data.params[f"member.{i}.version"] for i in range(5)] == expected
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/test_members_per_disease.csv", "evaluation/thresholds.json"} <= names
    assert "ensemble mean AUC [95% CI]: validation" in out.stdout


def test_the_ensemble_is_the_mean_of_its_members_at_their_own_sizes(registry, ensemble):
    cfg, client = registry
    _, version = ensemble
    mlflow.set_tracking_uri(cfg.tracking.uri)
    model = pyfunc.load(f"models:/{NAME}/{version}")
    members = client.get_model_version(NAME, version).tags["members"].split(",")
    assert sorted(set(model.spec.image_sizes)) == [32, 48]
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (90, 70), dtype=np.uint8) for _ in range(3)]
    each = [pyfunc.load(f"models:/{m}").probabilities(pictures) for m in members]
    np.testing.assert_allclose(model.probabilities(pictures), np.mean(each, axis=0), rtol=1e-5, atol=1e-6)


def test_members_on_another_split_are_refused_by_name(registry):
    cfg, client = registry
    client.set_model_version_tag(NAME, "6", "split_digest", "0" * 16)
    try:
        out = cli(cfg, "cxr.ensemble", f"model_name={NAME}", "top_k=5")
    finally:
        original = client.get_model_version(NAME, "1").tags["split_digest"]
        client.set_model_version_tag(NAME, "6", "split_digest", original)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()[-1:]
    assert line.startswith("cxr: error: versions 6 of") and "another patient split" in line


def test_promotion_refuses_a_worse_version_moves_for_a_better_and_force_overrides(registry, ensemble):
    cfg, client = registry
    ranked = {c.version: c.score for c in model_registry.ranked_versions(client, NAME)}
    best, worse = max(ranked, key=ranked.get), "4"
    first = cli(cfg, "cxr.promote", f"model_name={NAME}", "version=2")
    assert first.returncode == 0, first.stderr[-2000:]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    refused = cli(cfg, "cxr.promote", f"model_name={NAME}", f"version={worse}")
    assert refused.returncode == 2 and "does not beat" in refused.stderr and "force=true" in refused.stderr
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    better = cli(cfg, "cxr.promote", f"model_name={NAME}", f"version={best}")
    assert better.returncode == 0, better.stderr[-2000:]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == best
    record = client.get_model_version(NAME, best).tags
    assert record["cxr.champion.replaced"] == "2" and record["cxr.champion.reason"].startswith("val_auc_mean")
    forced = cli(cfg, "cxr.promote", f"model_name={NAME}", f"version={worse}", "force=true")
    assert (
        forced.returncode == 0 and str(client.get_model_version_by_alias(NAME, "champion").version) == worse
    )
    assert client.get_model_version(NAME, worse).tags["cxr.champion.reason"].startswith("forced")
    shown = cli(cfg, "cxr.promote", f"model_name={NAME}")
    assert shown.returncode == 0 and f"{NAME}@champion: version {worse}" in shown.stdout
    assert "rank" in shown.stdout and "ensemble" in shown.stdout
