"""The real-images-on-a-CPU recipe (issue 20): the `nih_cpu` preset, the learning-rate schedules and
the zoom augmentation it uses."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from cxr.config import AugmentConfig, OptimizerConfig, SmallCnnConfig, check_training
from cxr.models import build_model
from cxr.runtime.errors import CxrError
from cxr.training.optimizers import SCHEDULES, build_optimizer


def test_nih_cpu_composes_and_passes_the_value_checks(compose_cfg):
    cfg = compose_cfg(["experiment=nih_cpu", "dataset.root=/data/nih"])
    check_training(cfg)
    assert cfg.dataset.name == "nih" and cfg.model.name == "small_cnn"
    assert cfg.trainer.optimizer.schedule == "cosine" and not cfg.callbacks.reduce_lr.enabled
    assert cfg.callbacks.checkpoint.monitor == "val_auc" and cfg.callbacks.checkpoint.mode == "max"
    assert not cfg.callbacks.early_stopping.enabled
    assert cfg.trainer.batch_size == 16 and not cfg.dataset.augment.horizontal_flip  # both measured
    check_training(compose_cfg(["experiment=nih_cpu", "dataset.image_size=64"]))  # it works at 64 px


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["trainer.optimizer.schedule=linear"], "trainer.optimizer.schedule"),
        (["trainer.optimizer.schedule=cosine", "trainer.optimizer.warmup_epochs=10"], "warmup_epochs"),
        (["trainer.optimizer.warmup_epochs=-1"], "warmup_epochs"),
        (["trainer.optimizer.schedule=cosine", "callbacks.reduce_lr.enabled=true"], "reduce_lr"),
        (["trainer.optimizer.ema=1.0"], "trainer.optimizer.ema"),
        (["trainer.optimizer.ema=-0.5"], "trainer.optimizer.ema"),
        (["model=small_cnn", "model.pooling=max"], "model.pooling"),
        (["model=small_cnn", "model.convs_per_block=0"], "model.convs_per_block"),
    ],
)
def test_schedule_values_are_checked(compose_cfg, overrides, key):
    cfg = compose_cfg(["trainer.epochs=10", "callbacks.reduce_lr.enabled=false", *overrides])
    with pytest.raises(CxrError, match=key):
        check_training(cfg)


def test_cosine_warms_up_to_the_rate_then_decays_to_zero_at_the_last_step():
    cfg = OptimizerConfig(learning_rate=0.01, schedule="cosine", warmup_epochs=2)
    schedule = SCHEDULES.get("cosine")(cfg, 5, 10)  # 5 steps an epoch, 10 epochs
    rates = [float(schedule(step)) for step in (0, 5, 10, 30, 50)]
    assert rates[0] == pytest.approx(0.001) and rates[1] == pytest.approx(0.0055)
    assert rates[2] == pytest.approx(0.01) and 0.0 < rates[3] < 0.01
    assert rates[4] == pytest.approx(0.0, abs=1e-9)
    optimizer = build_optimizer(cfg, steps_per_epoch=5, epochs=10)
    assert float(optimizer.learning_rate) == pytest.approx(0.001)  # the rate at the optimizer's step 0
    constant = build_optimizer(OptimizerConfig(learning_rate=0.01), steps_per_epoch=5, epochs=10)
    assert float(constant.learning_rate) == pytest.approx(0.01)


@pytest.mark.backend
def test_zoom_is_part_of_the_augment_block_and_the_identity_at_inference():
    augment = OmegaConf.structured(AugmentConfig(zoom_fraction=0.2))
    model = build_model(
        OmegaConf.structured(SmallCnnConfig(filters=[4], dense_units=4)), 16, 3, augment=augment
    )
    kinds = [type(layer).__name__ for layer in model.get_layer("augment").layers]
    assert kinds == ["RandomZoom", "ClipGrey"]
    x = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1)).astype("uint8")
    block = model.get_layer("augment")
    np.testing.assert_allclose(np.asarray(block(x, training=False)), x.astype("float32"))
    assert not np.allclose(np.asarray(block(x, training=True)), x.astype("float32"))


@pytest.mark.backend
def test_avgmax_pooling_sees_a_peak_that_averaging_dilutes():
    cfg = OmegaConf.structured(SmallCnnConfig(filters=[4], dense_units=4, pooling="avgmax"))
    model = build_model(cfg, 16, 3)
    assert model.get_layer("gap_gmp").output.shape == (None, 8)  # 4 averaged + 4 maximal channels
    assert model.predict(np.zeros((1, 16, 16, 1), "uint8"), verbose=0).shape == (1, 3)


@pytest.mark.backend
def test_two_convolutions_a_block_keep_the_first_ones_names_and_the_resolution():
    cfg = OmegaConf.structured(SmallCnnConfig(filters=[4, 8], dense_units=4, convs_per_block=2))
    model = build_model(cfg, 16, 3)
    convs = [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert convs == ["conv0", "conv0_1", "conv1", "conv1_1"]
    assert model.get_layer("relu1_1").output.shape == (None, 8, 8, 8)  # pooled once, before block 1


@pytest.mark.backend
def test_ema_ends_fit_with_the_moving_average_of_the_weights():
    """With momentum 0.5 the final weights are the average, not the last step's: a model trained by
    the same steps without EMA ends elsewhere."""
    import keras

    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")

    def trained(ema: float) -> np.ndarray:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer=build_optimizer(OptimizerConfig(learning_rate=0.1, ema=ema)), loss="bce")
        optimizer = model.optimizer
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        if ema:
            assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(ema)
        return model.get_weights()[0]

    assert not np.allclose(trained(0.5), trained(0.0))
