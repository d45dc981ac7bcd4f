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
from cxr.data.untrusted_images import MAX_IMAGE_PIXELS
from cxr.evaluation.member_selection import MEMBER_SETS, SELECTIONS
from cxr.evaluation.scoring import THRESHOLD_METHODS
from cxr.evaluation.subgroups import ATTRIBUTES as SUBGROUP_ATTRIBUTES
from cxr.runtime.errors import CxrError
from cxr.runtime.known_keys import check_known_keys
from cxr.serving.calibrators import METHODS as CALIBRATION_METHODS
from cxr.serving.heatmap_methods import HEATMAP_METHODS
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
    # share of test images whose drawn findings (NIH's 8 boxed ones) get boxes in BBox_List_2017.csv
    box_share: float = 0.5
    ap_noise: float = (
        1.0  # pixel noise of AP images as a multiple of `noise`: > 1 plants a harder AP subgroup
    )


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


SMALL_CNN_POOLINGS = ("avg", "avgmax")


@dataclass
class SmallCnnConfig(ModelConfig):
    name: str = "small_cnn"
    filters: list[int] = field(default_factory=lambda: [16, 32, 64])
    dense_units: int = 64
    dropout: float = 0.2
    l2: float = 0.0
    pooling: str = "avg"  # avg, or avgmax: global average and max pooling side by side (small findings)
    convs_per_block: int = 1  # 3x3 convolutions before each pooling: 2 is VGG's pattern

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
class LocalisationConfig:
    """Heatmaps scored against expert boxes on the test split (docs/localisation.md)."""

    enabled: Any = "auto"  # auto: when the test split has boxed images; true: an error without; false
    method: str = "gradcam"  # gradcam, hirescam or gradcampp (cxr.serving.heatmap_methods)
    tolerance_px: float = 0.0  # pointing game: the map's maximum may lie this far outside a box (1024 px)
    top_percents: list[float] = field(default_factory=lambda: [5.0, 10.0, 20.0])  # IoU of the top k% pixels
    gallery: bool = True  # each finding's best and worst scored image, box over overlay, as artifacts
    batch_size: int = 8  # images whose heatmaps are held at the boxes' 1024 px frame at once


@dataclass
class OperatingPointsConfig:
    """Operating points at a target, thresholds chosen on validation (cxr.evaluation.targets)."""

    specificity: list[float] = field(default_factory=lambda: [0.9, 0.95])  # sensitivity at these (spec90 ...)
    sensitivity: list[float] = field(default_factory=lambda: [0.9, 0.95])  # specificity at these (sens90 ...)


@dataclass
class SubgroupsConfig:
    """AUC by subgroup with patient-bootstrap intervals, and the largest gap (cxr.evaluation.subgroups)."""

    enabled: bool = True
    attributes: list[str] = field(default_factory=lambda: ["sex", "age", "view", "follow_up"])
    age_bands: list[int] = field(default_factory=lambda: [40, 60, 80])  # <40, 40-59, 60-79, 80+
    max_age: int = 100  # older is a data error in NIH (e.g. 414): left out and counted
    min_positives: int = 10  # a group with fewer positives (or negatives) of a finding is "too small"
    flag_gap: float = 0.02  # a gap is flagged when its interval lies above this


@dataclass
class TtaConfig:
    """Test-time augmentation: probabilities averaged over fixed views of each image (cxr.data.tta)."""

    # true: on; false: off; null: off in training, a logged model's own setting in cxr.evaluate/cxr.predict
    enabled: bool | None = None
    shift_fraction: float = 0.03  # 4 views moved up, down, left, right by this share of the side; 0: none
    zoom_fraction: float = 0.0  # 2 views zoomed in and out by this share; 0: none
    horizontal_flip: bool = False  # a mirrored view: opt-in only, anatomy is not left-right symmetric


