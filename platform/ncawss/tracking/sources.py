"""Where a trained model comes from, for the jobs that use one: a folder of fold weights (a
sweep's output directory, its best_model/, or cross_validate.py --save), an MLflow trial run
id (its logged fold weights), or an MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS,
models:/<logged model id>, runs:/ID/model)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from ..data import DataError
from ..method.scoring.folds import FOLD_WEIGHTS, FoldRecord, read_fold_records
from . import TrackingError

MODEL_URI_SCHEMES = ("models:/", "runs:/")


def load_records(spec: str, uri: str | None, scratch: str) -> tuple[list[FoldRecord], str | None]:
    """The fold weight records MODEL `spec` names, and the tracking store it came from.
    `uri`: the MLflow tracking URI for run ids and model URIs (a sweep folder knows its own)."""
    folder = Path(spec)
    if folder.is_dir():
        state = folder / "sweep.yaml"
        uri = uri or (yaml.safe_load(state.read_text()).get("mlflow_uri") if state.exists() else None)
        folder = folder / "best_model" if (folder / "best_model").is_dir() else folder
    elif not uri:
        raise DataError(f"{spec}: not a directory; as an MLflow run id or model URI it needs --mlflow-uri "
                        "(or $MLFLOW_TRACKING_URI)")
    elif spec.startswith(MODEL_URI_SCHEMES):
        folder = download_model(spec, uri, tempfile.mkdtemp(dir=scratch))
    else:
        from .tracker import SweepTracker  # MLflow, imported only where a model comes from it

        folder = SweepTracker(uri, "unused").download_fold_files(spec, tempfile.mkdtemp(dir=scratch))
    records = read_fold_records(folder)
    if not records:
        raise DataError(f"{spec}: no {FOLD_WEIGHTS.format('*')} files "
                        "(not a sweep output, fold folder, trial run or model?)")
    return records, uri


def download_model(model_uri: str, uri: str, destination: str) -> Path:
    """A models:/NAME/VERSION, models:/NAME@ALIAS, models:/<logged model id> or runs:/ID/PATH
    model's files, from the store at `uri` (its registry too)."""
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    from .mlflow_model import global_tracking_uri

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        location = model_uri
        name = model_uri.removeprefix("models:/")
        if model_uri.startswith("models:/") and ("/" in name or "@" in name):  # a registered version
            if "@" in name:
                name, alias = name.split("@", 1)
                number = client.get_model_version_by_alias(name, alias).version
            else:
                name, _, number = name.partition("/")
            location = client.get_model_version_download_uri(name, number)
        with global_tracking_uri(uri):  # runs:/ and models:/<id> resolve through MLflow's default client
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=destination,
                                                            tracking_uri=uri))
    except Exception as exc:  # unknown model or version, unreachable store
        raise TrackingError(f"{model_uri} in {uri}: cannot fetch the model "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
