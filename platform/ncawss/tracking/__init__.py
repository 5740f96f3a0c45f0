"""The tracking layer: MLflow behind one small class (tracker), a fold ensemble as an MLflow
pyfunc model (mlflow_model), and where a job's trained model comes from (sources). TrackingError
lives here, so that a job can catch it without importing MLflow."""


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI."""
