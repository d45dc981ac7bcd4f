"""The registry end: versions ranked by validation AUC, the top-5 ensemble, promotion by alias.

Real SQLite MLflow store and registry, real Keras models: a copy of the session's tiny run trained by
`cxr.train` (tests/conftest.py) gives the dataset and split every version refers to; six more versions
are real small models logged as cxr pyfuncs, registered with chosen validation AUCs, at two image sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cxr.data.labels import NIH_PATHOLOGIES
from cxr.serving import pyfunc
from cxr.tracking import names as mn
from cxr.tracking import versions as model_registry
from tests.conftest import TINY_MODEL, run_cli

pytestmark = pytest.mark.slow

NAME = TINY_MODEL
MEMBERS = "cxr-demo"  # the experiment the registry's versions were trained in
# version -> (validation mean AUC tag, test mean AUC metric, image size); version 1 is the trained run
# (the trained version 1 lands in between: a tiny model's validation AUC is far from both ends)
PLANTED = {
    2: (0.96, 0.60, 32),
    3: (0.99, 0.62, 48),
    4: (0.30, 0.99, 32),  # the best on test and the worst on validation: never picked
    5: (0.98, 0.61, 48),
    6: (0.97, 0.63, 32),
}


def plant_version(
    cfg, source_run, val_auc: float, test_auc: float, size: int, seed: int, thresholds: dict | None = None
) -> str:
    """A real small model in its own run, with the trained run's dataset config and split."""
    import keras
    from omegaconf import OmegaConf

    from cxr.config import SmallCnnConfig
    from cxr.models import build_model

    client = MlflowClient(cfg.tracking.uri)
    keras.utils.set_random_seed(seed)
    model = build_model(OmegaConf.structured(SmallCnnConfig(filters=[4], dense_units=8)), size, 14)
    thresholds = thresholds or dict.fromkeys(NIH_PATHOLOGIES, 0.5)
    spec = pyfunc.ModelSpec(list(NIH_PATHOLOGIES), thresholds, [size], [1.0])
    mlflow.set_tracking_uri(cfg.tracking.uri)
    mlflow.set_experiment(cfg.tracking.experiment_name)
    with mlflow.start_run() as run:
        for artifact in ("config.yaml", "split.csv"):
            mlflow.log_text(mlflow.artifacts.load_text(f"runs:/{source_run}/{artifact}"), artifact)
        mlflow.log_metrics({mn.RANK: val_auc, "test/auc_mean": test_auc})
        info = pyfunc.log_model([model], spec, registered_model_name=NAME)
    source_tags = client.get_model_version(NAME, "1").tags
    tags = model_registry.version_tags(
        {mn.RANK: val_auc}, run.info.run_id, spec, source_tags["split_digest"], "cxr"
    )
    version = str(info.registered_model_version)
    model_registry.tag_version(client, NAME, version, tags)
    return version


@pytest.fixture(scope="module")
def registry(tiny_store, tmp_path_factory):
    """A copy of the session's tiny run (version 1) and the planted versions 2 to 6 beside it."""
    cfg = tiny_store.copy(tmp_path_factory.mktemp("registry"))
    client = MlflowClient(cfg.tracking.uri)
    trained = client.get_model_version(NAME, "1")
    for version, (val, test, size) in PLANTED.items():
        assert plant_version(cfg, trained.run_id, val, test, size, seed=version) == str(version)
    # the members' experiment is not cxr.ensemble's default one: the ensemble must land beside them
    client.rename_experiment(
        client.get_experiment_by_name(cfg.tracking.experiment_name).experiment_id, MEMBERS
    )
    cfg.tracking.experiment_name = MEMBERS
    return cfg, client


def cli(cfg, module: str, *args: str):
    return run_cli(
        module, f"tracking.uri={cfg.tracking.uri}", f"hydra.run.dir={cfg.output_dir}/{module}", *args
    )


def test_a_trained_version_carries_what_ranking_and_use_need(registry):
    cfg, client = registry
    tags = client.get_model_version(NAME, "1").tags
    run = client.get_run(tags["run_id"])
    assert float(tags[mn.RANK]) == pytest.approx(run.data.metrics[mn.RANK])
    low, high = mn.interval(mn.RANK)
    assert float(tags[low]) <= float(tags[mn.RANK]) <= float(tags[high])
    assert tags["cxr.kind"] == "single" and tags["image_size"] == "32" and len(tags["split_digest"]) == 16
    assert tags["tta"] == "1 view (off)"
    assert tags["run_name"] == run.info.run_name  # the version list says which run each version is
    assert client.get_model_version(NAME, "1").description == f"from run {run.info.run_name}"
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
    with pytest.raises(Exception, match="choose a validation metric"):
        model_registry.ranked_versions(client, NAME, metric="test/auc_mean")


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
    assert client.get_experiment(run.info.experiment_id).name == MEMBERS  # beside its members
    assert client.get_experiment_by_name("cxr") is None


