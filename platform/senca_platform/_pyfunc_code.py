"""The model's code as MLflow logs it ("models from code": the class is imported, nothing is pickled).

Loading the registered model runs this file: it needs ``senca-platform`` installed (the model's requirements say so).
"""

import mlflow.models

from senca_platform.tracking_model import SencaEmbedder

mlflow.models.set_model(SencaEmbedder())
