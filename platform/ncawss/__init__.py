"""ncawss: weakly supervised white-blood-cell segmentation with neural cellular automata (NCA-WSS)."""
from .config import ConfigError, TrainConfig, load_config
from .data import DataError, Dataset, read_dataset, stratified_folds, write_dataset
from .layouts import convert
from .nca import NCAClassifier
from .segment import intensity_baseline, iou, pca_otsu
from .synthetic import make_synthetic
from .train import CVResult, FoldHooks, FoldResult, cross_validate, train_fold

__all__ = [
    "ConfigError", "CVResult", "DataError", "Dataset", "FoldHooks", "FoldResult", "NCAClassifier",
    "TrainConfig", "convert", "cross_validate", "intensity_baseline", "iou", "load_config",
    "make_synthetic", "pca_otsu", "read_dataset", "stratified_folds", "train_fold", "write_dataset",
]
