"""`cxr.ensemble members=folds`: the fold models of one `-m dataset.fold=...` multirun as one ensemble,
validated out of fold and tested by the members' mean; mismatched members are an error naming them.

A real SQLite MLflow store: three tiny fold models trained by `python -m cxr.train -m` (one grid parent),
and a fourth fold-1 model trained alone, which makes the registry's fold models a mismatched set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cxr.evaluation.fold_members import FoldMember, check_folds, out_of_fold
from cxr.runtime.errors import CxrError
from cxr.tracking import names as mn
from tests.conftest import TINY, data_overrides, run_cli

NAME = "cxr-folds"
FOLDS = 3
FAST = [
    *TINY,
    "trainer.epochs=1",
    "evaluation.plots=false",
    "evaluation.bootstrap.resamples=20",
    "dataset.split=kfold",
    f"dataset.folds={FOLDS}",
    f"tracking.registered_model_name={NAME}",
]


@pytest.fixture(scope="module")
def folds_store(tmp_path_factory, tiny_data):
    """(tracking URI, the grid parent run id, client) after the fold multirun and one extra fold-1 run."""
    tmp = tmp_path_factory.mktemp("folds")
    store = [
        f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db",
        f"tracking.artifact_root={tmp}/mlruns/artifacts",
    ]
    grid = run_cli(
        "cxr.train",
        "-m",
        *FAST,
        *data_overrides(tiny_data),
        *store,
        f"hydra.sweep.dir={tmp}/multirun",
        "dataset.fold=0,1,2",
    )
    assert grid.returncode == 0, grid.stderr[-3000:]
    extra = run_cli(
        "cxr.train", *FAST, *data_overrides(tiny_data), *store, f"output_dir={tmp}/extra", "dataset.fold=1"
    )
    assert extra.returncode == 0, extra.stderr[-3000:]
    client = MlflowClient(store[0].split("=", 1)[1])
    runs = client.search_runs([client.get_experiment_by_name("cxr").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(mn.SWEEP_TAG) == "true"]
    return store[0].split("=", 1)[1], parent.info.run_id, client, tmp


def ensemble(uri: str, tmp, *args: str):
    return run_cli(
        "cxr.ensemble",
        f"model_name={NAME}",
        "members=folds",
        f"tracking.uri={uri}",
        "evaluation.bootstrap.resamples=20",
        "evaluation.plots=false",
        f"hydra.run.dir={tmp}/ensemble",
        *args,
    )


@pytest.mark.slow
def test_mismatched_fold_members_fail_naming_the_versions(folds_store):
    uri, _, client, tmp = folds_store
    out = ensemble(uri, tmp)
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert "versions 2, 4 were all validated on fold 1" in line, line
    assert "parent_run=" in line and "mixed_folds=true" in line


@pytest.mark.slow
def test_fold_ensemble_validates_out_of_fold_and_tests_on_the_members_mean(folds_store):
    from cxr.data.splits import read_split_csv
    from cxr.evaluation.scoring import mean_auc
    from cxr.serving import pyfunc
    from cxr.serving.inference import predict_model_splits
    from cxr.tracking import runs as tracked

    uri, parent, client, tmp = folds_store
    out = ensemble(uri, tmp, f"parent_run={parent}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "out of fold" in out.stdout and "not comparable" in out.stdout and "Promote it" not in out.stdout
    version = out.stdout.split(f"registered as models:/{NAME}/")[1].split()[0]
    run_id = client.get_model_version(NAME, version).run_id
    run = client.get_run(run_id)
    assert run.data.tags[mn.VALIDATION_TAG] == mn.OUT_OF_FOLD
    oof = pd.read_csv(
        client.download_artifacts(run_id, mn.VAL_PREDICTIONS_ARTIFACT, str(tmp)), dtype={"image_id": str}
    )

    import mlflow

    mlflow.set_tracking_uri(uri)
    every = client.search_model_versions(f"name = '{NAME}'")
    members = [c for c in every if str(c.version) in {"1", "2", "3"}]
    own_val, test_scores = {}, []
    for m in members:
        cfg, split = tracked.logged_run_inputs(m.run_id)
        model = pyfunc.load(f"models:/{NAME}/{m.version}", [])
        preds, data = predict_model_splits(model, cfg.dataset, ["val", "test"], 64, split, "test")
        ids = data.table["image_id"].to_numpy()
        own_val.update(dict(zip(ids[data.rows["val"]], preds["val"].scores, strict=True)))
        test_scores.append(preds["test"])
        train_val = set(split.loc[split["split"] != "test", "image_id"])
    # every train_val image once, scored by the one member that validated it
    assert sorted(oof["image_id"]) == sorted(train_val) and oof["image_id"].is_unique
    first = [c for c in oof.columns if c.startswith("score/")]
    expected = np.stack([own_val[i] for i in oof["image_id"]])
    np.testing.assert_allclose(oof[first].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    # test: the members' mean
    mean = np.mean([p.scores for p in test_scores], axis=0)
    assert run.data.metrics["test/auc_mean"] == pytest.approx(mean_auc(test_scores[0].labels, mean), abs=1e-6)
    assert run.data.metrics[mn.RANK] == pytest.approx(
        mean_auc(oof[[c.replace("score/", "label/") for c in first]].to_numpy(), expected), abs=1e-5
    )
    assert (
        read_split_csv(client.download_artifacts(run_id, "split.csv", str(tmp)))["split"]
        .isin(["val", "test"])
        .all()
    )
    # re-scoring the whole ensemble on train_val would score images its members trained on: refused
    again = run_cli("cxr.evaluate", f"model_uri=models:/{NAME}/{version}", f"tracking.uri={uri}")
    assert again.returncode == 2 and "fold ensemble" in again.stderr, again.stderr[-2000:]


def member(version: str, fold: int, images: list[str], folds: int = 3, seed: int = 42) -> FoldMember:
    from omegaconf import OmegaConf

    config = OmegaConf.create(
        {"dataset": {"split": "kfold", "folds": folds, "fold": fold, "split_seed": seed}}
    )
    split = pd.DataFrame({"image_id": images, "split": "val"})
    return FoldMember(version, f"run{version}", config, split)


def test_out_of_fold_scores_each_image_by_the_member_that_validated_it():
    members = [member("1", 0, ["a", "b"]), member("2", 1, ["c"]), member("3", 2, ["d"])]
    scores = [np.full((4, 2), float(k)) for k in range(3)]
    oof, count = out_of_fold(["a", "b", "c", "d"], members, scores)
    assert count.tolist() == [1, 1, 1, 1] and oof[:, 0].tolist() == [0.0, 0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("1", 0), ("2", 1), ("5", 1), ("3", 2)], "versions 2, 5 were all validated on fold 1"),
        ([("1", 0), ("3", 2)], "no version was validated on fold(s) 1"),
    ],
)
def test_a_repeated_or_missing_fold_is_an_error_naming_the_versions(members, message):
    folds = [member(v, f, [v]) for v, f in members]
    with pytest.raises(CxrError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_folds(folds, mixed=False)
    check_folds(folds, mixed=True)  # asked for: a warning


def test_other_folds_or_split_seed_is_an_error_naming_the_version():
    folds = [member("1", 0, ["a"]), member("2", 1, ["b"]), member("3", 2, ["c"], seed=7)]
    with pytest.raises(CxrError, match="version\\(s\\) 3 have other dataset.folds/split_seed than version 1"):
        check_folds(folds, mixed=False)
