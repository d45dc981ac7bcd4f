"""The images and their labels: the NIH reader and the synthetic generator, the 14 findings' names,
patient-level splits, per-split counts, the uint8 image cache, the input pipeline and `load_prepared`,
the one way every command gets its data.

It imports only `cxr.runtime` (and config schemas as type hints); it knows nothing of models or MLflow.
"""
