"""ncawss: weakly supervised white-blood-cell segmentation with neural cellular automata (NCA-WSS)."""
from .baselines import train_cnn
from .config import ConfigError, Readout, TrainConfig, load_config
from .data import DataError, Dataset, holdout_split, read_dataset, stratified_folds, write_dataset
from .layouts import convert
from .nca import NCAClassifier
from .segment import intensity_baseline, iou, pca_otsu
from .synthetic import make_synthetic
from .evaluation import FoldModel, score_dataset
from .train import CVResult, FoldHooks, FoldResult, FoldsHooks, cross_validate, train_fold, train_folds

__all__ = [
    "ConfigError", "CVResult", "DataError", "Dataset", "FoldHooks", "FoldModel", "FoldResult", "FoldsHooks",
    "NCAClassifier", "Readout", "TrainConfig", "convert", "cross_validate", "holdout_split", "intensity_baseline", "iou",
    "load_config", "make_synthetic", "pca_otsu", "read_dataset", "score_dataset", "stratified_folds",
    "train_cnn", "train_fold", "train_folds", "write_dataset",
]
