"""Localisation against expert boxes: the scores against a NumPy reference, boxes as data (NIH's real box
file, the synthetic generator's), the heatmap methods on a model and an ensemble, a model that looks at
the lesions against random and corner heatmaps, and what a training run logs."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from keras import ops
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from cxr.config import EvaluationConfig, SyntheticDatasetConfig, SyntheticGeneratorConfig
from cxr.data.boxes import BOX_FRAME, place_boxes
from cxr.data.labels import NIH_PATHOLOGIES
from cxr.data.nih import read_bboxes
from cxr.data.prepared import load_prepared
from cxr.data.synthetic import BOX_FINDINGS, render
from cxr.evaluation.box_localisation import images_of, localise
from cxr.evaluation.localisation import (
    MASS_IN_BOX,
    POINTING,
    box_mask,
    random_maps,
    score_map,
    summarise,
)
from cxr.runtime.errors import CxrError
from cxr.serving.gradcam import ensemble_heatmaps, heatmap_at, heatmaps
from cxr.serving.heatmap_methods import HEATMAP_METHODS
from cxr.tracking import names as mn
from tests.conftest import TINY_MODEL
from tests.test_gradcam import cam_model, cam_reference, grey_images

PERCENTS = (5.0, 10.0, 20.0)


# ---------------------------------------------------------------- the scores, against a reference
def reference(heatmap: np.ndarray, boxes: np.ndarray, tolerance: float) -> dict[str, float]:
    """Each measure by brute force: every pixel centre tested against every box, a full sort for the top."""
    rows, cols = np.mgrid[: heatmap.shape[0], : heatmap.shape[1]] + 0.5

    def inside(pad):
        return np.any([(cols >= x - pad) & (cols <= x + w + pad) & (rows >= y - pad) & (rows <= y + h + pad)
                       for x, y, w, h in boxes], axis=0)  # fmt: skip

    boxed = inside(0.0)
    out = {POINTING: float(inside(tolerance).ravel()[np.argmax(heatmap)])}
    ranked = np.sort(heatmap.ravel())[::-1]
    for p in PERCENTS:
        top = (heatmap >= ranked[int(round(heatmap.size * p / 100)) - 1]) & (heatmap > 0)
        out[f"iou_top{p:g}"] = (top & boxed).sum() / (top | boxed).sum()
    out[MASS_IN_BOX] = heatmap[boxed].sum() / heatmap.sum()
    return out


CASES = {
    "one box inside": np.array([[20.0, 24.0, 14.5, 9.0]]),
    "a box over the edge": np.array([[50.0, -3.0, 30.0, 12.0]]),
    "two boxes of one finding": np.array([[4.0, 40.0, 10.0, 10.0], [30.5, 10.5, 20.0, 25.0]]),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tolerance", [0.0, 6.0])
def test_scores_match_a_brute_force_reference(case, tolerance):
    heatmap = heatmap_at((64, 64), random_maps(1, 8, seed=len(case))[0])
    got = score_map(heatmap, CASES[case], tolerance, PERCENTS)
    assert got == pytest.approx(reference(heatmap, CASES[case], tolerance), abs=1e-6)


def test_pointing_tolerance_and_an_empty_map():
    heatmap = np.zeros((32, 32), np.float32)
    heatmap[10, 30] = 1.0  # pixel centre (30.5, 10.5): 1.5 px left of the box
    box = np.array([[32.0, 5.0, 10.0, 10.0]])
    assert score_map(heatmap, box, 0.0, PERCENTS)[POINTING] == 0.0
    assert score_map(heatmap, box, 1.5, PERCENTS)[POINTING] == 1.0
    assert set(score_map(np.zeros((32, 32)), box, 0.0, PERCENTS).values()) == {0.0}  # no evidence
    assert box_mask((4, 4), np.array([[0.6, 0.0, 1.0, 1.0]])).sum() == 1  # pixel 1's centre 1.5 is in


def test_per_finding_and_pooled_values_with_patient_intervals():
    pairs = pd.DataFrame(
        {
            "finding": ["Mass", "Mass", "Mass", "Nodule", "Nodule"],
            "patient": [1, 2, 3, 1, 4],
            POINTING: [1.0, 0.0, 1.0, 1.0, 1.0],
        }
    )
    point = summarise(pairs, NIH_PATHOLOGIES, [POINTING], 0, 0.95, 0)
    assert list(point.table.index) == ["Mass", "Nodule"]  # a finding without boxes has no row
    assert point.table[POINTING].tolist() == pytest.approx([2 / 3, 1.0])
    assert point.table["n_images"].tolist() == [3, 2]
    assert point.summary == pytest.approx({"pointing_mean": (2 / 3 + 1) / 2})
    boot = summarise(pairs, NIH_PATHOLOGIES, [POINTING], 300, 0.9, 0)
    assert boot.table["pointing_ci_low"]["Mass"] <= 2 / 3 <= boot.table["pointing_ci_high"]["Mass"]
    assert boot.table["pointing_ci_low"]["Nodule"] == boot.table["pointing_ci_high"]["Nodule"] == 1.0
    assert boot.summary["pointing_mean_ci_low"] < boot.summary["pointing_mean"]
    assert summarise(pairs, NIH_PATHOLOGIES, [POINTING], 300, 0.9, 0).summary == boot.summary


# ---------------------------------------------------------------- boxes as data
def test_the_real_nih_box_file_read_mapped_and_scaled(shared_data):
    boxes = read_bboxes(shared_data / "nih-meta" / "BBox_List_2017.csv")
    assert (len(boxes), boxes["image_id"].nunique()) == (984, 880)
    assert set(boxes["finding"]) == set(BOX_FINDINGS)  # `Infiltrate` read as the label file's Infiltration
    assert (boxes["finding"] == "Infiltration").sum() == 123
    # the frame is the released 1024 px PNG, not OriginalImage[Width,Height] (the DICOM size, > 1024 here)
    assert (boxes["x"] + boxes["w"]).max() <= BOX_FRAME and (boxes["y"] + boxes["h"]).max() <= BOX_FRAME
    meta = pd.read_csv(shared_data / "nih-meta" / "Data_Entry_2017_v2020.csv.gz", usecols=[0, 7])
    assert meta.set_index("Image Index").loc[boxes["image_id"]].min().item() > BOX_FRAME
    table = pd.DataFrame({"image_id": ["00000000_000.png", *boxes["image_id"].unique()]})
    for size in (320, 64):
        placed = place_boxes(boxes, table, NIH_PATHOLOGIES, size)
        assert len(placed) == 984 and placed["row"].min() == 1
        first = placed[placed["image_id"] == "00013118_008.png"].iloc[0]
        assert first["x_px"] == pytest.approx(225.084745762712 * size / 1024)
        assert first["h_px"] == pytest.approx(79.1864406779661 * size / 1024)
        assert table["image_id"][placed["row"]].tolist() == placed["image_id"].tolist()


def test_the_generator_boxes_each_finding_where_it_drew_it():
    """Without noise, an image with one finding minus the same image without it is that finding's trace:
    nearly all of it lies in the boxes the generator wrote."""
    size = 64
    for finding in BOX_FINDINGS:
        for seed in range(4):
            labels = np.isin(NIH_PATHOLOGIES, [finding]).astype(np.uint8)
            places: list = []
            trace = np.abs(
                render(labels, size, 1.0, 0.0, [seed], places).astype(float)
                - render(np.zeros(14), size, 1.0, 0.0, [seed]).astype(float)
            )
            boxes = np.array([[x0, y0, x1 - x0, y1 - y0] for _, x0, y0, x1, y1 in places]) * size
            assert {p[0] for p in places} == {finding}
            assert trace[box_mask((size, size), boxes)].sum() / trace.sum() > 0.9, (finding, seed)


# ---------------------------------------------------------------- heatmap methods
@pytest.mark.backend
def test_every_heatmap_method_on_a_model_and_an_ensemble():
    model, images = cam_model(), grey_images(3, 16)
    for method in HEATMAP_METHODS:
        maps = heatmaps(model, images, 1, method)
        assert maps.shape == (3, 16, 16) and maps.min() >= 0 and maps.max() == pytest.approx(1.0)
    # with global average pooling before the head, Grad-CAM and HiResCAM are both CAM
    for method in ("gradcam", "hirescam"):
        np.testing.assert_allclose(
            heatmaps(model, images, 1, method), cam_reference(model, images, 1), atol=1e-5
        )
    other = cam_model(size=24, seed=1)
    for method in HEATMAP_METHODS:
        own = heatmap_at((40, 40), heatmaps(model, images, 1, method))
        twice = ensemble_heatmaps([model, model], [images, images], 1, (40, 40), method, [0.3, 0.7])
        np.testing.assert_allclose(twice, own, atol=1e-5)
        big = np.stack([np.kron(i[..., 0], np.ones((3, 3)))[::2, ::2] for i in images]).astype(np.uint8)
        mixed = ensemble_heatmaps([model, other], [images, big], 1, (40, 40), method)
        assert mixed.shape == (3, 40, 40) and mixed.min() >= 0 and mixed.max() <= 1


# ---------------------------------------------------------------- where a model looks
class Corner(keras.layers.Layer):
    """Keeps only the top-left 2 x 2 cells of a feature map: a model that always looks at the corner."""

    def call(self, x):
        mask = np.zeros((1, *x.shape[1:]), np.float32)
        mask[:, :2, :2] = 1.0
        return x * ops.convert_to_tensor(mask)


def looking_model(size: int, corner: bool) -> keras.Model:
    """A lesion detector with its weights set by hand (a centre-surround filter, as a network learns for
    bright blobs: ReLU(DoG) -> mean -> 14 sigmoid outputs), or the same reading only the corner."""
    inputs = keras.Input((size, size, 1), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    conv = keras.layers.Conv2D(1, 11, padding="same", activation="relu", name="features")
    x = conv(x)
    if corner:
        x = Corner(name="corner")(x)
    head = keras.layers.Dense(len(NIH_PATHOLOGIES), activation="sigmoid", name="predictions")
    model = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D(name="gap")(x)))
    grid = np.arange(11) - 5.0
    r2 = grid[:, None] ** 2 + grid[None, :] ** 2

    def gauss(sigma):
        g = np.exp(-r2 / (2 * sigma**2))
        return g / g.sum()

    kernel = gauss(1.5) - gauss(4.0)
    conv.set_weights([kernel[:, :, None, None].astype(np.float32), np.zeros(1, np.float32)])
    head.set_weights(
        [np.ones((1, len(NIH_PATHOLOGIES)), np.float32), np.zeros(len(NIH_PATHOLOGIES), np.float32)]
    )
    return model


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    """A synthetic set where every test image's drawn findings are boxed, at 64 px: its prepared data."""
    root = tmp_path_factory.mktemp("lesions")
    generator = SyntheticGeneratorConfig(
        n_patients=60, resolution=128, min_prevalence=0.3, strength=2.0, noise=0.02, box_share=1.0, seed=5
    )
    cfg = OmegaConf.structured(
        SyntheticDatasetConfig(root=str(root / "synthetic"), cache_dir=str(root / "prepared"), image_size=64)
    )
    cfg.generator = OmegaConf.structured(generator)
    return load_prepared(cfg, warn=False)