@dataclass
class EvaluationConfig:
    # decision threshold of the per-epoch recall, precision, specificity, NPV, F1 and Hamming loss
    threshold: float = 0.5
    threshold_method: str = "youden"  # youden or f1: per-disease operating thresholds, chosen on validation
    # 95% confidence intervals, resampling patients (not images)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    plots: bool = True  # ROC, precision-recall, confusion matrices and training history as artifacts
    batch_size: int = 64  # prediction batch size
    localisation: LocalisationConfig = field(default_factory=LocalisationConfig)
    ece_bins: int = 15  # equal-mass bins of the expected calibration error and the reliability diagrams
    operating_points: OperatingPointsConfig = field(default_factory=OperatingPointsConfig)
    subgroups: SubgroupsConfig = field(default_factory=SubgroupsConfig)
    report: bool = True  # report.html (the report card) and report.json on the run
    # none, temperature or isotonic: a calibrator per finding fitted on validation, stored in the logged
    # model and applied wherever it predicts (cxr.predict, serving, cxr.evaluate); training runs only
    calibration: str = "none"
    # validation and test scored over test-time views; the model keeps the setting and predicts with it
    tta: TtaConfig = field(default_factory=TtaConfig)


# ---------------------------------------------------------------- trainer
@dataclass
class OptimizerConfig:
    name: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "constant"  # constant, or cosine: decay to 0 at the last epoch (after any warm-up)
    warmup_epochs: int = 0  # cosine: linear warm-up from a tenth of learning_rate over these epochs
    ema: float = 0.0  # 0: off; else the momentum of a moving average of the weights, which fit ends with


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
    # user modules (or packages) a model loaded from the store may import: its `imports`, a user's own
    # layers; cxr imports no others (CXR_TRUSTED_IMPORTS adds to it, and is what `mlflow models serve` reads)
    trusted_imports: list[str] = field(default_factory=list)


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
    # set by the user (or a sweep config), not the sweeper: 0 trains one model per job; K >= 2 trains one
    # per fold (dataset.split=kfold, dataset.folds=K) and the job returns the mean of their
    # optimized_metric; a sweep's pruner then sees the running mean after each fold, not each epoch
    cv_folds: int = 0


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
    # top_k: the top_k best by validation AUC; greedy: forward selection with replacement on validation
    # (Caruana et al. 2004) over every matching version, never worse than its best member there
    selection: str = "top_k"
    max_members: int = 10  # greedy: at most this many picks (a version picked twice weighs double)
    # ranked: top_k/greedy above, on one shared split; folds: every matching version is one fold model of
    # one configuration (dataset.split=kfold), validated out of fold, tested by the members' mean
    members: str = "ranked"
    parent_run: str | None = None  # only versions whose run is this run's child (a grid multirun's parent)
    mixed_folds: bool = False  # folds: warn, not fail, on a missing or repeated fold or another config


@dataclass
class GatesConfig:
    """What a candidate must show against the champion on the same validation patients
    (cxr.evaluation.gates)."""

    enabled: bool = True  # false: compare the ranking metric's tags only, as before the gates
    margin: float = 0.0  # non-inferiority: the mean-AUC difference's interval must lie above -margin
    max_finding_drop: float = 0.02  # no finding's AUC may drop by more, beyond noise
    max_gap_increase: float = 0.02  # no attribute's subgroup gap in mean AUC may widen by more
    max_ece_increase: float = 0.01  # the pooled calibration error may rise by at most this
    resamples: int = 1000  # of the paired patient bootstrap
    confidence: float = 0.95
    seed: int = 0
    ece_bins: int = 15
    subgroups: SubgroupsConfig = field(default_factory=SubgroupsConfig)


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
    gates: GatesConfig = field(default_factory=GatesConfig)


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
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images are refused, from their header, before decoding
    # the thresholds findings use: spec90, sens95, ... (the model's points at a target); null: validation's
    operating_point: str | None = None
    tta: TtaConfig = field(default_factory=TtaConfig)  # enabled null: the test-time views the model carries


@dataclass
class AppConfig:
    """`python -m cxr.app model=models:/NAME@champion`: the web page and API on one model (docs/app.md)."""

    model_uri: str = MISSING  # as cxr.predict's (`model=` on the command line), or a local model folder
    host: str = "127.0.0.1"  # anything else is reachable from other machines, without TLS
    port: int = 8000
    token: str | None = None  # required as a bearer token by the API and the page (or CXR_APP_TOKEN)
    max_file_mb: float = 25.0
    max_files: int = 32  # per request
    max_pixels: int = 89_478_485  # per image, width x height: PIL's cap, as cxr.prepare reads files
    batch_size: int = 16  # images per forward pass, shared by concurrent requests
    batch_wait_ms: float = 5.0  # how long a pass waits for requests still being read
    keep_uploads: str | None = None  # a folder to keep each upload in (named by a random id); null: none
    operating_point: str | None = None  # the thresholds the page starts at; null: the validation ones
    preview_px: int = 1024  # the longest side of the image the page shows
    mlflow_ui: str | None = None  # e.g. http://127.0.0.1:5000: the page links the model's run there
    tracking: TrackingConfig = MISSING


