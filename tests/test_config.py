"""Config composition: every option composes, typos and wrong types fail at once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from cxr.config import SCHEMAS, check_training, min_image_size
from cxr.runtime.errors import CxrError
from tests.conftest import CONF, run_cli

GROUPS = ["dataset", "model", "loss", "callbacks", "trainer", "tracking", "evaluation"]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# output_dir comes from Hydra's runtime, which the compose API does not set
RESOLVABLE = ["dataset.root=/data/ChestX-ray14", "output_dir=/tmp/out"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def leaves(node, prefix: str = "") -> dict:
    """{dotted key: value} of a raw YAML mapping (interpolations unresolved), without its defaults list."""
    out = {}
    items = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
    for key, value in items.items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def raw_option(group: str, option: str):
    return OmegaConf.load(CONF / group / f"{option}.yaml")


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_with_its_schema(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}", *RESOLVABLE])
    assert OmegaConf.get_type(cfg, group) is SCHEMAS[(group, raw_option(group, option).defaults[0])]
    if "name" in cfg[group]:
        assert cfg[group].name == option
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_group_options_state_only_what_differs_from_their_schema(group, option):
    raw = raw_option(group, option)
    assert raw.defaults[-1] == "_self_"
    schema = OmegaConf.structured(SCHEMAS[(group, raw.defaults[0])])
    repeated = {
        key: value
        for key, value in leaves(raw).items()
        if key != "name" and OmegaConf.select(schema, key, throw_on_missing=False) == value
    }
    assert not repeated, f"conf/{group}/{option}.yaml repeats its schema's defaults: {repeated}"


def experiment_base(experiment: str) -> list[str]:
    """The group choices an experiment makes (`override /model: x` -> model=x), without its values."""
    defaults = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").get("defaults", [])
    return [f"{k.split()[-1].strip('/')}={v}" for entry in defaults for k, v in entry.items()]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_sets_what_it_states(compose_cfg, experiment):
    cfg = compose_cfg([f"experiment={experiment}", *RESOLVABLE])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    stated = leaves(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"))
    assert stated
    for key, value in stated.items():
        assert OmegaConf.select(cfg, key) == value, key
    for override in experiment_base(experiment):
        group, option = override.split("=")
        assert cfg[group].name == option


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_state_only_what_differs_from_the_options_they_compose(compose_cfg, experiment):
    base = compose_cfg([*experiment_base(experiment), *RESOLVABLE])
    stated = leaves(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"))
    repeated = {key: value for key, value in stated.items() if OmegaConf.select(base, key) == value}
    assert not repeated, f"conf/experiment/{experiment}.yaml repeats defaults: {repeated}"


def test_loss_override_selects_its_schema(compose_cfg):
    cfg = compose_cfg(["loss=dynamic_bce", "loss.smoothing_factor=0.2"])
    assert cfg.loss.name == "dynamic_bce" and cfg.loss.smoothing_factor == 0.2


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("loss.smoothing_factr=0.2", "smoothing_factr"),
        ("trainer.epochs=many", "trainer.epochs"),
        ("dataset.generator.n_patients=1.5", "n_patients"),
        ("model=no_such_model", "no_such_model"),
    ],
)
def test_typos_and_wrong_types_fail_at_composition(compose_cfg, override, fragment):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["loss=dynamic_bce", override])
    assert fragment in str(err.value) + str(err.value.__cause__)


def test_key_absent_from_an_option_schema_fails(compose_cfg):
    # bce has no smoothing_factor: a preset or override that assumes it must not pass silently
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["loss=bce", "loss.smoothing_factor=0.1"])


@pytest.mark.parametrize(
    ("override", "closest"),
    [
        ("+loss.smoothing_factr=0.2", "did you mean loss.smoothing_factor?"),  # Hydra's own hint, taken
        ("++trainer.epoch=3", "did you mean trainer.epochs?"),
        ("+evaluation.bootstrap.resampels=5", "did you mean evaluation.bootstrap.resamples?"),
        ("+model.cbam.ratio=4", "model (SmallCnnConfig) has no key 'cbam'"),
    ],
)
def test_a_key_a_plus_adds_beside_the_schema_is_refused_naming_the_closest(compose_cfg, override, closest):
    cfg = compose_cfg(["loss=dynamic_bce", override, *RESOLVABLE])  # Hydra lets a '+' add it ...
    with pytest.raises(CxrError, match=re.escape(closest)):  # ... cxr's checks refuse it, before any work
        check_training(cfg)


@pytest.mark.slow
def test_cli_refuses_a_plus_typo_in_one_line_without_training(tmp_path):
    out = run_cli(
        "cxr.train",
        "loss=dynamic_bce",
        "+loss.smoothing_factr=0.2",
        f"output_dir={tmp_path}/out",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    )
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("cxr: error: loss.smoothing_factr: ") and "loss.smoothing_factor?" in line
    assert not (tmp_path / "mlflow.db").exists()  # no run was started


def test_cli_prints_the_composed_job_config():
    out = run_cli("cxr.train", "loss=dynamic_bce", "trainer.epochs=3", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.loss.name == "dynamic_bce" and cfg.trainer.epochs == 3 and cfg.loss.smoothing_factor == 0.1


def test_cli_typo_exits_nonzero_naming_the_key():
    out = run_cli("cxr.train", "trainer.epochz=3", "--cfg", "job")
    assert out.returncode != 0
    assert "trainer.epochz" in out.stderr


def test_reference_2025_is_the_studys_setup(compose_cfg):
    cfg = compose_cfg(["experiment=reference_2025", "dataset.root=/data/nih"])
    assert (cfg.dataset.name, cfg.dataset.image_size, cfg.dataset.split) == ("nih", 320, "random")
    assert list(cfg.dataset.split_fractions) == [0.9, 0.05, 0.05]
    assert (cfg.model.name, cfg.model.weights, cfg.model.dropout) == ("densenet121_cbam", "imagenet", 0.3)
    assert list(cfg.model.dense_units) == [128, 64] and cfg.model.l2 == 1e-3
    assert (cfg.loss.name, cfg.loss.smoothing_factor) == ("dynamic_bce", 0.1)
    t = cfg.trainer
    assert (t.batch_size, t.optimizer.name, t.optimizer.learning_rate) == (16, "adamw", 5e-5)
    es, lr, ck = cfg.callbacks.early_stopping, cfg.callbacks.reduce_lr, cfg.callbacks.checkpoint
    assert (es.monitor, es.patience, es.min_delta, es.restore_best_weights) == ("val_loss", 10, 1e-5, True)
    assert (lr.monitor, lr.factor, lr.patience, lr.min_delta, lr.min_lr) == ("val_loss", 0.5, 3, 1e-4, 1e-6)
    assert (ck.monitor, ck.filename) == ("val_loss", "weights.{epoch:04d}-{val_loss:.5f}.keras")


def test_evaluate_config_composes_with_the_shared_groups(tmp_path):
    out = run_cli("cxr.evaluate", "run_id=abc", "evaluation.threshold_method=f1", "--cfg", "job")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "threshold_method: f1" in out.stdout and "run_id: abc" in out.stdout
    bad = run_cli("cxr.evaluate", "evaluation.bootstrap.resampels=10", "--cfg", "job")
    assert bad.returncode != 0 and "resampels" in bad.stderr


def test_sweeps_are_a_config_group_on_the_search_path_not_in_the_config_store(compose_cfg):
    from hydra.core.config_store import ConfigStore

    from cxr.config import CONF_DIR

    assert CONF_DIR == CONF  # in a checkout, the commands read this tree's conf/, wherever they run from
    assert (CONF / "sweep").resolve() == (CONF.parent / "sweeps").resolve()
    assert "sweep" not in ConfigStore.instance().repo
    cfg = compose_cfg(["+sweep=core"], return_hydra_config=True)
    assert cfg.hydra.runtime.choices["sweep"] == "core" and cfg.hydra.sweeper.study_name == "core"
    assert cfg.hydra.runtime.choices["hydra/sweeper"] == "cxr_optuna"


def test_cli_finds_its_configs_from_another_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(CONF.parent)}
    out = subprocess.run(
        [sys.executable, "-m", "cxr.train", "experiment=reference_2025", "+sweep=core", "--cfg", "job"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = OmegaConf.create(out.stdout)
    assert (cfg.model.name, cfg.trainer.batch_size) == ("densenet121_cbam", 16)


# ------------------------------------------------------------------ values checked before any work
BAD_VALUES = [
    ("trainer.epochs=0", "trainer.epochs=0: give 1 or more epochs"),
    ("trainer.batch_size=-4", "trainer.batch_size=-4: give 1 or more images"),
    ("trainer.optimizer.learning_rate=0", "trainer.optimizer.learning_rate=0.0: give a positive step size"),
    ("trainer.optimizer.learning_rate=-0.001", "a negative one climbs the loss"),
    ("trainer.optimizer.name=nosuch", "trainer.optimizer.name='nosuch': choose one of adam, adamw, sgd"),
    ("trainer.precision=float8", "trainer.precision='float8': choose one of float32"),
    ("dataset.image_size=0", "dataset.image_size=0: model small_cnn needs at least 8 pixels a side"),
    ("dataset.split=stratified", "dataset.split='stratified': choose one of kfold, official, random"),
    ("dataset.min_positives=-1", "dataset.min_positives=-1"),
    ("evaluation.threshold_method=foo", "evaluation.threshold_method='foo': choose one of f1, youden"),
    ("evaluation.bootstrap.confidence=95", "evaluation.bootstrap.confidence=95.0: give e.g. 0.95"),
    ("callbacks.early_stopping.monitor=val_acc", "callbacks.early_stopping.monitor='val_acc': choose one of"),
    ("callbacks.checkpoint.mode=maximum", "callbacks.checkpoint.mode='maximum': choose one of min, max"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES)
def test_nonsense_values_are_refused_naming_key_value_and_remedy(compose_cfg, override, message):
    cfg = compose_cfg([override, *RESOLVABLE])
    with pytest.raises(CxrError) as err:
        check_training(cfg)
    assert message in str(err.value)


def test_each_model_declares_its_minimum_image_size(compose_cfg):
    assert min_image_size(compose_cfg(["model=small_cnn", "model.filters=[8,16,32,64]"]).model) == 16
    for name in ("densenet121", "densenet121_cbam"):
        cfg = compose_cfg([f"model={name}", "dataset.image_size=31", *RESOLVABLE])
        assert min_image_size(cfg.model) == 32
        with pytest.raises(CxrError, match=f"dataset.image_size=31: model {name} needs at least 32 pixels"):
            check_training(cfg)
    assert min_image_size(OmegaConf.create({"name": "mine", "_target_": "x.y"})) == 1
    assert min_image_size(OmegaConf.create({"name": "mine", "min_image_size": 64})) == 64


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_config_passes_validation(compose_cfg, experiment):
    check_training(compose_cfg([f"experiment={experiment}", *RESOLVABLE]))
    check_training(compose_cfg(RESOLVABLE))


@pytest.mark.parametrize(
    "override",
    ["evaluation.threshold_method=foo", "trainer.epochs=0", "model=densenet121 dataset.image_size=16"],
)
def test_cli_refuses_a_bad_value_in_one_line_before_reading_data_or_building_a_model(tmp_path, override):
    """The data folder does not exist: reading it first would fail differently; the model is not
    built (Keras alone takes ~5 s to import here, DenseNet121 many more to build)."""
    started = time.perf_counter()
    out = run_cli(
        "cxr.train",
        "dataset=nih",
        f"dataset.root={tmp_path}/absent",
        *override.split(),
        f"output_dir={tmp_path}/out",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    )
    elapsed = time.perf_counter() - started
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("cxr: error: ") and override.split()[-1].split("=")[0] in line
    assert elapsed < 5.0, f"{elapsed:.1f} s"  # ~1-2 s; importing Keras alone takes 5 s here
    assert not (tmp_path / "mlflow.db").exists()  # no run was started either


@pytest.mark.parametrize(
    ("command", "override", "message"),
    [
        ("cxr.prepare", "dataset.image_size=0", "dataset.image_size=0: give 1 or more pixels a side"),
        ("cxr.prepare", "dataset.split_fractions=[0.5,0.5]", "give three positive shares"),
        ("cxr.prepare", "dataset.generator.n_patients=0", "dataset.generator.n_patients=0: give 1 or more"),
        ("cxr.predict", "batch_size=0", "batch_size=0: give 1 or more images"),
    ],
)
def test_prepare_and_predict_refuse_bad_values_before_any_work(tmp_path, command, override, message):
    """Before this, `cxr.prepare dataset.image_size=0` generated a dataset and died in a ZeroDivisionError."""
    args = [f"dataset.root={tmp_path}/data", f"dataset.cache_dir={tmp_path}/cache"]
    if command == "cxr.predict":
        args = ["model=runs:/0123456789abcdef", f"images={tmp_path}"]
    out = run_cli(command, *args, override, f"hydra.run.dir={tmp_path}/h")
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("cxr: error: ") and message in line
    assert not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()