def test_a_model_that_looks_at_the_lesions_beats_random_and_the_corner_scores_zero(lesions):
    cfg = OmegaConf.structured(EvaluationConfig)
    cfg.bootstrap.resamples = 0
    learnt = localise([looking_model(64, corner=False)], [1.0], images_of(lesions), lesions, cfg)
    corner = localise([looking_model(64, corner=True)], [1.0], images_of(lesions), lesions, cfg)
    boxed = lesions.boxes[lesions.boxes["row"].isin(lesions.rows["test"])]
    assert len(learnt.pairs) == boxed.groupby(["row", "finding"]).ngroups  # each boxed pair, once
    # the random heatmap, computed the same way: noise at a feature map's resolution, brought to 1024 px
    noise = random_maps(len(learnt.pairs), 8, seed=0)
    random = [
        score_map(
            heatmap_at((BOX_FRAME, BOX_FRAME), m),
            boxed[(boxed.row == r) & (boxed.finding == f)][["x", "y", "w", "h"]].to_numpy(),
            0.0,
            PERCENTS,
        )[POINTING]  # fmt: skip
        for m, r, f in zip(noise, learnt.pairs["row"], learnt.pairs["finding"], strict=True)
    ]
    mass = (learnt.pairs["finding"] == "Mass").to_numpy()  # the blob the filter's scale was set for
    assert mass.sum() >= 8
    assert learnt.pairs[POINTING][mass].mean() >= 0.8 > np.mean(np.array(random)[mass]) + 0.4
    assert corner.report.summary["pointing_mean"] < 0.05
    assert corner.report.summary["mass_in_box_mean"] < 0.05


