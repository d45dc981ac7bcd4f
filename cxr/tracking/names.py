"""Every MLflow name cxr writes or reads, in one place: metrics, tags, aliases and artifact paths.

Names follow MLflow's `/` convention so the UI groups them into sections: `train/loss`,
`val/auc` (per epoch), `val/auc/Atelectasis`, `val/auc_mean`, `test/sensitivity/Hernia`,
`threshold/Hernia`, `time/fit_s`. Writers (training, evaluation, sweeps) and readers (the
objective, ranking, promotion, benches, tests) build names here, never from string literals.

Keras's own per-epoch log keys (`val_auc`, what its callbacks monitor) are listed here too. Tags
and artifact paths follow at the end: a run's, a sweep parent's, a registered version's.

Before this scheme, names were flat (`val_auc_mean`, `val_auc_Atelectasis`): `legacy` gives a new
name's old spelling, so registered versions tagged the old way still rank, and `check_spelling`
turns an old name given in a config into an error that names the new one.
"""

from __future__ import annotations

from cxr.data.labels import NIH_PATHOLOGIES
from cxr.runtime.errors import CxrError

SEP = "/"
TRAIN, VAL, TEST = "train", "val", "test"

# per-disease columns of the evaluation table that are logged as metrics, <split>/<column>/<disease>
PER_DISEASE = ("auc", "auprc", "sensitivity", "specificity", "ppv", "npv")
AUC_MEAN = "auc_mean"
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"  # suffixes of a statistic's interval bounds

EPOCHS_TRAINED = "train/epochs_trained"
PRUNED_AT_EPOCH = "train/pruned_at_epoch"
# how many test-time views each image's evaluation scores average (1: none; cxr.data.tta)
TTA_VIEWS_PARAM = "evaluation.tta_views"
# a sweep's parent run
BEST_VALUE = "sweep/best_value"

_KERAS_RENAMES = {"learning_rate": "lr"}  # Keras's per-epoch log keys whose MLflow name differs


def split_metric(split: str, statistic: str) -> str:
    """`val/auc_mean`, `test/auprc_mean_ci_low`: a split-level statistic."""
    return f"{split}{SEP}{statistic}"


def per_disease(split: str, column: str, disease: str) -> str:
    """`val/auc/Atelectasis`: one disease's value of an evaluation-table column."""
    return f"{split}{SEP}{column}{SEP}{disease}"


def threshold(disease: str) -> str:
    """`threshold/Hernia`: the validation-chosen operating threshold."""
    return f"threshold{SEP}{disease}"


def timing(phase: str) -> str:
    """`time/fit_s`: wall seconds of a phase of a run."""
    return f"time{SEP}{phase}_s"


def per_fold(metric: str) -> str:
    """`cv/val/auc_mean`: a cross-validated job's fold values of `metric` (step: the fold); the job's run
    logs the mean under `metric` itself."""
    return f"cv{SEP}{metric}"


def trials(state: str) -> str:
    """`sweep/trials_complete`: a sweep's trial count in one state."""
    return f"sweep{SEP}trials_{state}"


def from_keras(key: str) -> str:
    """A Keras per-epoch log key as an MLflow name: `loss` -> `train/loss`, `val_auc` -> `val/auc`."""
    split, name = (VAL, key[len("val_") :]) if key.startswith("val_") else (TRAIN, key)
    return split_metric(split, _KERAS_RENAMES.get(name, name))


def to_keras(name: str) -> str:
    """The Keras log key of a per-epoch MLflow name (`val/auc` -> `val_auc`), what Keras callbacks see."""
    split, _, metric = name.partition(SEP)
    metric = {v: k for k, v in _KERAS_RENAMES.items()}.get(metric, metric)
    return metric if split == TRAIN else f"{split}_{metric}"


RANK = split_metric(VAL, AUC_MEAN)  # what ranking, ensembling and promotion compare by default
OPTIMIZED = RANK  # what cxr.train returns to a sweep by default
MONITOR = from_keras("val_auc")  # what a sweep trial reports each epoch by default