@dataclass
class ReportConfig:
    """`python -m cxr.report model=models:/NAME@champion`: the report card of a registered model."""

    # models:/<name>/<version> or models:/<name>@<alias>; on the command line also `model=...`
    model_uri: str = MISSING
    output_dir: str = MISSING  # report.html and report.json go here (default: the Hydra run folder)
    tracking: TrackingConfig = MISSING
    # another version (models:/NAME/7): both side by side, with paired differences on validation
    compare: str | None = None
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)  # of the paired differences


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
    check_localisation(cfg.localisation)
    check_evidence(cfg)
    check_tta(cfg.tta, "evaluation.tta")


def check_tta(cfg: TtaConfig, key: str) -> None:
    """Test-time views: the switch, shares of the side in [0, 0.5), a view besides the image itself."""
    _choice(f"{key}.enabled", cfg.enabled, (None, True, False))
    for name in ("shift_fraction", "zoom_fraction"):
        value = cfg[name]
        _require(
            0.0 <= value < 0.5,
            f"{key}.{name}",
            value,
            "give a share of the image side, 0 (none) to below 0.5",
        )
    _require(
        cfg.enabled is not True or cfg.shift_fraction > 0 or cfg.zoom_fraction > 0 or cfg.horizontal_flip,
        f"{key}.enabled",
        True,
        f"no view besides the image itself: give {key}.shift_fraction or {key}.zoom_fraction above 0",
    )


LOCALISATION_SWITCH = ("auto", True, False)


def check_localisation(cfg: LocalisationConfig) -> None:
    """`evaluation.localisation`: the switch, the heatmap method, tolerance, top shares, batch size."""
    key = "evaluation.localisation"
    _choice(f"{key}.enabled", cfg.enabled, LOCALISATION_SWITCH)
    _choice(f"{key}.method", cfg.method, list(HEATMAP_METHODS))
    _require(cfg.tolerance_px >= 0, f"{key}.tolerance_px", cfg.tolerance_px, "give 0 or more pixels")
    percents = list(cfg.top_percents)
    _require(
        bool(percents) and all(0 < p <= 100 for p in percents),
        f"{key}.top_percents",
        percents,
        "give one or more shares in (0, 100], e.g. [5,10,20]",
    )
    _require(_positive_int(cfg.batch_size), f"{key}.batch_size", cfg.batch_size, "give 1 or more images")


def check_evidence(cfg: EvaluationConfig) -> None:
    """Calibration bins, operating-point targets and subgroups of the `evaluation` group."""
    _require(_positive_int(cfg.ece_bins), "evaluation.ece_bins", cfg.ece_bins, "give 1 or more bins")
    _choice("evaluation.calibration", cfg.calibration, CALIBRATION_METHODS)
    for measure in ("specificity", "sensitivity"):
        key = f"evaluation.operating_points.{measure}"
        values = list(cfg.operating_points[measure])
        _require(
            all(0.0 < v < 1.0 for v in values), key, values, "give targets between 0 and 1, e.g. [0.9,0.95]"
        )
    g = cfg.subgroups
    for name in g.attributes:
        _choice("evaluation.subgroups.attributes", name, list(SUBGROUP_ATTRIBUTES))
    bands = list(g.age_bands)
    _require(
        len(bands) > 0 and bands == sorted(set(bands)) and bands[0] > 0,
        "evaluation.subgroups.age_bands",
        bands,
        "give increasing ages that start bands, e.g. [40,60,80]",
    )
    _require(g.min_positives >= 1, "evaluation.subgroups.min_positives", g.min_positives, "give 1 or more")


def check_gates(cfg: GatesConfig) -> None:
    """`cxr.promote`'s gates, before the registry is read."""
    for key in ("margin", "max_finding_drop", "max_gap_increase", "max_ece_increase"):
        _require(cfg[key] >= 0, f"gates.{key}", cfg[key], "give 0 or more (an AUC or ECE difference)")
    _require(cfg.resamples >= 1, "gates.resamples", cfg.resamples, "give 1 or more (1000 for the interval)")
    _require(0.0 < cfg.confidence < 1.0, "gates.confidence", cfg.confidence, "give e.g. 0.95")
    _require(_positive_int(cfg.ece_bins), "gates.ece_bins", cfg.ece_bins, "give 1 or more bins")


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
    check_known_keys(cfg)
    _require(_positive_int(cfg.batch_size), "batch_size", cfg.batch_size, "give 1 or more images")
    _require(_positive_int(cfg.max_image_pixels), "max_image_pixels", cfg.max_image_pixels, "give 1 or more")
    check_tta(cfg.tta, "tta")