def val_means(client, run_id: str) -> tuple[float, dict[str, float]]:
    """An ensemble run's validation mean AUC, and each member's, from its side-by-side table."""
    import pandas as pd

    path = client.download_artifacts(run_id, "evaluation/val_members_per_disease.csv")
    table = pd.read_csv(path, header=[0, 1], index_col=0)
    members = {m[1:]: table[(m, "auc")].mean() for m in table.columns.get_level_values(0) if m != "ensemble"}
    return client.get_run(run_id).data.metrics[mn.RANK], members


def test_the_ensemble_says_plainly_when_it_does_not_beat_its_best_member(registry, ensemble):
    cfg, client = registry
    out, version = ensemble
    ensemble_val, members = val_means(client, client.get_model_version(NAME, version).tags["run_id"])
    best = max(members, key=members.get)
    if ensemble_val > members[best]:
        assert "Promote it: python -m cxr.promote" in out.stdout
    else:  # the planted versions' tags promise 0.96-0.99; their real validation AUC is chance
        assert "Promote it" not in out.stdout
        assert (
            f"the ensemble does not beat its best member on validation: mean AUC {ensemble_val:.4f}"
            in out.stderr
        )
        assert "selection=greedy" in out.stderr and f"model_name={NAME} version={best}" in out.stderr


