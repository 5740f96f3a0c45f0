"""ncawss: weakly supervised white-blood-cell segmentation with neural cellular automata (NCA-WSS).

Layers, each importing only those before it: `data` (datasets, layouts, splits), `method` (the
NCA, PCA-Otsu, baselines, training, evaluation, prediction; no Ray, no MLflow), `tracking`
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
    ".method.baselines": ["train_cnn"],
    ".method.config": ["ConfigError", "Readout", "TrainConfig", "load_config"],
    ".method.ensemble": ["Ensemble", "score_dataset"],
    ".method.folds": ["FoldModel", "FoldRecord", "read_fold_records"],
    ".method.nca": ["NCAClassifier"],
    ".method.predict": ["Prediction", "Predictor", "predict"],
    ".method.scores": ["Scores"],
    ".method.segment": ["iou", "pca_otsu"],
    ".method.thresholds": ["colour_baseline", "intensity_baseline"],
    ".method.train": ["CVResult", "FoldHooks", "FoldResult", "FoldsHooks", "cross_validate", "train_fold",
                      "train_folds"],
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


if TYPE_CHECKING:  # what type checkers and editors see
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
    from .method.baselines import train_cnn  # noqa: F401
    from .method.config import ConfigError, Readout, TrainConfig, load_config  # noqa: F401
    from .method.ensemble import Ensemble, score_dataset  # noqa: F401
    from .method.folds import FoldModel, FoldRecord, read_fold_records  # noqa: F401
    from .method.nca import NCAClassifier  # noqa: F401
    from .method.predict import Prediction, Predictor, predict  # noqa: F401
    from .method.scores import Scores  # noqa: F401
    from .method.segment import iou, pca_otsu  # noqa: F401
    from .method.thresholds import colour_baseline, intensity_baseline  # noqa: F401
    from .method.train import CVResult, FoldHooks, FoldResult, FoldsHooks, cross_validate, train_fold, train_folds  # noqa: F401
