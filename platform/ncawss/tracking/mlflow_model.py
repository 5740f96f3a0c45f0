"""A trained configuration's fold ensemble as an MLflow pyfunc model.

In: a DataFrame with a column `image` of encoded image bytes (PNG, BMP, TIFF, JPEG).
Out: one row per image: `mask` (PNG bytes, 0/255, the image's size), `label` (class
name), `probability`, `quality` (ncawss.predict). The model carries its fold weights,
configuration and normalisation; it needs the installed ncawss package and nothing
else. `mlflow.pyfunc.load_model(uri, model_config={"device": "cuda"})` runs it on a GPU.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from ..data import DataError, encode_png
from ..method.inference.predict import QUALITY_RUNS, decode_image, predict
from ..method.scoring.ensemble import Ensemble
from ..method.scoring.folds import fold_weight_files

MODEL_PATH = "model"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", "image")]),
    outputs=Schema([ColSpec("binary", "mask"), ColSpec("string", "label"), ColSpec("double", "probability"),
                    ColSpec("double", "quality")]))


class EnsembleModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        config = context.model_config or {}
        folder = context.artifacts["folds"]
        self.ensemble = Ensemble.load(folder)
        self.device = str(config.get("device", "cpu"))
        self.runs = int(config.get("runs", QUALITY_RUNS))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "image" not in model_input.columns:
            raise DataError(f"input needs a column 'image' of encoded image bytes; got {list(model_input.columns)}")
        images = [decode_image(bytes(data), f"row {i}", self.ensemble.min_side)[0]
                  for i, data in enumerate(model_input["image"])]
        predictions = predict(self.ensemble, images, self.device, self.runs)
        return pd.DataFrame({
            "mask": [encode_png(p.mask.astype(np.uint8) * 255) for p in predictions],
            "label": [self.ensemble.classes[p.label] for p in predictions],
            "probability": [p.probability for p in predictions],
            "quality": [p.quality for p in predictions]})


def save_model(records_dir: Path, example: bytes, destination: Path) -> Path:
    """The pyfunc model of the fold weights in `records_dir`, written to `destination`, with its
    signature and a one-image input example."""
    import shutil

    import ncawss

    folds = destination.parent / "folds"  # the weights only: no galleries or data beside them
    folds.mkdir(parents=True)
    for path in fold_weight_files(records_dir):
        shutil.copy(path, folds / path.name)
    mlflow.pyfunc.save_model(
        str(destination), python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={"folds": str(folds)},
        signature=SIGNATURE, input_example=pd.DataFrame({"image": [example]}),
        pip_requirements=[f"ncawss=={ncawss.__version__}", f"torch=={torch.__version__.split('+')[0]}"],
        model_config={"device": "cpu", "runs": QUALITY_RUNS})
    return destination


@dataclass(frozen=True)
class RegisteredModel:
    """A fold ensemble logged as an MLflow 3 LoggedModel and registered as a version of `name`."""
    model_id: str                        # the LoggedModel (models:/<model_id>)
    name: str
    version: int

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@contextlib.contextmanager
def global_tracking_uri(uri: str):
    """MLflow's SQL registry resolves a version's models:/<model id> source with a default
    MlflowClient(), that is the global tracking URI: point it at this store for the call."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets it


def log_registered_model(client, run_id: str, records_dir: Path, example: bytes, name: str,
                         params: dict[str, str]) -> RegisteredModel:
    """What MLflow 3's log_model(name="model", registered_model_name=name) does, with this client:
    the ensemble as a LoggedModel of the run's experiment (its files in the model's own artifact
    location, `params` on it), the run's output, registered as a new version of `name` whose
    source is the LoggedModel."""
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=MODEL_PATH, source_run_id=run_id, params=params,
                                       model_type="ncawss-fold-ensemble")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = save_model(records_dir, example, Path(tmp) / MODEL_PATH)
            meta = Model.load(local)
            meta.model_id, meta.run_id = model.model_id, run_id  # as log_model writes them into MLmodel
            meta.save(local / "MLmodel")
            client.log_model_artifacts(model.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description="NCA-WSS fold ensemble of a sweep's best configuration")
    with global_tracking_uri(client.tracking_uri):
        version = client.create_model_version(name, source=f"models:/{model.model_id}", run_id=run_id,
                                              model_id=model.model_id)
    client.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
        [{"name": name, "version": str(version.version)}])})
    return RegisteredModel(model.model_id, name, int(version.version))