def interval(name: str) -> tuple[str, str]:
    """The names of a statistic's interval bounds: `val/auc_mean_ci_low`, `val/auc_mean_ci_high`."""
    return name + CI_LOW, name + CI_HIGH


def legacy(name: str) -> str:
    """A name's spelling before the `/` scheme (`val/auc_mean` -> `val_auc_mean`)."""
    return name.replace(SEP, "_")


def check_spelling(name: str, key: str) -> None:
    """A metric name given in a config (`key`) is in the `/` scheme, or an error names the new one."""
    if SEP not in name:
        split, _, rest = name.partition("_")
        disease = next((d for d in NIH_PATHOLOGIES if rest.endswith(f"_{d}")), None)
        if disease:
            rest = rest[: -len(disease) - 1] + SEP + disease
        raise CxrError(
            f"{key}={name!r}: metric names are now grouped with '/'; write {split}{SEP}{rest} "
            "(docs/evaluation.md, 'Metric names', lists them)"
        )


def check_validation(name: str, key: str, why: str) -> None:
    """A metric chosen for selecting anything must be a validation one (`why` says what would leak)."""
    check_spelling(name, key)
    check_not_localisation(name, key)
    if not name.startswith(VAL + SEP):
        raise CxrError(f"{key}={name!r}: choose a validation metric ({RANK}, val/auprc_mean, ...); {why}")


# ---------------------------------------------------------------- Keras per-epoch log keys
# mean over findings with both classes present (cxr.training.metrics.PresentLabelsAUC)
AUC = "auc"
RECALL = "recall"
PRECISION = "precision"
SPECIFICITY = "specificity"
NPV = "npv"
F1_MICRO = "f1_micro"
HAMMING_LOSS = "hamming_loss"
EPOCH_METRICS = (AUC, RECALL, PRECISION, SPECIFICITY, NPV, F1_MICRO, HAMMING_LOSS)

LOSS = "loss"
LEARNING_RATE = "learning_rate"  # in Keras's logs while reduce_lr is on
VALIDATION_PREFIX = "val_"


def epoch_log_names() -> tuple[str, ...]:
    """Every key of Keras's per-epoch logs that a callback or the pruner may monitor."""
    train = (LOSS, *EPOCH_METRICS)
    return (*train, *(VALIDATION_PREFIX + n for n in train), LEARNING_RATE)


# data diagnostics (cxr.data.counts): artifact and run tags
COUNTS_ARTIFACT = "data/counts.csv"
FEW_POSITIVES_TAG = "cxr.few_positives"  # `Hernia: 0 in val; Edema: 1 in train`
UNDEFINED_TAG = "cxr.undefined"  # `Hernia: no validation positives; Mass: no test positives`


# ---------------------------------------------------------------- run tags
GIT_COMMIT_TAG = "mlflow.source.git.commit"
ERROR_TAG = "cxr.error"  # a failed run's exception, masked and cut
KILLED_TAG = "cxr.killed_reason"  # why a run ended KILLED: Ctrl-C, or its process found dead
HOST_TAG, PID_TAG, SEEN_TAG = "cxr.host", "cxr.pid", "cxr.last_seen"  # who owns a running run, last beat
STUDY_TAG = "optuna.study_name"  # on a sweep trial's run, its parent and its registered versions
TRIAL_TAG = "optuna.trial_number"
STATE_TAG = "optuna.state"  # a trial's run: COMPLETE, PRUNED or FAIL
MODEL_SKIPPED_TAG = "cxr.model_skipped"  # why a sweep trial's run has no logged model
REEVALUATED_TAG = "cxr.reevaluated_with"  # the model URI `cxr.evaluate` scored again
TTA_TAG = "cxr.tta"  # the test-time views a run's evaluation scored over: `5 views (shift 0.03)`
REEVALUATED_TTA_TAG = "cxr.reevaluated_tta"  # the views `cxr.evaluate` scored over, when it did
MEMBERS_TAG = "cxr.members"  # an ensemble's run: its member versions ("3,1,4")
CV_FOLDS_TAG = "cxr.cv_folds"  # a cross-validated job's run: how many fold runs are its children
PARENT_RUN_TAG = "mlflow.parentRunId"  # a grid or sweep child's parent run
VALIDATION_TAG = "cxr.validation"  # a fold ensemble's run and version: out_of_fold (val/* are OOF scores)
OUT_OF_FOLD = "out_of_fold"

