"""Test-time augmentation: the views (`cxr.data.tta`), their mean in scoring, the config's checks, and a
training run, its re-evaluation and `cxr.predict` with `evaluation.tta` on."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient
from PIL import Image

from cxr.config import check_training
from cxr.data.tta import NO_VIEWS, Views, chosen
from cxr.runtime.errors import CxrError
from cxr.serving.forward import forward
from cxr.serving.pyfunc import CxrModel, ModelSpec
from cxr.tracking import names as mn
from tests.conftest import TINY, run_cli, store_overrides
from tests.test_pyfunc import NAMES, tiny


def batch(n: int = 3, side: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 1), dtype=np.uint8)


# ---------------------------------------------------------------- the views
def test_views_are_deterministic_uint8_with_the_image_itself_first():
    images, views = batch(), Views(shift_fraction=0.1, zoom_fraction=0.1)
    out = views.apply(images)
    assert out.shape == (7, *images.shape) and out.dtype == np.uint8 and views.count == 7
    np.testing.assert_array_equal(out[0], images)  # identity first, exactly
    np.testing.assert_array_equal(out, views.apply(images))  # deterministic
    assert len({o.tobytes() for o in out}) == 7  # every view differs
    np.testing.assert_array_equal(views.apply(images[..., 0])[:, ..., None], out)  # a channel axis or none


def test_off_is_the_batch_alone_and_a_flip_only_when_asked():
    images = batch()
    np.testing.assert_array_equal(NO_VIEWS.apply(images), images[None])
    assert not NO_VIEWS.enabled and NO_VIEWS.describe() == "1 view (off)"
    assert all(not mirrored for *_, mirrored in Views(0.05, 0.05).transforms)  # no flip by default
    flipped = Views(horizontal_flip=True).apply(images)
    np.testing.assert_array_equal(flipped[1], images[:, :, ::-1])


def test_a_shift_moves_the_image_and_fills_black_beyond_its_edge():
    images = batch(side=20)
    up = Views(shift_fraction=0.1).apply(images)[1]  # 2 px up
    np.testing.assert_array_equal(up[:, :-2], images[:, 2:])
    assert not up[:, -2:].any()


def test_zoom_out_shows_black_borders_and_zoom_in_none():
    white = np.full((1, 40, 40), 255, np.uint8)
    _, closer, further = Views(zoom_fraction=0.2).apply(white)
    assert (closer == 255).all()
    assert further[0, 0, 0] == 0 and further[0, 20, 20] == 255


def test_settings_round_trip_through_a_spec_and_a_command_can_override_the_model():
    views = Views(0.03, 0.05)
    assert Views.of(views.spec()) == views and NO_VIEWS.spec() == {} and Views.of({}) == NO_VIEWS
    assert views.describe() == "7 views (shift 0.03, zoom 0.05)"

    class Setting:
        shift_fraction, zoom_fraction, horizontal_flip = 0.1, 0.0, False

        def __init__(self, enabled):
            self.enabled = enabled

    assert chosen(Setting(None), views.spec()) == views  # unset: the model's own
    assert chosen(Setting(False), views.spec()) == NO_VIEWS
    assert chosen(Setting(True), {}) == Views(0.1)


# ---------------------------------------------------------------- the mean in scoring
@pytest.mark.backend  # scores from a member on the running backend
def test_scores_are_the_mean_over_the_views_of_the_probabilities_and_off_is_unchanged():
    member, images = tiny(32, 0), batch(n=4, side=32)
    inputs = [{32: image[..., 0]} for image in images]
    model = CxrModel.of([member], ModelSpec(NAMES, {}, [32], [1.0]))  # an older model: no `tta` field
    off = model.score(inputs)
    np.testing.assert_array_equal(off, forward(member)(images))  # exactly today's scores

    views = Views(shift_fraction=0.1, zoom_fraction=0.1)
    model.spec.tta = views.spec()
    on = model.score(inputs, batch_size=3)  # two batches
    per_view = [forward(member)(view) for view in views.apply(images)]
    np.testing.assert_allclose(on, np.mean(per_view, axis=0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(on, off)


# ---------------------------------------------------------------- the config
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "evaluation.tta.shift_fraction=0.7",
            "evaluation.tta.shift_fraction=0.7: give a share of the image side",
        ),
        ("evaluation.tta.zoom_fraction=-0.1", "evaluation.tta.zoom_fraction=-0.1: give a share"),
        ("evaluation.tta.shift_fraction=0", "evaluation.tta.enabled=True: no view besides the image itself"),
    ],
)
def test_bad_values_name_the_key(compose_cfg, tmp_path, override, message):
    cfg = compose_cfg([*TINY, *store_overrides(tmp_path), "evaluation.tta.enabled=true", override])
    with pytest.raises(CxrError, match=message):
        check_training(cfg)


def test_a_misspelt_key_fails_while_composing(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="shift_fractoin"):
        compose_cfg(["evaluation.tta.shift_fractoin=0.05"])


def test_off_by_default(compose_cfg):
    cfg = compose_cfg([])
    assert cfg.evaluation.tta.enabled is None and Views.of(cfg.evaluation.tta) == NO_VIEWS


# ---------------------------------------------------------------- end to end
# on one backend: the mean over the views on each backend is the `backend` test above
@pytest.fixture(scope="module")
def tta_run(tmp_path_factory, tiny_data):
    """`cxr.train ... evaluation.tta.enabled=true` as a user types it; its store and run id."""
    tmp = tmp_path_factory.mktemp("tta")
    out = run_cli(
        "cxr.train",
        *TINY,
        *store_overrides(tmp, tiny_data),
        "evaluation.tta.enabled=true",
        "tracking.registered_model_name=cxr-tta",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = out.stdout.split("MLflow run ")[1].split()[0]
    return tmp, f"sqlite:///{tmp}/mlruns/mlflow.db", run_id


def card(uri: str, run_id: str) -> dict:
    """The run's report.json, as its report card's reader gets it."""
    with tempfile.TemporaryDirectory() as folder:
        path = MlflowClient(uri).download_artifacts(run_id, mn.REPORT_JSON_ARTIFACT, folder)
        return json.loads(Path(path).read_text())


@pytest.mark.slow
def test_a_training_run_logs_its_views_and_the_model_keeps_them(tta_run):
    from cxr.serving import pyfunc

    _, uri, run_id = tta_run
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params[mn.TTA_VIEWS_PARAM] == "5" and run.data.params["evaluation.tta.enabled"] == "True"
    import mlflow

    mlflow.set_tracking_uri(uri)
    model = pyfunc.load(f"runs:/{run_id}")
    assert model.views == Views(shift_fraction=0.03)
    # what a reader of the run, the registry and the report card sees
    assert run.data.tags[mn.TTA_TAG] == "5 views (shift 0.03)"
    assert (
        MlflowClient(uri).get_model_version("cxr-tta", "1").tags[mn.TTA_VERSION_TAG] == "5 views (shift 0.03)"
    )
    assert card(uri, run_id)["model"]["test-time views"] == "5 views (shift 0.03)"


@pytest.mark.slow
def test_re_evaluation_uses_the_models_views_unless_told(tta_run):
    tmp, uri, run_id = tta_run
    client = MlflowClient(uri)
    out = run_cli("cxr.evaluate", f"tracking.uri={uri}", f"run_id={run_id}", "evaluation.plots=false")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "5 views (shift 0.03) each" in out.stdout
    history = client.get_metric_history(run_id, "test/auc_mean")
    assert history[1].value == pytest.approx(history[0].value, abs=1e-6)  # the same views as training's
    off = run_cli(
        "cxr.evaluate",
        f"tracking.uri={uri}",
        f"run_id={run_id}",
        "evaluation.plots=false",
        "evaluation.tta.enabled=false",
    )
    assert off.returncode == 0, off.stderr[-3000:]
    assert client.get_run(run_id).data.tags[mn.REEVALUATED_TTA_TAG] == "1 view (off)"
    assert (
        card(uri, run_id)["model"]["test-time views"] == "1 view (off)"
    )  # the card of the latest evaluation
    assert client.get_metric_history(run_id, "test/auc_mean")[2].value != history[0].value


@pytest.mark.slow
def test_predict_averages_over_the_models_views(tta_run):
    tmp, uri, run_id = tta_run
    image = tmp / "x.png"
    Image.fromarray(batch(n=1, side=48)[0, ..., 0]).save(image)
    out = run_cli("cxr.predict", f"model=runs:/{run_id}", f"images={image}", f"tracking.uri={uri}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "averaged over 5 views (shift 0.03) of each image" in out.stdout
    off = run_cli(
        "cxr.predict", f"model=runs:/{run_id}", f"images={image}", f"tracking.uri={uri}", "tta.enabled=false"
    )
    assert off.returncode == 0 and "test-time augmentation" not in off.stdout
    assert out.stdout.splitlines()[-1] != off.stdout.splitlines()[-1]  # the scores differ
