"""A trained configuration's fold ensemble as an MLflow pyfunc model.

In: a DataFrame with a column `image` of encoded image bytes (PNG, BMP, TIFF, JPEG).
Out: one row per image: `mask` (PNG bytes, 0/255, the image's size), `label` (class
name), `probability`, `quality` (ncawss.predict). The model carries its fold weights,
configuration and normalisation; it needs the installed ncawss package and nothing
else. `mlflow.pyfunc.load_model(uri, model_config={"device": "cuda"})` runs it on a GPU.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from ..data import DataError, encode_png
from ..method.ensemble import Ensemble
from ..method.folds import fold_weight_files
from ..method.predict import QUALITY_RUNS, decode_image, predict

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


def log_registered_model(client, run_id: str, records_dir: Path, example: bytes, name: str) -> int:
    """Log the ensemble under the run's artifacts (`model/`) and register it as a new version of
    `name`; returns the version number."""
    with tempfile.TemporaryDirectory() as tmp:
        local = save_model(records_dir, example, Path(tmp) / MODEL_PATH)
        client.log_artifacts(run_id, str(local), artifact_path=MODEL_PATH)
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description="NCA-WSS fold ensemble of a sweep's best configuration")
    version = client.create_model_version(name, source=f"runs:/{run_id}/{MODEL_PATH}", run_id=run_id)
    return int(version.version)
