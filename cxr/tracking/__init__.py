"""MLflow: runs (one context manager per run, orphaned runs ended), registered model versions (tags,
ranking by validation AUC, aliases), run names, dataset inputs, and `names`, every metric, tag,
alias and artifact name cxr writes or reads.

It imports `cxr.data` and `cxr.runtime`; never models, training or anything above them.
"""
