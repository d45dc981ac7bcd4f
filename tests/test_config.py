"""Config composition: every option composes, typos and wrong types fail at once."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from tests.conftest import CONF, run_cli

GROUPS = ["dataset", "model", "loss", "callbacks", "trainer", "tracking", "evaluation"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(compose_cfg, group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("dataset", "nih"):
        overrides.append("dataset.root=/data/ChestX-ray14")
    cfg = compose_cfg(overrides)
    node = cfg[group]
    if "name" in node:
        assert node.name == option
    OmegaConf.to_container(cfg.dataset, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes(compose_cfg, experiment):
    cfg = compose_cfg([f"experiment={experiment}"])
    assert cfg.trainer.epochs > 0


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
