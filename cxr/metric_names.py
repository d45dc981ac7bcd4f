"""Names of what a run logs, in one place: the per-epoch metrics (which config validation checks monitor
names against, without importing Keras) and the tags and artifacts of its data diagnostics."""

from __future__ import annotations

AUC = "auc"  # mean over findings with both classes present (cxr.metrics.PresentLabelsAUC)
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


SPLIT_TITLES = {"train": "training", "val": "validation", "test": "test"}

# data diagnostics (cxr.counts): artifact and run tags
COUNTS_ARTIFACT = "data/counts.csv"
FEW_POSITIVES_TAG = "cxr.few_positives"  # `Hernia: 0 in val; Edema: 1 in train`
UNDEFINED_TAG = "cxr.undefined"  # `Hernia: no validation positives; Mass: no test positives`

# a sweep's parent run: true when the best and runner-up validation intervals overlap
SELECTION_TAG = "cxr.selection_within_noise"
