"""A dataset as the jobs read it: a file read a chunk at a time, or a Dataset already in memory;
its name, classes, fingerprint, ids and labels known without decoding a pixel."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .parquet import dataset_metadata, iter_dataset, read_index, select_rows


@dataclass(frozen=True)
class DataFile:
    name: str
    classes: list[str]
    fingerprint: str                     # of every sample in the file
    uri: str
    ids: list[str]
    labels: np.ndarray | None            # -1 where unlabelled; None where the file has no labels
    chunks: Callable[[], Iterable[Dataset]]  # the samples in order, a chunk at a time, read anew each call

    @classmethod
    def open(cls, path: str | os.PathLike) -> DataFile:
        """A dataset file (or pyarrow URI); DataError names it where it is not one."""
        meta = dataset_metadata(path)
        ids, labels = read_index(path)
        location = str(path)
        uri = location if "://" in location else Path(location).resolve().as_uri()
        return cls(meta["name"], list(meta["classes"]), meta["fingerprint"], uri, ids, labels,
                   lambda: iter_dataset(path))

    @classmethod
    def of(cls, dataset: Dataset, uri: str) -> DataFile:
        """A dataset in memory (built-in synthetic data), as if it were a file at `uri`."""
        return cls(dataset.name, list(dataset.classes), dataset.fingerprint, uri, list(dataset.ids), dataset.labels,
                   lambda: [dataset])

    def rows(self, indices: Iterable[int]) -> Iterator[Dataset]:
        """The samples `indices`, in ascending order, a chunk at a time."""
        return select_rows(self.chunks(), indices)
