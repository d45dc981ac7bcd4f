"""Typed schemas for every config group, registered with Hydra's ConfigStore, where conf/ is, and the
value checks every command runs before it reads data or builds a model.

Each YAML option under conf/ names its schema in its defaults list, so a misspelt key or a value
of the wrong type fails while Hydra composes the config, before anything heavy is imported. The value
checks compare names against the departments' registries (optimizers, split methods, threshold
methods, metric names), so config sits above evaluation, serving, training, tracking and data in the
import layers; those departments use the schemas as type hints only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cxr.data.splits import SPLIT_METHODS, valid_fractions
from cxr.evaluation.scoring import THRESHOLD_METHODS
from cxr.runtime.errors import CxrError
from cxr.tracking import names as metric_names
from cxr.tracking.names import check_spelling, epoch_log_names, from_keras
from cxr.training.backend import check_trainer
from cxr.training.optimizers import OPTIMIZERS, SCHEDULES


# ---------------------------------------------------------------- dataset
@dataclass
class AugmentConfig:
    """Training-time augmentation; each 0 (or false) disables that transform."""

    rotation_degrees: float = 0.0  # random rotation in [-d, d] degrees
    shift_fraction: float = 0.0  # random shift up to this share of the side, both axes
    brightness: float = 0.0  # random brightness change up to this share of the grey range
    contrast: float = 0.0  # random contrast factor in [1 - c, 1 + c]
    zoom_fraction: float = 0.0  # random zoom in or out by up to this share of the side
    horizontal_flip: bool = False  # off by default: anatomy is not left-right symmetric


@dataclass
class DatasetConfig:
    name: str = MISSING
    image_size: int = 64  # side of the square images the model sees (the prepared cache's size)
    split: str = "official"  # official (NIH test list), kfold (official test, k validation folds) or random
    val_fraction: float = 0.1  # official split: share of train_val images held out for validation
    split_fractions: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])  # random: train/val/test
    split_seed: int = 0
    folds: int = 5  # kfold: train_val's patients in this many stratified folds
    fold: int = 0  # kfold: the fold that validates (the others train)
    cache_dir: str = "data/prepared"  # resized uint8 copies of the images, one folder per dataset+size
    allow_missing_images: bool = False  # true: train on the images present, after listing the missing ones
    # a finding with fewer positive images than this in train, val or test is named in a warning (console
    # and run tag cxr.few_positives); every run logs the counts as data/counts.csv
    min_positives: int = 5
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training-time only


@dataclass
class SyntheticGeneratorConfig:
    n_patients: int = 400
    mean_images_per_patient: float = 3.0
    resolution: int = 128  # side of the generated PNGs
    test_fraction: float = 0.2  # share of patients written to test_list.txt
    seed: int = 0
    strength: float = 1.0  # contrast of each disease's visual trace
    noise: float = 0.06  # std of pixel noise, in units of the full grey range
    min_prevalence: float = 0.0  # floor on each disease's prevalence, so small sets have positives
    followup_correlation: float = 0.7  # how much a patient's follow-up images share findings


@dataclass
class SyntheticDatasetConfig(DatasetConfig):
    name: str = "synthetic"
    root: str = "data/synthetic"  # generated datasets live in subfolders named by their fingerprint
    generator: SyntheticGeneratorConfig = field(default_factory=SyntheticGeneratorConfig)


@dataclass
class NihDatasetConfig(DatasetConfig):
    name: str = "nih"
    root: str = ""  # folder holding Data_Entry_2017*.csv, the split lists and the images
    image_size: int = 320


# ---------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING

    def min_image_size(self) -> int:
        """The smallest `dataset.image_size` the model builds on: each model's schema declares its own,
        so a too-small size fails at validation, before Keras is imported (seconds) or a model built."""
        return 1


# An option whose builder lives in the user's own code (model or loss group): `_target_` is the dotted
# path of a builder with the registered builders' signature; the option's other keys are its parameters,
# any the builder reads. Not a dataclass: its keys are the user's, and Hydra closes them after composition,
# so a misspelt key on the command line still fails.
CUSTOM_SCHEMA = {"name": MISSING, "_target_": MISSING}


@dataclass
class SmallCnnConfig(ModelConfig):
    name: str = "small_cnn"
    filters: list[int] = field(default_factory=lambda: [16, 32, 64])
    dense_units: int = 64
    dropout: float = 0.2
    l2: float = 0.0

    def min_image_size(self) -> int:
        return 2 ** len(self.filters)  # each block halves the side; the last must keep one pixel


@dataclass
class CbamConfig:
    reduction: int = 16  # channel-attention MLP: hidden width = channels // reduction
    kernel_size: int = 7  # spatial attention convolution over the two pooled maps


@dataclass
class DenseNet121Config(ModelConfig):
    name: str = "densenet121"
    weights: str | None = "imagenet"  # imagenet (downloaded once), a weights-file path, or null (random)
    frozen: str = "none"  # none, all, or a backbone layer name: every layer before it is frozen
    dropout: float = 0.0  # before the sigmoid layer

    def min_image_size(self) -> int:
        return 32  # keras.applications.DenseNet121 refuses smaller inputs


@dataclass
class DenseNet121CbamConfig(DenseNet121Config):
    name: str = "densenet121_cbam"
    cbam: CbamConfig = field(default_factory=CbamConfig)
    dense_units: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.3  # after each dense layer
    l2: float = 1e-3


# ---------------------------------------------------------------- loss
@dataclass
class LossConfig:
    name: str = MISSING


@dataclass
class BceConfig(LossConfig):
    name: str = "bce"
    label_smoothing: float = 0.0


@dataclass
class DynamicBceConfig(LossConfig):
    name: str = "dynamic_bce"
    smoothing_factor: float = 0.1  # pulls each batch's positive ratio toward 0.5
    epsilon: float = 1e-7


@dataclass
class MovingAverageBceConfig(LossConfig):
    name: str = "moving_average_bce"
    momentum: float = 0.9  # share of the running ratio kept at each training batch
    smoothing_factor: float = 0.0
    epsilon: float = 1e-7


@dataclass
class WeightedBceConfig(LossConfig):
    name: str = "weighted_bce"
    normalize: bool = False  # scale each class's two weights to sum to 1
    gamma: float = 0.0  # focal modulation; 0 is plain weighted BCE
    epsilon: float = 1e-7


@dataclass
class ClassBalancedBceConfig(LossConfig):
    name: str = "class_balanced_bce"
    beta: float = 0.999  # effective number of samples: (1 - beta^n) / (1 - beta)
    gamma: float = 0.0
    epsilon: float = 1e-7


@dataclass
class AslConfig(LossConfig):
    name: str = "asl"
    gamma_pos: float = 0.0
    gamma_neg: float = 4.0
    clip: float = 0.05  # probability margin subtracted from negatives
    epsilon: float = 1e-7


# ---------------------------------------------------------------- evaluation
@dataclass
class BootstrapConfig:
    resamples: int = 1000  # 0 disables the confidence intervals
    confidence: float = 0.95
    seed: int = 0


@dataclass
class EvaluationConfig:
    # decision threshold of the per-epoch recall, precision, specificity, NPV, F1 and Hamming loss
    threshold: float = 0.5
    threshold_method: str = "youden"  # youden or f1: per-disease operating thresholds, chosen on validation
    # 95% confidence intervals, resampling patients (not images)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    plots: bool = True  # ROC, precision-recall, confusion matrices and training history as artifacts
    batch_size: int = 64  # prediction batch size


# ---------------------------------------------------------------- trainer
@dataclass
class OptimizerConfig:
    name: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "constant"  # constant, or cosine: decay to 0 at the last epoch (after any warm-up)
    warmup_epochs: int = 0  # cosine: linear warm-up from a tenth of learning_rate over these epochs


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 32
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    deterministic: bool = False  # bit-exact ops (TensorFlow; XLA's GPU flag on JAX): reproducible, slower
    verbose: Any = "auto"  # Keras fit verbosity: auto (a bar on a terminal, else a line per epoch), 0, 1, 2
    # float32, mixed_bfloat16 (GPUs from Ampere, TPUs) or mixed_float16 (older GPUs; with loss scaling):
    # layers compute in 16 bits and keep float32 weights; the sigmoid outputs and the loss stay float32
    precision: str = "float32"
    jit_compile: Any = "auto"  # XLA-compile the train step: auto (Keras decides per backend), true, false
    steps_per_execution: int = 1  # batches per compiled call (callbacks see every Nth batch)
    # none, or data_parallel: one replica per local device (all of a multi-worker cluster's), each taking
    # batch_size images, so the global batch is batch_size x devices; the learning rate is not scaled
    distribution: str = "none"


# ---------------------------------------------------------------- callbacks
@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 10
    min_delta: float = 1e-5
    restore_best_weights: bool = True


@dataclass
class ReduceLrConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    mode: str = "min"
    factor: float = 0.5
    patience: int = 3
    min_delta: float = 1e-4
    min_lr: float = 1e-6


@dataclass
class CheckpointConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    mode: str = "min"
    filename: str = "weights.{epoch:04d}-{val_loss:.5f}.keras"
    save_best_only: bool = True


@dataclass
class CallbacksConfig:
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    reduce_lr: ReduceLrConfig = field(default_factory=ReduceLrConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    csv_history: bool = True


# ---------------------------------------------------------------- tracking
@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlruns/mlflow.db"
    # where a new experiment's artifacts go; null: an `artifacts` folder beside a SQLite database
    # (so MLFLOW_TRACKING_URI moves both), or the tracking server's own default
    artifact_root: str | None = None
    experiment_name: str = "cxr"
    run_name: str | None = None
    log_model: bool = True
    registered_model_name: str | None = None  # also register the model under this name
    # A run records its host, pid and a last-seen tag every heartbeat_interval_s; a later cxr.train (or the
    # sweeper, for its trials) marks a RUNNING run KILLED when its process is gone (same host) or when it
    # was last seen more than orphan_grace_s ago (any host).
    heartbeat_interval_s: float = 30.0
    orphan_grace_s: float = 600.0


# ---------------------------------------------------------------- sweep job
@dataclass
class OptunaJobConfig:
    """Set by the Optuna sweeper on each job it launches; all null for a plain run.

    The job reaches its trial through the storage (any process, any machine), never through memory.
    """

    storage: str | None = None  # Optuna storage URL
    study_name: str | None = None
    trial_id: int | None = None  # the storage's id of the trial
    trial_number: int | None = None  # the trial's number within its study
    parent_run_id: str | None = None  # the sweep's MLflow parent run
    keep_models: int | None = None  # log the model only if the trial ranks among the best N so far


# ---------------------------------------------------------------- top level
@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: Any = MISSING  # a ModelConfig, or an option from your own code (CUSTOM_SCHEMA)
    loss: Any = MISSING  # a LossConfig, or an option from your own code (CUSTOM_SCHEMA)
    callbacks: CallbacksConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    evaluation: EvaluationConfig = MISSING
    optuna: OptunaJobConfig = field(default_factory=OptunaJobConfig)
    seed: int = 42
    optimized_metric: str = metric_names.OPTIMIZED  # what cxr.train returns to a sweep: val/auc_mean
    output_dir: str = MISSING  # this run's working folder (checkpoints, history); set by conf/config.yaml


@dataclass
class EvaluateConfig:
    """`python -m cxr.evaluate`: re-evaluate a logged model on the data and split its run used."""

    run_id: str | None = None  # a training run whose logged model to evaluate...
    model_uri: str | None = (
        None  # ...or a model URI: runs:/<id>, models:/<name>/<version>, models:/<name>@<alias>
    )
    split: str = "test"  # train, val or test; thresholds always come from val
    dataset_root: str | None = None  # where the run's dataset is now, if it moved
    cache_dir: str | None = None  # where to keep the resized images, if not where the run kept them
    evaluation: EvaluationConfig = MISSING
    tracking: TrackingConfig = MISSING


@dataclass
class EnsembleConfig:
    """`python -m cxr.ensemble model_name=NAME`: average the top K registered versions."""

    model_name: str = MISSING  # the registered model whose versions are candidates
    top_k: int = 5
    weights: str = "mean"  # mean | val_auc (each member's share proportional to its val AUC - 0.5)
    study: str | None = None  # only versions trained by this Optuna study
    experiment: str | None = None  # only versions trained in this MLflow experiment
    tags: dict[str, str] = field(default_factory=dict)  # only versions with these exact tag values
    ensemble_name: str | None = None  # register the ensemble here; null: as a version of model_name
    dataset_root: str | None = None  # where the members' dataset is now, if it moved
    cache_dir: str | None = None
    evaluation: EvaluationConfig = MISSING
    tracking: TrackingConfig = MISSING


@dataclass
class PromoteConfig:
    """`python -m cxr.promote model_name=NAME [version=N]`: move the champion alias, or show candidates."""

    model_name: str = MISSING
    version: int | None = None  # null: show the champion and the top candidates, change nothing
    force: bool = False  # promote even if the version does not beat the current champion
    alias: str = metric_names.CHAMPION
    metric: str = metric_names.RANK  # the validation metric versions are compared by: val/auc_mean
    top: int = 10  # how many candidates the table shows
    tracking: TrackingConfig = MISSING


@dataclass
class PredictConfig:
    """`python -m cxr.predict model=models:/NAME@champion images=PATH`: probabilities and findings."""

    # runs:/<id>, models:/<name>/<version> or models:/<name>@<alias>; on the command line also
    # `model=...` (Hydra reserves the key `model` for the model config group, so the command renames it)
    model_uri: str = MISSING
    images: Any = MISSING  # a file or folder, or a list of them: images=[a.png,b.png] (PNG and JPEG)
    heatmaps: bool = False  # a Grad-CAM overlay PNG per image and positive finding
    output_dir: str = MISSING  # predictions.csv and heatmaps/ go here (default: the Hydra run folder)
    batch_size: int = 32
    tracking: TrackingConfig = MISSING


# ---------------------------------------------------------------- validation
MONITOR_MODES = ("min", "max")


def _require(ok: bool, key: str, value: Any, what: str) -> None:
    if not ok:
        raise CxrError(f"{key}={value!r}: {what}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _choice(key: str, value: Any, choices) -> None:
    _require(value in choices, key, value, f"choose one of {', '.join(map(str, choices))}")


def min_image_size(model: DictConfig) -> int:
    """The model option's declared minimum input side: its schema's, or a custom option's own
    `min_image_size` key (1 when it declares none). `DictConfig`: a ModelConfig or a `schema_custom`
    option, told apart by the node's type."""
    schema = OmegaConf.get_type(model)
    if isinstance(schema, type) and issubclass(schema, ModelConfig):
        return OmegaConf.to_object(model).min_image_size()
    return int(model.get("min_image_size", 1))


