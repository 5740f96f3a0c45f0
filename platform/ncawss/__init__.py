"""ncawss: weakly supervised white-blood-cell segmentation with neural cellular automata (NCA-WSS)."""
from importlib.metadata import version as _version

from .baselines import train_cnn
from .config import ConfigError, Readout, TrainConfig, load_config
from .data import DataError, Dataset, holdout_split, read_dataset, stratified_folds, write_dataset
from .layouts import convert
from .nca import NCAClassifier
from .predict import Ensemble, Prediction, Predictor, predict
from .segment import intensity_baseline, iou, pca_otsu
from .synthetic import make_synthetic
from .evaluation import FoldModel, score_dataset
from .train import CVResult, FoldHooks, FoldResult, FoldsHooks, cross_validate, train_fold, train_folds

__all__ = [
    "ConfigError", "CVResult", "DataError", "Dataset", "Ensemble", "FoldHooks", "FoldModel", "FoldResult", "FoldsHooks",
    "NCAClassifier", "Prediction", "Predictor", "Readout", "TrainConfig", "convert", "cross_validate", "holdout_split", "intensity_baseline", "iou",
    "load_config", "make_synthetic", "pca_otsu", "predict", "read_dataset", "score_dataset", "stratified_folds",
    "train_cnn", "train_fold", "train_folds", "write_dataset",
]

__version__ = _version("ncawss")
