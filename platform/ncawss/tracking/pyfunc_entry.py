"""What MLflow runs to rebuild the pyfunc model when it loads it (MLflow's "models from code"):
the model class comes from the installed package, nothing is unpickled."""
import mlflow.models

from ncawss.tracking.mlflow_model import EnsembleModel

mlflow.models.set_model(EnsembleModel())