def check_evaluation(cfg: EvaluationConfig) -> None:
    """The `evaluation` group: threshold method, thresholds, bootstrap and batch size."""
    _choice("evaluation.threshold_method", cfg.threshold_method, list(THRESHOLD_METHODS))
    _require(0.0 <= cfg.threshold <= 1.0, "evaluation.threshold", cfg.threshold, "give a probability, 0 to 1")
    b = cfg.bootstrap
    _require(b.resamples >= 0, "evaluation.bootstrap.resamples", b.resamples, "give 0 (no intervals) or more")
    _require(0.0 < b.confidence < 1.0, "evaluation.bootstrap.confidence", b.confidence, "give e.g. 0.95")
    _require(_positive_int(cfg.batch_size), "evaluation.batch_size", cfg.batch_size, "give 1 or more")


def check_monitor(key: str, name: str) -> None:
    """A monitored name must be logged each epoch (Keras only warns, then never stops or saves)."""
    _choice(key, name, epoch_log_names())


def check_sweep_monitor(key: str, name: str) -> None:
    """What a sweep's trials report each epoch: a per-epoch metric, in MLflow's names (`val/auc`)."""
    check_spelling(name, key)
    _choice(key, name, tuple(from_keras(n) for n in epoch_log_names()))


def check_callbacks(cfg: CallbacksConfig) -> None:
    for key in ("early_stopping", "reduce_lr", "checkpoint"):
        node = cfg[key]
        if node.enabled:
            check_monitor(f"callbacks.{key}.monitor", node.monitor)
            _choice(f"callbacks.{key}.mode", node.mode, MONITOR_MODES)
    for key in ("early_stopping", "reduce_lr"):
        patience = cfg[key].patience
        _require(patience >= 0, f"callbacks.{key}.patience", patience, "give 0 or more epochs")