# ---------------------------------------------------------------- what a run logs
@pytest.mark.slow
def test_a_training_run_logs_localisation_next_to_its_aucs(tiny_store):
    client = MlflowClient(tiny_store.cfg.tracking.uri)
    run = client.get_run(tiny_store.run_id)
    metrics, pooled = run.data.metrics, mn.localisation(mn.TEST, "pointing_mean")
    assert 0.0 <= metrics[pooled] <= 1.0
    assert metrics[mn.interval(pooled)[0]] <= metrics[pooled] <= metrics[mn.interval(pooled)[1]]
    assert run.data.tags[mn.LOCALISATION_METHOD_TAG] == "gradcam"
    table = pd.read_csv(
        client.download_artifacts(tiny_store.run_id, mn.localisation_table(mn.TEST)), index_col=0
    )
    for finding in table.index:
        for measure in ("pointing", "iou_top10", "mass_in_box"):
            assert mn.localisation(mn.TEST, measure, finding) in metrics
    gallery = {a.path for a in client.list_artifacts(tiny_store.run_id, mn.LOCALISATION_GALLERY)}
    assert {
        f"{mn.LOCALISATION_GALLERY}/{f}_{r}.png" for f in table.index for r in ("best", "worst")
    } == gallery
    (version,) = client.search_model_versions(f"name = '{TINY_MODEL}'")
    assert float(version.tags[pooled]) == pytest.approx(metrics[pooled])


