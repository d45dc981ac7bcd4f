"""Patient-level bootstrap of per-disease AUC/AUPRC and micro AUC at the size of NIH's official test list.

Compares cxr's weighted, sort-once evaluation with the obvious loop over scikit-learn calls
(timed on a subset of resamples and scaled: the loop is linear in resamples).

    python bench/bootstrap.py [--images 25596] [--patients 2797] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr.data.labels import NIH_PATHOLOGIES, NIH_PREVALENCE
from cxr.evaluation.scoring import evaluate_split, patient_bootstrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=25_596)
    parser.add_argument("--patients", type=int, default=2_797)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--sklearn-resamples", type=int, default=10)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    prevalence = np.asarray(list(NIH_PREVALENCE.values()))
    y = (rng.random((args.images, len(prevalence))) < prevalence).astype(float)
    s = y * 0.8 + rng.normal(size=y.shape)
    patients = np.sort(rng.integers(0, args.patients, args.images))
    print(f"{platform.processor() or platform.machine()}, {args.images} images, {args.patients} patients")

    start = time.perf_counter()
    report = evaluate_split(y, s, patients, NIH_PATHOLOGIES, args.resamples, 0.95, 0)
    ours = time.perf_counter() - start
    print(f"cxr evaluate_split, {args.resamples} resamples: {ours:.1f} s")
    print(
        f"  mean AUC {report.summary['auc_mean']:.4f} "
        f"[{report.summary['auc_mean_ci_low']:.4f}, {report.summary['auc_mean_ci_high']:.4f}]"
    )

    weights, owner = patient_bootstrap(patients, args.sklearn_resamples, 0)
    start = time.perf_counter()
    for r in range(args.sklearn_resamples):
        w = weights[owner, r]
        for k in range(y.shape[1]):
            roc_auc_score(y[:, k], s[:, k], sample_weight=w)
            average_precision_score(y[:, k], s[:, k], sample_weight=w)
        roc_auc_score(y.ravel(), s.ravel(), sample_weight=np.repeat(w, y.shape[1]))
    loop = (time.perf_counter() - start) / args.sklearn_resamples * args.resamples
    print(f"scikit-learn loop, scaled to {args.resamples} resamples: {loop:.1f} s ({loop / ours:.1f}x cxr)")


if __name__ == "__main__":
    main()
