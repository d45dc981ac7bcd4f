"""Numbers from predictions: per-disease AUC/AUPRC with patient-bootstrap intervals, thresholds chosen
on validation, operating points, plots, the report an evaluation writes to its MLflow run; and the
two steps built on them, re-evaluating a logged model and the top-K ensemble.

It imports serving (predictions), training, models, tracking, data and runtime; never config or a
command (the caller checks the `evaluation` values first).
"""
