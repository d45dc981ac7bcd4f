"""The code MLflow stores with every cxr model ("models from code"), instead of a cloudpickled object.

Loading a pickled Python model runs whatever the pickle says, as Keras's safe mode refuses to do for
Lambda layers; loading this file runs these lines, in any process where cxr is installed. The weights,
thresholds and pathologies are the model's artifacts, read by `CxrModel.load_context`.
"""

import mlflow

from cxr.serving.pyfunc import CxrModel

mlflow.models.set_model(CxrModel())
