"""The tracking layer: MLflow behind one small class (tracker), a fold ensemble as an MLflow
pyfunc model (mlflow_model), and where a job's trained model comes from (sources)."""