# ---------------------------------------------------------------- a sweep's parent run
SWEEP_TAG = "cxr.sweep"  # "true" on every parent run
SWEEP_KIND_TAG = "cxr.sweep.kind"  # "grid" for a Hydra basic-sweeper multirun
STORAGE_TAG = "optuna.storage"  # masked
OVERRIDES_TAG = "hydra.overrides"  # masked
NOTE_TAG = "cxr.note"
BEST_TRIAL_TAG, BEST_RUN_TAG, BEST_PARAM_PREFIX = "best_trial", "best_run_id", "best."
SUMMARY_ARTIFACT = "summary.csv"
SELECTION_TAG = "cxr.selection_within_noise"  # true when the best and runner-up validation intervals overlap

# ---------------------------------------------------------------- registered model versions
CHAMPION = "champion"  # the alias promotion moves (`models:/NAME@champion`)
MODEL_KIND_TAG = "cxr.kind"  # single | ensemble (also on an ensemble's run)
SPLIT_DIGEST_TAG = "split_digest"  # the fingerprint of who is in which split (also on runs' dataset inputs)
IMAGE_SIZE_TAG = "image_size"  # each member's input side, comma-separated
TTA_VERSION_TAG = "tta"  # the test-time views the model scores over (its spec's): `1 view (off)`
THRESHOLDS_TAG = "thresholds"  # {finding: threshold chosen on validation}, JSON
RUN_TAG = "run_id"
EXPERIMENT_TAG = "experiment"
MEMBERS_VERSION_TAG = "members"  # an ensemble's version: NAME/VERSION of each member
RUN_NAME_TAG = "run_name"  # also the version's description, so the UI's version list says what each is


def alias_record_tags(alias: str) -> tuple[str, str, str]:
    """What a version records when it takes an alias: the version it replaced, why, since when."""
    return f"cxr.{alias}.replaced", f"cxr.{alias}.reason", f"cxr.{alias}.since"


# ---------------------------------------------------------------- artifacts of a run
CONFIG_ARTIFACT = "config.yaml"  # the resolved config, passwords masked
SPLIT_ARTIFACT = "split.csv"  # who is in which split
HISTORY_ARTIFACT = "history.csv"  # Keras's per-epoch logs
THRESHOLDS_ARTIFACT = "evaluation/thresholds.json"


def per_disease_table(split: str, what: str = "per_disease") -> str:
    """`evaluation/<split>_per_disease.csv` (an ensemble's members: `what="members_per_disease"`)."""
    return f"evaluation/{split}_{what}.csv"


# ---------------------------------------------------------------- localisation against expert boxes
LOCALISATION = "localisation"  # a test-split measure: reported, never optimised or ranked by
LOCALISATION_METHOD_TAG = "cxr.localisation.method"  # the heatmap method the run's scores used
LOCALISATION_GALLERY = "localisation/gallery"  # <Finding>_best.png, <Finding>_worst.png
LOCALISATION_SHOWN = "pointing_mean"  # the pooled measure a version carries as a tag (shown, not ranked by)


def localisation(split: str, measure: str, finding: str | None = None) -> str:
    """`test/localisation/Mass/pointing` (one finding) or `test/localisation/pointing_mean` (pooled)."""
    return SEP.join([split, LOCALISATION, *([finding] if finding else []), measure])