def check_dataset(d: DatasetConfig) -> None:
    """The `dataset` group, before any image is generated or read (`cxr.train`, `cxr.prepare`)."""
    _require(_positive_int(d.image_size), "dataset.image_size", d.image_size, "give 1 or more pixels a side")
    _choice("dataset.split", d.split, list(SPLIT_METHODS))
    _require(0.0 < d.val_fraction < 1.0, "dataset.val_fraction", d.val_fraction, "give a share in (0, 1)")
    fractions = list(d.split_fractions)
    _require(
        len(fractions) == 3 and valid_fractions(fractions),
        "dataset.split_fractions",
        fractions,
        "give three positive shares (train, val, test) that sum to 1",
    )
    _require(isinstance(d.folds, int) and d.folds >= 2, "dataset.folds", d.folds, "give 2 or more folds")
    _require(0 <= d.fold < d.folds, "dataset.fold", d.fold, f"give 0 to dataset.folds - 1 ({d.folds - 1})")
    _require(d.min_positives >= 0, "dataset.min_positives", d.min_positives, "give 0 (no warning) or more")
    generator = d.get("generator")
    if generator is not None:
        for key in ("n_patients", "resolution"):
            value = generator[key]
            _require(_positive_int(value), f"dataset.generator.{key}", value, "give 1 or more")


