"""ncawss: weakly supervised white-blood-cell segmentation with neural cellular automata (NCA-WSS).

Layers, each importing only those before it: `data` (datasets, layouts, splits), `method` (the
NCA, PCA-Otsu, baselines, training, scoring, prediction; no Ray, no MLflow), `tracking`
(MLflow), `sweep` (Ray Tune and Ray Train). This top level is the method's public API; its
names are imported on first use, so that a process that needs one submodule (a sweep's Ray Train
controller unpickles one class of `sweep`) does not import them all.
"""
from __future__ import annotations

import importlib
from importlib.metadata import version as _version
from typing import TYPE_CHECKING

_WHERE = {
    ".data": ["DataError", "Dataset", "convert", "holdout_split", "make_synthetic", "read_dataset",
              "stratified_folds", "write_dataset"],
    ".method.config": ["ConfigError", "Readout", "TrainConfig", "load_config"],
    ".method.nca.model": ["NCAClassifier"],
    ".method.readout.pca_otsu": ["pca_otsu"],
    ".method.readout.thresholds": ["colour_baseline", "intensity_baseline"],
    ".method.training.cnn": ["train_cnn"],
    ".method.train": ["CVResult", "FoldResult", "TrainingHooks", "cross_validate", "train_fold",
                               "train_folds"],
    ".method.scoring.metrics": ["iou"],
    ".method.scoring.scores": ["PerReadout", "Scores"],
    ".method.scoring.folds": ["FoldModel", "FoldRecord", "read_fold_records"],
    ".method.scoring.ensemble": ["Ensemble", "score_dataset"],
    ".method.inference.predict": ["Prediction", "Predictor", "predict"],
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)
__version__ = _version("ncawss")


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'ncawss' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what type checkers and editors see; tests/test_api.py keeps it equal to _WHERE
    from .data import (  # noqa: F401
        DataError,
        Dataset,
        convert,
        holdout_split,
        make_synthetic,
        read_dataset,
        stratified_folds,
        write_dataset,
    )
    from .method.config import ConfigError, Readout, TrainConfig, load_config  # noqa: F401
    from .method.inference.predict import Prediction, Predictor, predict  # noqa: F401
    from .method.nca.model import NCAClassifier  # noqa: F401
    from .method.readout.pca_otsu import pca_otsu  # noqa: F401
    from .method.readout.thresholds import colour_baseline, intensity_baseline  # noqa: F401
    from .method.scoring.ensemble import Ensemble, score_dataset  # noqa: F401
    from .method.scoring.folds import FoldModel, FoldRecord, read_fold_records  # noqa: F401
    from .method.scoring.metrics import iou  # noqa: F401
    from .method.scoring.scores import PerReadout, Scores  # noqa: F401
    from .method.train import (  # noqa: F401
        CVResult,
        FoldResult,
        TrainingHooks,
        cross_validate,
        train_fold,
        train_folds,
    )
    from .method.training.cnn import train_cnn  # noqa: F401