def parse_localisation(split: str, name: str) -> tuple[str | None, str] | None:
    """(finding, or None when pooled; measure) of a `localisation` name of `split`, else None:
    `test/localisation/Mass/pointing_ci_low` -> ("Mass", "pointing_ci_low"); `test/localisation/pointing_mean`
    -> (None, "pointing"), `.../pointing_mean_ci_low` -> (None, "pointing_ci_low")."""
    parts = name.split(SEP)
    if len(parts) not in (3, 4) or parts[:2] != [split, LOCALISATION]:
        return None
    if len(parts) == 4:
        return parts[2], parts[3]
    for suffix in ("", CI_LOW, CI_HIGH):
        if parts[2].endswith(f"_mean{suffix}"):
            return None, parts[2][: -len(f"_mean{suffix}")] + suffix
    return None


def localisation_table(split: str, what: str = "localisation") -> str:
    """`evaluation/test_localisation.csv` per finding; `what="localisation_images"`: per image."""
    return f"evaluation/{split}_{what}.csv"


def check_not_localisation(name: str, key: str) -> None:
    """Localisation is scored on the test split's boxed images: it is reported, never chosen by."""
    if f"{SEP}{LOCALISATION}{SEP}" in f"{SEP}{name}":
        raise CxrError(
            f"{key}={name!r}: localisation is a test-split measure (NIH's boxes are on test images), so "
            "it is reported next to the AUCs, not optimised or ranked by; choose a validation metric "
            f"({RANK}, val/auprc_mean, ...) and compare localisation in the runs' metrics"
        )


# ---------------------------------------------------------------- the evidence (issue 21): calibration,
# operating points at a target, subgroups, the report card, promotion gates
CALIBRATION = ("ece", "brier")  # per finding `test/ece/Hernia`; pooled over findings `test/ece`
SUBGROUP_GAP = "subgroup_gap"
ECE_UNCALIBRATED = "ece_uncalibrated"  # `test/ece_uncalibrated`: the pooled ECE before a fitted calibrator
SUBGROUP_EXCLUDED = "subgroup_excluded"  # images left out of an attribute as data errors (ages above 100)
VAL_PREDICTIONS_ARTIFACT = "evaluation/val_predictions.csv"  # what promotion's paired bootstrap reads
REPORT_HTML_ARTIFACT = "report/report.html"
REPORT_JSON_ARTIFACT = "report/report.json"
REPORT_TAG = "cxr.report"  # on a registered version: where its report card is
GATE_TAG_PREFIX = "cxr.gate."  # on a candidate version: one pass/fail line per promotion gate


def target_metric(split: str, point: str, measure: str, disease: str) -> str:
    """`test/spec90/sensitivity/Hernia`: a measure achieved at an operating point chosen on validation."""
    return f"{split}{SEP}{point}{SEP}{measure}{SEP}{disease}"


def target_threshold(point: str, disease: str) -> str:
    """`threshold/spec90/Hernia`: the validation threshold of an operating point."""
    return f"threshold{SEP}{point}{SEP}{disease}"


def subgroup_gap(split: str, attribute: str, disease: str) -> str:
    """`test/subgroup_gap/view/Hernia` (`.../mean` for the mean AUC): the largest AUC gap between groups."""
    return f"{split}{SEP}{SUBGROUP_GAP}{SEP}{attribute}{SEP}{disease}"


def subgroup_excluded(split: str, attribute: str) -> str:
    return f"{split}{SEP}{SUBGROUP_EXCLUDED}{SEP}{attribute}"


def evidence_table(split: str, what: str) -> str:
    """`evaluation/test_operating_points.csv`, `evaluation/test_subgroups.csv`, `..._subgroup_gaps.csv`."""
    return f"evaluation/{split}_{what}.csv"


def overridden_gates_tag(alias: str) -> str:
    """`cxr.champion.overridden_gates`: the gates a forced promotion went past."""
    return f"cxr.{alias}.overridden_gates"