def check_predict(cfg: PredictConfig) -> None:
    """`cxr.predict`'s own values, before the model is loaded or an image read."""
    _require(_positive_int(cfg.batch_size), "batch_size", cfg.batch_size, "give 1 or more images")


def check_training(cfg: Config) -> None:
    """Every value of a training config, before any data is read or model built: one CxrError naming
    the key, the value and what to give instead. Hydra has already checked types and key names."""
    t, d = cfg.trainer, cfg.dataset
    _require(_positive_int(t.epochs), "trainer.epochs", t.epochs, "give 1 or more epochs")
    _require(_positive_int(t.batch_size), "trainer.batch_size", t.batch_size, "give 1 or more images")
    o = t.optimizer
    _choice("trainer.optimizer.name", o.name, list(OPTIMIZERS))
    _require(
        0.0 < o.learning_rate < float("inf"),
        "trainer.optimizer.learning_rate",
        o.learning_rate,
        "give a positive step size (0 does not train; a negative one climbs the loss)",
    )
    _require(o.weight_decay >= 0.0, "trainer.optimizer.weight_decay", o.weight_decay, "give 0 or more")
    _choice("trainer.optimizer.schedule", o.schedule, list(SCHEDULES))
    _require(
        0 <= o.warmup_epochs < t.epochs,
        "trainer.optimizer.warmup_epochs",
        o.warmup_epochs,
        f"give 0 or more epochs, fewer than trainer.epochs ({t.epochs})",
    )
    _require(
        o.schedule == "constant" or not cfg.callbacks.reduce_lr.enabled,
        "callbacks.reduce_lr.enabled",
        True,
        f"trainer.optimizer.schedule={o.schedule} sets the rate at every step; turn reduce_lr off",
    )
    check_trainer(t)
    minimum = min_image_size(cfg.model)
    _require(
        d.image_size >= minimum,
        "dataset.image_size",
        d.image_size,
        f"model {cfg.model.name} needs at least {minimum} pixels a side",
    )
    check_dataset(d)
    check_callbacks(cfg.callbacks)
    check_evaluation(cfg.evaluation)