def test_greedy_selection_is_never_worse_than_its_best_member_on_validation(registry, ensemble):
    cfg, client = registry
    out = cli(
        cfg,
        "cxr.ensemble",
        f"model_name={NAME}",
        "selection=greedy",
        "max_members=4",
        "tracking.experiment_name=chosen",
        "evaluation.bootstrap.resamples=0",
        "evaluation.plots=false",
        "evaluation.calibration=temperature",  # the ensemble's own calibrator, fitted on its validation
    )
    assert out.returncode == 0, out.stderr[-3000:]
    version = out.stdout.split(f"registered as models:/{NAME}/")[1].split()[0]
    tags = client.get_model_version(NAME, version).tags
    run = client.get_run(tags["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "chosen"  # given: where it goes
    assert mn.split_metric("val", mn.ECE_UNCALIBRATED) in run.data.metrics
    ensemble_val, members = val_means(client, tags["run_id"])
    candidates = [c.version for c in model_registry.ranked_versions(client, NAME, kind="single")]
    assert set(members) <= set(candidates)
    assert ensemble_val >= max(members.values()) - 1e-6
    spec = pyfunc.load(f"models:/{NAME}/{version}").spec
    picks = [m["picks"] for m in spec.members]
    assert 1 <= sum(picks) <= 4 and all(p >= 1 for p in picks)
    np.testing.assert_allclose(spec.weights, [p / sum(picks) for p in picks], rtol=1e-6)
    assert "greedy selection" in out.stdout
    assert spec.calibration["method"] == "temperature" and spec.calibration["findings"]
    chosen = json.loads(Path(client.download_artifacts(run.info.run_id, mn.THRESHOLDS_ARTIFACT)).read_text())
    assert spec.operating_points == chosen["operating_points"]  # the ensemble's own, from its validation
    assert set(spec.operating_points) == {"spec90", "spec95", "sens90", "sens95"}


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


TAGS_ONLY = "gates.enabled=false"  # the tag rule; the gates on evidence: tests/test_gates.py


def test_promotion_refuses_a_worse_version_moves_for_a_better_and_force_overrides(registry, ensemble):
    cfg, client = registry
    ranked = {c.version: c.score for c in model_registry.ranked_versions(client, NAME)}
    best, worse = max(ranked, key=ranked.get), "4"
    first = cli(cfg, "cxr.promote", f"model_name={NAME}", "version=2", TAGS_ONLY)
    assert first.returncode == 0, first.stderr[-2000:]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    refused = cli(cfg, "cxr.promote", f"model_name={NAME}", f"version={worse}", TAGS_ONLY)
    assert refused.returncode == 2 and "does not beat" in refused.stderr and "force=true" in refused.stderr
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    better = cli(cfg, "cxr.promote", f"model_name={NAME}", f"version={best}", TAGS_ONLY)
    assert better.returncode == 0, better.stderr[-2000:]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == best
    record = client.get_model_version(NAME, best).tags
    assert record["cxr.champion.replaced"] == "2" and record["cxr.champion.reason"].startswith(mn.RANK)
    forced = cli(cfg, "cxr.promote", f"model_name={NAME}", f"version={worse}", "force=true", TAGS_ONLY)
    assert (
        forced.returncode == 0 and str(client.get_model_version_by_alias(NAME, "champion").version) == worse
    )
    assert client.get_model_version(NAME, worse).tags["cxr.champion.reason"].startswith("forced")
    shown = cli(cfg, "cxr.promote", f"model_name={NAME}")
    assert shown.returncode == 0 and f"{NAME}@champion: version {worse}" in shown.stdout
    assert "rank" in shown.stdout and "ensemble" in shown.stdout


def sample_folder(shared_data, folder):
    """Two real NIH images (1024 px grey, 128 px RGB) and a text file with an image's name."""
    import shutil

    folder.mkdir()
    shutil.copy(shared_data / "nih-samples" / "full_1024px" / "00000001_000.png", folder / "a_1024.png")
    shutil.copy(shared_data / "nih-samples" / "kcr_128px" / "00000002_000.png", folder / "b_128.png")
    (folder / "c_notes.png").write_text("a text file, not an image")
    return folder


def test_predict_prints_findings_writes_a_table_and_heatmaps_and_names_the_bad_file(
    registry, shared_data, tmp_path
):
    import pandas as pd
    from PIL import Image

    cfg, client = registry
    source = client.get_model_version(NAME, "1").run_id
    always = {p: None for p in NIH_PATHOLOGIES} | {"Cardiomegaly": 0.0, "Effusion": 0.0}
    version = plant_version(cfg, source, 0.5, 0.5, 48, seed=9, thresholds=always)
    folder = sample_folder(shared_data, tmp_path / "images")
    out = run_cli(
        "cxr.predict",
        f"tracking.uri={cfg.tracking.uri}",
        f"model=models:/{NAME}/{version}",
        f"images={folder}",
        "heatmaps=true",
        f"output_dir={tmp_path}/out",
        f"hydra.run.dir={tmp_path}/hydra",
    )
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("cxr: error:")]
    assert line.startswith(f"cxr: error: {folder / 'c_notes.png'}: not a readable image")
    assert "Traceback" not in out.stderr
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", index_col="image")
    assert [Path(p).name for p in table.index] == ["a_1024.png", "b_128.png"]
    assert list(table["findings"]) == ["Cardiomegaly|Effusion"] * 2
    values = table[list(NIH_PATHOLOGIES)].to_numpy()
    assert np.all((values >= 0) & (values <= 1))
    assert "findings: Cardiomegaly, Effusion" in out.stdout
    for name, side in (("a_1024", 1024), ("b_128", 128)):
        for finding in ("Cardiomegaly", "Effusion"):
            with Image.open(tmp_path / "out" / "heatmaps" / f"{name}_{finding}.png") as heat:
                assert heat.size == (side, side)  # at the input's resolution


def test_the_served_champion_answers_like_cxr_predict(registry, ensemble, shared_data, tmp_path):
    import base64
    import json
    import urllib.request

    from cxr.serving.inference import predict_files

    from .services import mlflow_process

    cfg, client = registry
    _, version = ensemble
    client.set_registered_model_alias(NAME, "serving", version)
    folder = sample_folder(shared_data, tmp_path / "images")
    paths = [folder / "a_1024.png", folder / "b_128.png"]
    serve = ["models", "serve", "-m", f"models:/{NAME}@serving", "--env-manager", "local"]
    server, url = mlflow_process(serve, "/ping", tmp_path, {"MLFLOW_TRACKING_URI": cfg.tracking.uri})
    try:
        rows = [[base64.b64encode(p.read_bytes()).decode()] for p in paths]
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()
        request = urllib.request.Request(
            f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as reply:
            answer = json.loads(reply.read())["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    model = pyfunc.load(f"models:/{NAME}@serving")
    expected = predict_files(model, [str(p) for p in paths])
    served = np.array([[row[p] for p in NIH_PATHOLOGIES] for row in answer])
    assert served.shape == (2, 14)
    np.testing.assert_allclose(served, expected.scores, rtol=1e-5, atol=1e-6)
    assert [row["findings"] for row in answer] == model.findings(expected.scores)
