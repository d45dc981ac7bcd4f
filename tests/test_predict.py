"""Batched prediction over image files and over a prepared dataset's splits, with a real small model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from cxr.config import SmallCnnConfig
from cxr.data.labels import NIH_PATHOLOGIES
from cxr.models import build_model
from cxr.serving.inference import predict_files
from cxr.serving.pyfunc import CxrModel, ModelSpec
from tests.conftest import load_resized

SIZE = 32

pytestmark = pytest.mark.backend  # batched inference on the running backend


@pytest.fixture(scope="module")
def keras_model():
    cfg = OmegaConf.structured(SmallCnnConfig(filters=[4], dense_units=8))
    return build_model(cfg, SIZE, len(NIH_PATHOLOGIES))


@pytest.fixture(scope="module")
def model(keras_model):
    spec = ModelSpec(list(NIH_PATHOLOGIES), dict.fromkeys(NIH_PATHOLOGIES, 0.5), [SIZE], [1.0])
    return CxrModel.of([keras_model], spec)


def test_predicts_real_files_of_every_size_and_mode_and_names_the_unreadable(
    model, keras_model, shared_data, tmp_path
):
    samples = pd.read_csv(shared_data / "nih-samples" / "labels.csv")
    paths = [str(shared_data / "nih-samples" / p) for p in samples["path"]]
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is a text file with an image's name")
    given = [paths[0], str(not_an_image), *paths[1:]]

    out = predict_files(model, given, batch_size=4)  # several batches, the last one short

    assert out.paths == paths  # the readable ones, in the order given
    assert (
        list(out.failures) == [str(not_an_image)]
        and "not a readable image: its content is neither PNG nor JPEG" in out.failures[str(not_an_image)]
    )
    assert out.scores.shape == (len(paths), len(NIH_PATHOLOGIES))
    assert np.all((out.scores >= 0) & (out.scores <= 1))
    expected = keras_model.predict(np.stack([load_resized(p, SIZE) for p in paths])[..., None], verbose=0)
    np.testing.assert_allclose(out.scores, expected, rtol=1e-5, atol=1e-6)  # the cache's resizing


def test_no_readable_file_gives_an_empty_result(model, tmp_path):
    out = predict_files(model, [str(tmp_path / "absent.png")])
    assert out.paths == [] and out.scores.shape == (0, len(NIH_PATHOLOGIES))
    assert "absent.png" in out.failures[str(tmp_path / "absent.png")]


def test_split_scores_of_only_some_images_equal_the_full_scores_there_and_are_nan_elsewhere(keras_model):
    """What a fold member scores: its own fold and test, not the images it trained on."""
    from cxr.data.prepared import PreparedData
    from cxr.serving.inference import predict_splits

    n = 11
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"image_id": [f"{i}.png" for i in range(n)], "split": ["train"] * 7 + ["test"] * 4})
    data = PreparedData(
        table=table,
        pathologies=tuple(NIH_PATHOLOGIES),
        images=rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8),
        labels=np.zeros((n, len(NIH_PATHOLOGIES)), np.float32),
        patients=np.arange(n),
        rows={"train": np.arange(7), "test": np.arange(7, n)},
        cache=None,
    )
    full = predict_splits(keras_model, data, ["train", "test"], batch_size=3)
    some = predict_splits(
        keras_model, data, ["train", "test"], batch_size=3, only={"1.png", "4.png", "5.png", "8.png"}
    )
    for split, scored in (("train", [1, 4, 5]), ("test", [1])):
        mask = np.isin(np.arange(len(data.rows[split])), scored)
        np.testing.assert_allclose(some[split].scores[mask], full[split].scores[mask], rtol=1e-5, atol=1e-6)
        assert np.isnan(some[split].scores[~mask]).all()
    none = predict_splits(keras_model, data, ["test"], batch_size=3, only=set())
    assert none["test"].scores.shape == (4, len(NIH_PATHOLOGIES)) and np.isnan(none["test"].scores).all()