SCHEMAS: dict[tuple[str | None, str], type] = {
    (None, "config_schema"): Config,
    (None, "evaluate_schema"): EvaluateConfig,
    (None, "ensemble_schema"): EnsembleConfig,
    (None, "promote_schema"): PromoteConfig,
    (None, "predict_schema"): PredictConfig,
    ("dataset", "schema_synthetic"): SyntheticDatasetConfig,
    ("dataset", "schema_nih"): NihDatasetConfig,
    ("model", "schema_small_cnn"): SmallCnnConfig,
    ("model", "schema_densenet121"): DenseNet121Config,
    ("model", "schema_densenet121_cbam"): DenseNet121CbamConfig,
    ("loss", "schema_bce"): BceConfig,
    ("loss", "schema_dynamic_bce"): DynamicBceConfig,
    ("loss", "schema_moving_average_bce"): MovingAverageBceConfig,
    ("loss", "schema_weighted_bce"): WeightedBceConfig,
    ("loss", "schema_class_balanced_bce"): ClassBalancedBceConfig,
    ("loss", "schema_asl"): AslConfig,
    ("trainer", "schema"): TrainerConfig,
    ("callbacks", "schema"): CallbacksConfig,
    ("tracking", "schema"): TrackingConfig,
    ("evaluation", "schema"): EvaluationConfig,
}


def _conf_dir() -> Path:
    """conf/ (with its `sweep` group) ships inside the wheel as cxr/conf; a source tree has it at the top."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if installed.is_dir() else package.parent / "conf"


CONF_DIR = _conf_dir()
"""The primary config folder of every command (`@hydra.main(config_path=str(CONF_DIR))`), so configs are
found from any working directory, installed or editable. sweeps/ is its `sweep` group (conf/sweep links to
it; the wheel copies it there)."""


def register_configs() -> None:
    """Idempotent: Hydra apps and tests both call it before composing."""
    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=group, name=name, node=node)
    for group in ("model", "loss"):
        cs.store(group=group, name="schema_custom", node=CUSTOM_SCHEMA)
