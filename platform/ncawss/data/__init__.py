"""The data layer: the Dataset, its Parquet file, raw layouts, synthetic crops, splits.
Pure numpy, pyarrow, Pillow, scikit-image and scikit-learn."""
from .dataset import TARGETS, DataError, Dataset
from .files import IMAGE_SUFFIXES, STRAY_SHARE, decode_png, encode_png, replace_atomically
from .layouts import convert
from .parquet import (
    DatasetWriter,
    EncodedChunk,
    dataset_metadata,
    iter_dataset,
    iter_encoded,
    read_dataset,
    read_index,
    select_rows,
    write_chunks,
    write_dataset,
)
from .source import DataFile
from .splits import fold_splits, holdout_split, stratified_folds
from .synthetic import make_synthetic

__all__ = ["IMAGE_SUFFIXES", "STRAY_SHARE", "TARGETS", "DataError", "DataFile", "Dataset", "DatasetWriter",
           "EncodedChunk", "convert", "dataset_metadata", "decode_png", "encode_png", "fold_splits", "holdout_split",
           "iter_dataset", "iter_encoded", "make_synthetic", "read_dataset", "read_index", "replace_atomically",
           "select_rows", "stratified_folds", "write_chunks", "write_dataset"]
