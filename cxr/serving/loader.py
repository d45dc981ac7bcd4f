"""The module MLflow imports to load a cxr model (`loader_module` in its MLmodel file).

MLflow imports it from the installed cxr and calls `_load_pyfunc` with the model's data folder, so
loading runs only the installed code: the folder holds data (`cxr_model.json`, the members' Keras files
in safe mode, an index of them). `mlflow models serve` and `mlflow.pyfunc.load_model` get a
`ServedModel`; its `predict` is the CxrModel's, and `get_raw_model()` is the CxrModel itself.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.serving.limits import served_limits
from cxr.serving.pyfunc import TRUSTED_IMPORTS_KEY, CxrModel, from_data_folder


class ServedModel:
    """What MLflow's pyfunc wrapper calls: predict(frame, params)."""

    def __init__(self, model: CxrModel):
        self.model = model

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.model.predict(None, model_input, params)

    def get_raw_model(self) -> CxrModel:
        return self.model


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> ServedModel:
    served_limits()  # a bad CXR_* limit stops the server as it starts, not every request after
    trusted = (model_config or {}).get(TRUSTED_IMPORTS_KEY, [])
    return ServedModel(from_data_folder(Path(data_path), trusted))
