"""Extending cxr without forking it: a config folder of one's own, and a model and a loss from one's own code.

The "user's code" below (a model builder, a loss and its builder) lives in this test module, as it would
in the user's package: options name it by dotted path with `_target_`.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import keras
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from cxr.config import check_training
from cxr.models import MODELS
from cxr.runtime.errors import CxrError
from cxr.training.losses import LOSSES
from tests.conftest import TINY, run_cli, store_overrides


# ------------------------------------------------------------------ the user's code
def build_tiny_net(cfg, x, num_classes: int):
    """A model builder with the registered builders' signature: (option, preprocessed images, classes)."""
    x = keras.layers.Conv2D(cfg.width, 3, activation="relu", name="my_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="my_gap")(x)
    return keras.layers.Dense(num_classes, activation="sigmoid", name="predictions")(x)


@keras.saving.register_keras_serializable(package="cxr_tests")
class ScaledBCE(keras.losses.Loss):
    """A loss of one's own: registered and with get_config, so a saved model that holds it loads again."""

    def __init__(self, scale: float = 1.0, name: str = "scaled_bce", **kw):
        super().__init__(name=name, **kw)
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        return self.scale * keras.losses.binary_crossentropy(y_true, y_pred)

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}


TARGET = f"{__name__}.build_tiny_net"


@dataclass
class WideNet:
    """The keys `build_wide_net`'s option takes: declared, so a misspelt `+model.widht` is refused."""

    width: int = 4


def build_wide_net(cfg: WideNet, x, num_classes: int):
    """`build_tiny_net`, declaring its option's keys by its first parameter's annotation."""
    return build_tiny_net(cfg, x, num_classes)


def build_scaled_bce(cfg, train_labels):
    """A loss builder with the registered builders' signature: (option, training labels)."""
    return ScaledBCE(cfg.scale, name=cfg.name)


# ------------------------------------------------------------------ the user's config folder
USER_CONFIGS = {
    "model/tiny_net.yaml": f"""
        # My own model, built by my code.
        defaults:
          - schema_custom
          - _self_

        name: tiny_net
        _target_: {TARGET}
        width: 4
        """,
    "loss/scaled_bce.yaml": f"""
        # My own loss.
        defaults:
          - schema_custom
          - _self_

        name: scaled_bce
        _target_: {__name__}.build_scaled_bce
        scale: 2.0
        """,
    "experiment/mine.yaml": """
        # @package _global_
        # My preset, on cxr's options and mine.
        defaults:
          - override /model: tiny_net
          - override /loss: dynamic_bce

        trainer:
          epochs: 3
        tracking:
          experiment_name: mine
        """,
    "sweep/mine.yaml": """
        # @package _global_
        # My search space.
        defaults:
          - override /hydra/sweeper: cxr_optuna
          - override /model: tiny_net

        hydra:
          sweeper:
            study_name: mine
            n_trials: 4
            params:
              model.width: choice(2, 4, 8)
        """,
}


@pytest.fixture
def user_dir(tmp_path) -> Path:
    root = tmp_path / "my_configs"
    for name, text in USER_CONFIGS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


def test_own_folder_on_the_search_path_adds_experiments_sweeps_models_and_losses(compose_cfg, user_dir):
    searchpath = f"hydra.searchpath=[file://{user_dir}]"
    cfg = compose_cfg([searchpath, "experiment=mine"])
    assert (cfg.model.name, cfg.model._target_, cfg.model.width) == ("tiny_net", TARGET, 4)
    assert (cfg.loss.name, cfg.trainer.epochs, cfg.tracking.experiment_name) == ("dynamic_bce", 3, "mine")

    cfg = compose_cfg([searchpath, "+sweep=mine"], return_hydra_config=True)
    assert cfg.hydra.sweeper.study_name == "mine" and cfg.model.name == "tiny_net"
    assert dict(cfg.hydra.sweeper.params) == {"model.width": "choice(2, 4, 8)"}

    cfg = compose_cfg([searchpath, "loss=scaled_bce", "+sweep=core"], return_hydra_config=True)
    assert cfg.loss.scale == 2.0 and cfg.hydra.sweeper.study_name == "core"  # cxr's own stay available