def test_localisation_is_reported_not_optimised(compose_cfg, tmp_path):
    from cxr.train import train

    cfg = compose_cfg([f"optimized_metric={mn.localisation(mn.TEST, 'pointing_mean')}"])
    with pytest.raises(CxrError, match="localisation is a test-split measure.*reported.*not optimised"):
        train(cfg)
    with pytest.raises(CxrError, match="test-split measure"):
        mn.check_validation("val/localisation/Mass/pointing", "metric", "")
    cfg = compose_cfg(["evaluation.localisation.method=lime"])
    with pytest.raises(CxrError, match="gradcam, gradcampp, hirescam"):
        train(cfg)


def test_promotion_shows_the_test_pointing_rate_beside_the_validation_metric():
    from cxr.tracking.promotion import candidates_table
    from cxr.tracking.versions import LOCALISATION_TAGS, Candidate, metric_tags

    pooled = mn.localisation(mn.TEST, "pointing_mean")
    metrics = {mn.RANK: 0.8, pooled: 0.5, mn.interval(pooled)[0]: 0.4, mn.interval(pooled)[1]: 0.6}
    tags = metric_tags(metrics)
    assert set(LOCALISATION_TAGS) <= set(tags)
    boxed = Candidate("m", "2", "r2", 0.8, tags, ())
    plain = Candidate("m", "1", "r1", 0.7, metric_tags({mn.RANK: 0.7}), ())
    table = candidates_table([boxed, plain], mn.RANK)
    assert table["test pointing"].tolist() == ["0.50 [0.40, 0.60]", ""]


def test_the_switch_auto_true_false(lesions):
    from dataclasses import replace

    from cxr.config import LocalisationConfig
    from cxr.evaluation.box_localisation import wanted

    unboxed = replace(lesions, boxes=None)
    switch = {
        value: OmegaConf.structured(LocalisationConfig(enabled=value)) for value in ("auto", True, False)
    }
    assert wanted(switch["auto"], lesions) and wanted(switch[True], lesions)
    assert not wanted(switch[False], lesions) and not wanted(switch["auto"], unboxed)
    with pytest.raises(CxrError, match="enabled=true, but no test image has an expert box"):
        wanted(switch[True], unboxed)