def check_app(cfg: AppConfig) -> None:
    """`cxr.app`'s own values, before the model is loaded."""
    check_known_keys(cfg)
    _require(1 <= cfg.port <= 65535, "port", cfg.port, "give a TCP port, 1 to 65535")
    _require(cfg.max_file_mb > 0, "max_file_mb", cfg.max_file_mb, "give a positive size in MB")
    for key in ("max_files", "max_pixels", "batch_size", "preview_px"):
        _require(_positive_int(cfg[key]), key, cfg[key], "give 1 or more")
    _require(cfg.batch_wait_ms >= 0, "batch_wait_ms", cfg.batch_wait_ms, "give 0 (no waiting) or more")
    _require(cfg.token is None or len(cfg.token) > 0, "token", "***", "give a non-empty token, or none")


def check_ensemble(cfg: EnsembleConfig) -> None:
    """`cxr.ensemble`'s own values, before any model is loaded."""
    check_known_keys(cfg)
    _choice("selection", cfg.selection, list(SELECTIONS))
    _choice("members", cfg.members, list(MEMBER_SETS))
    folds = cfg.members == "folds"
    _require(
        not folds or cfg.selection == "top_k", "selection", cfg.selection, "members=folds takes every fold"
    )
    _require(
        not folds or cfg.weights == "mean", "weights", cfg.weights, "members=folds weighs each fold equally"
    )
    _require(_positive_int(cfg.top_k), "top_k", cfg.top_k, "give 1 or more members")
    _require(_positive_int(cfg.max_members), "max_members", cfg.max_members, "give 1 or more picks")
    _require(
        cfg.selection == "top_k" or cfg.weights == "mean",
        "weights",
        cfg.weights,
        "greedy selection weighs each version by its picks: leave weights=mean",
    )
    check_evaluation(cfg.evaluation)


def check_training(cfg: Config) -> None:
    """Every value of a training config, before any data is read or model built: one CxrError naming
    the key, the value and what to give instead. Hydra has already checked types and key names."""
    check_known_keys(cfg)  # a key a '+' added beside its schema's (+loss.smoothing_factr=0.2)
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
    _require(0.0 <= o.ema < 1.0, "trainer.optimizer.ema", o.ema, "give 0 (off) or a momentum under 1: 0.99")
    _require(
        o.schedule == "constant" or not cfg.callbacks.reduce_lr.enabled,
        "callbacks.reduce_lr.enabled",
        True,
        f"trainer.optimizer.schedule={o.schedule} sets the rate at every step; turn reduce_lr off",
    )
    check_trainer(t)
    if OmegaConf.get_type(cfg.model) is SmallCnnConfig:
        _choice("model.pooling", cfg.model.pooling, SMALL_CNN_POOLINGS)
        n = cfg.model.convs_per_block
        _require(_positive_int(n), "model.convs_per_block", n, "give 1 or more convolutions a block")
    minimum = min_image_size(cfg.model)
    _require(
        d.image_size >= minimum,
        "dataset.image_size",
        d.image_size,
        f"model {cfg.model.name} needs at least {minimum} pixels a side",
    )
    check_dataset(d)
    k = cfg.optuna.cv_folds
    _require(
        k == 0 or (_positive_int(k) and k >= 2), "optuna.cv_folds", k, "give 0 (one model) or 2 or more folds"
    )
    _require(
        k == 0 or d.split in ("official", "kfold"),
        "dataset.split",
        d.split,
        "optuna.cv_folds folds the official train_val list: use dataset.split=kfold (or official)",
    )
    check_callbacks(cfg.callbacks)
    check_evaluation(cfg.evaluation)


SCHEMAS: dict[tuple[str | None, str], type] = {
    (None, "config_schema"): Config,
    (None, "evaluate_schema"): EvaluateConfig,
    (None, "ensemble_schema"): EnsembleConfig,
    (None, "promote_schema"): PromoteConfig,
    (None, "predict_schema"): PredictConfig,
    (None, "app_schema"): AppConfig,
    (None, "report_schema"): ReportConfig,
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