def test_own_options_keys_are_checked_like_cxrs(compose_cfg, user_dir):
    searchpath = f"hydra.searchpath=[file://{user_dir}]"
    assert compose_cfg([searchpath, "model=tiny_net", "model.width=16"]).model.width == 16
    with pytest.raises(ConfigCompositionException, match="model.widht"):
        compose_cfg([searchpath, "model=tiny_net", "model.widht=16"])  # a typo fails, as for cxr's options
    assert compose_cfg([searchpath, "model=tiny_net", "+model.depth=2"]).model.depth == 2
    (user_dir / "model" / "no_target.yaml").write_text("defaults: [schema_custom, _self_]\nname: no_target\n")
    with pytest.raises(MissingMandatoryValue, match="_target_"):
        MODELS.for_option(compose_cfg([searchpath, "model=no_target"]).model)


def test_a_custom_options_keys_are_those_its_builder_declares(compose_cfg, user_dir):
    """After composition (cxr's value checks): an undeclaring builder takes any key; a declaring one only
    its own, and a misspelt one is refused naming the closest."""
    searchpath = f"hydra.searchpath=[file://{user_dir}]"
    free = compose_cfg([searchpath, "model=tiny_net", "+model.depth=2", "output_dir=/tmp/out"])
    check_training(free)
    target = f"model._target_={__name__}.build_wide_net"
    check_training(compose_cfg([searchpath, "model=tiny_net", target, "output_dir=/tmp/out"]))
    typo = compose_cfg([searchpath, "model=tiny_net", target, "+model.widht=8", "output_dir=/tmp/out"])
    with pytest.raises(CxrError, match=r"model.widht: .*build_wide_net.*did you mean model.width\?"):
        check_training(typo)


def test_target_picks_the_users_builder_and_a_bad_one_says_what_to_do():
    assert MODELS.for_option(OmegaConf.create({"name": "x", "_target_": TARGET})) is build_tiny_net
    assert LOSSES.for_option(OmegaConf.create({"name": "bce"})) is LOSSES.get("bce")
    with pytest.raises(CxrError, match=r"_target_=no_such_pkg.build: ModuleNotFoundError.*on PYTHONPATH"):
        MODELS.for_option(OmegaConf.create({"name": "x", "_target_": "no_such_pkg.build"}))


def test_config_dir_on_the_command_line_adds_the_users_options(user_dir):
    out = run_cli(
        "cxr.train", "--config-dir", str(user_dir), "experiment=mine", "loss=scaled_bce", "--cfg", "job"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = OmegaConf.create(out.stdout)
    assert (cfg.model.name, cfg.loss.name, cfg.loss.scale) == ("tiny_net", "scaled_bce", 2.0)
    assert cfg.trainer.epochs == 3


@pytest.mark.slow
def test_a_model_and_a_loss_from_the_users_code_train_log_and_load(user_dir, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    not_small_cnn = [o for o in TINY if not o.startswith("model.")]
    args = ["--config-dir", str(user_dir), "model=tiny_net", "loss=scaled_bce", *not_small_cnn]
    out = run_cli("cxr.train", *args, *store_overrides(tmp_path), "tracking.registered_model_name=users-net")
    assert out.returncode == 0, out.stderr[-3000:]

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cxr").experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["model.name"], params["model._target_"], params["loss.scale"]) == (
        "tiny_net",
        TARGET,
        "2.0",
    )
    import keras

    import cxr.training.metrics  # noqa: F401  (registers cxr's metrics; importing this module registered ScaledBCE)
    from cxr.serving import pyfunc

    mlflow.set_tracking_uri(uri)
    logged = pyfunc.load(f"runs:/{run.info.run_id}")
    assert logged.members[0].get_layer("my_conv").filters == 4
    assert logged.spec.imports == [TARGET.rsplit(".", 1)[0]]  # the user's module, imported where it loads
    checkpoint = sorted((tmp_path / "output" / "checkpoints").glob("*.keras"))[-1]
    model = keras.saving.load_model(checkpoint)  # a checkpoint keeps its compiled loss
    assert isinstance(model.loss, ScaledBCE) and model.loss.scale == 2.0

    # an ensemble of it names the same module, so it loads where its member would
    module = TARGET.rsplit(".", 1)[0]
    trusted = f"tracking.trusted_imports=[{module}]"
    ens = run_cli("cxr.ensemble", "model_name=users-net", "top_k=1", f"tracking.uri={uri}", trusted)
    assert ens.returncode == 0, ens.stderr[-3000:]
    assert pyfunc.load("models:/users-net/2", [module]).spec.imports == [module]
