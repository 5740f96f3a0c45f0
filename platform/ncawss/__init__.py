"""ncawss: weakly supervised white-blood-cell segmentation with neural cellular automata (NCA-WSS).

Layers, each importing only those before it: `data` (datasets, layouts, splits), `method` (the
NCA, PCA-Otsu, baselines, training, evaluation, prediction; no Ray, no MLflow), `tracking`
(MLflow), `sweep` (Ray Tune and Ray Train). This top level is the method's public API.
"""
from importlib.metadata import version as _version

from .data import (
                   DataError,
                   Dataset,
                   convert,
                   holdout_split,
                   make_synthetic,
                   read_dataset,
                   stratified_folds,
                   write_dataset,
)
from .method.baselines import train_cnn
from .method.config import ConfigError, Readout, TrainConfig, load_config
from .method.ensemble import Ensemble, score_dataset
from .method.folds import FoldModel, FoldRecord, read_fold_records
from .method.nca import NCAClassifier
from .method.predict import Prediction, Predictor, predict
from .method.scores import Scores
from .method.segment import iou, pca_otsu
from .method.thresholds import colour_baseline, intensity_baseline
from .method.train import CVResult, FoldHooks, FoldResult, FoldsHooks, cross_validate, train_fold, train_folds

__all__ = [
    "ConfigError", "CVResult", "DataError", "Dataset", "Ensemble", "FoldHooks", "FoldModel", "FoldRecord",
    "FoldResult", "FoldsHooks", "NCAClassifier", "Prediction", "Predictor", "Readout", "Scores", "TrainConfig",
    "colour_baseline", "convert", "cross_validate", "holdout_split", "intensity_baseline", "iou", "load_config",
    "make_synthetic", "pca_otsu", "predict", "read_dataset", "read_fold_records", "score_dataset", "stratified_folds",
    "train_cnn", "train_fold", "train_folds", "write_dataset",
]

__version__ = _version("ncawss")
