"""The dataset file: one Parquet table per dataset, read from a local path or any pyarrow URI.

Parquet format, one row per sample: id (string), image (PNG bytes, RGB),
mask (PNG bytes, null where the sample has none), label (int16, null where none), source
(string). Masks keep two levels where the source has them: 255 = nucleus,
128 = cytoplasm, 0 = background; single-level masks are 255 = cell. Dataset
metadata (name, classes, mask levels and encoding, provenance, fingerprint) is
JSON under the file's key-value metadata key b"ncawss" (format 3: written after the rows, when
the fingerprint is known; format 2 files, which also held it in the Arrow schema, read the same).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .dataset import DataError, Dataset
from .files import AtomicFile, decode_png, encode_png

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
METADATA_KEY = b"ncawss"
MASK_ENCODINGS = {1: "PNG: 255 = white blood cell, 0 = background",
                  2: "PNG: 255 = nucleus, 128 = cytoplasm, 0 = background"}


ROWS_PER_GROUP = 256  # samples per Parquet row group: what a streaming reader or writer holds at once

SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("mask", pa.binary()), ("label", pa.int16()),
                    ("source", pa.string())])


class DatasetWriter:
    """Writes a dataset file chunk by chunk, one row group each, computing the fingerprint as it
    goes: memory holds one chunk, not the dataset. The file appears, whole, at `close()`; a
    failure before it leaves no file and keeps any earlier one.

        with DatasetWriter(path, name="mine", classes=[...], mask_levels=1) as writer:
            for chunk in chunks:          # Datasets
                writer.write(chunk)
            writer.provenance.update(...)  # anything learnt while converting
    """

    def __init__(self, destination: str | os.PathLike, *, name: str, classes: list[str], mask_levels: int | None,
                 provenance: dict | None = None):
        self.destination = Path(destination)
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self.name, self.classes, self.mask_levels = name, list(classes), mask_levels
        self.provenance = dict(provenance or {})
        self.digest, self.rows = hashlib.sha256(), 0
        self.file = AtomicFile(self.destination)
        self.writer = pq.ParquetWriter(self.file.path, SCHEMA)

    def write(self, chunk: Dataset) -> None:
        if (chunk.masks is not None) != (self.mask_levels is not None):
            raise DataError(f"{self.name}: a chunk {'without' if chunk.masks is None else 'with'} masks in a dataset "
                            f"{'with' if self.mask_levels else 'without'} them")
        chunk.add_to_digest(self.digest)
        levels = chunk.mask_levels() if chunk.masks is not None else [None] * len(chunk)
        labels = [None] * len(chunk) if chunk.labels is None else [int(v) if v >= 0 else None for v in chunk.labels]
        self.writer.write_table(pa.table({
            "id": chunk.ids, "image": [encode_png(im) for im in chunk.images],
            "mask": [None if m is None else encode_png(m) for m in levels], "label": labels,
            "source": chunk.sources or [""] * len(chunk)}, schema=SCHEMA))
        self.rows += len(chunk)

    def close(self) -> Path:
        if self.rows == 0:
            self.abort()
            raise DataError(f"{self.name}: the dataset is empty, nothing to write")
        meta = {"format_version": FORMAT_VERSION, "name": self.name, "classes": self.classes,
                "mask_levels": self.mask_levels, "mask_encoding": MASK_ENCODINGS.get(self.mask_levels),
                "provenance": self.provenance, "fingerprint": self.digest.hexdigest()}
        self.writer.add_key_value_metadata({METADATA_KEY: json.dumps(meta).encode()})
        self.writer.close()
        self.file.commit()
        log.info("wrote %d samples of %s to %s", self.rows, self.name, self.destination)
        return self.destination

    def abort(self) -> None:
        self.writer.close()
        self.file.discard()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_chunks(chunks: Iterable[Dataset], destination: str | os.PathLike) -> Path:
    """Write the chunks of one dataset (the first names it and gives its classes, mask levels and
    provenance) as one file, a row group each: memory holds one chunk."""
    chunks = iter(chunks)
    first = next(chunks, None)
    if first is None:
        raise DataError(f"{destination}: no samples, nothing to write")
    levels = None if first.masks is None else 1 if first.nucleus is None else 2
    with DatasetWriter(destination, name=first.name, classes=first.classes, mask_levels=levels,
                       provenance=first.provenance) as writer:
        for chunk in itertools.chain([first], chunks):
            writer.write(chunk)
    return writer.destination


def write_dataset(dataset: Dataset, destination: str | os.PathLike) -> Path:
    """Write dataset as one Parquet file (row groups of ROWS_PER_GROUP samples); the file appears whole."""
    if len(dataset) == 0:
        raise DataError(f"{dataset.name}: the dataset is empty, nothing to write")
    return write_chunks((dataset.subset(range(start, min(start + ROWS_PER_GROUP, len(dataset))))
                         for start in range(0, len(dataset), ROWS_PER_GROUP)), destination)


def open_dataset(path_or_uri: str | os.PathLike) -> tuple[pq.ParquetFile, dict]:
    """The dataset file, opened, and its metadata; DataError names the file where it is not one."""
    location = str(path_or_uri)
    try:
        if "://" in location:
            filesystem, path = pafs.FileSystem.from_uri(location)
            parquet = pq.ParquetFile(filesystem.open_input_file(path), pre_buffer=False)
        else:
            parquet = pq.ParquetFile(location, pre_buffer=False)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{location}: cannot read dataset ({exc})") from None
    raw_meta = (parquet.metadata.metadata or {}).get(METADATA_KEY)
    if raw_meta is None:
        raise DataError(f"{location}: not an ncawss dataset (no {METADATA_KEY.decode()!r} key in its metadata)")
    return parquet, json.loads(raw_meta)


def chunk_from(columns: dict, meta: dict, labelled: bool) -> Dataset:
    """The Dataset of some rows (`columns`, as pyarrow's to_pydict gives them)."""
    levels = None if meta.get("mask_levels") is None else \
        [None if m is None else decode_png(m, "L") for m in columns["mask"]]
    return Dataset(
        images=[decode_png(b, "RGB") for b in columns["image"]],
        masks=None if levels is None else [None if m is None else m > 0 for m in levels],
        nucleus=[None if m is None else m == 255 for m in levels] if meta.get("mask_levels") == 2 else None,
        labels=np.array([-1 if v is None else v for v in columns["label"]], dtype=int) if labelled else None,
        classes=list(meta["classes"]), ids=list(columns["id"]), name=meta["name"],
        sources=list(columns["source"]), provenance=meta.get("provenance", {}))


def read_dataset(path_or_uri: str | os.PathLike) -> Dataset:
    """Read a dataset written by convert() from a local path or a pyarrow-supported URI. Decoded a
    row group at a time: the file's encoded bytes are never all in memory beside the images."""
    chunks = list(iter_dataset(path_or_uri))
    if not chunks:
        raise DataError(f"{path_or_uri}: the dataset file holds no samples")
    return Dataset.join(chunks)


def iter_dataset(path_or_uri: str | os.PathLike, rows: int = ROWS_PER_GROUP) -> Iterator[Dataset]:
    """A dataset file as Datasets of at most `rows` samples, in file order: memory holds one chunk.
    Their concatenation equals read_dataset's (the chunks' fingerprints chain to the file's)."""
    for chunk in iter_encoded(path_or_uri, rows):
        yield chunk.decode()


@dataclass(frozen=True)
class EncodedChunk:
    """Some rows of a dataset file as it stores them (PNG bytes): what a process holds to hand the
    rows on, a fraction of their decoded size. `decode()` gives their Dataset."""
    rows: pa.RecordBatch
    meta: dict
    labelled: bool
    file: str  # the file they come from, for messages

    def __len__(self) -> int:
        return self.rows.num_rows

    def decode(self) -> Dataset:
        try:
            return chunk_from(self.rows.to_pydict(), self.meta, self.labelled)
        except (OSError, pa.ArrowException) as exc:  # Pillow's error for bytes that are not a PNG is an OSError
            raise DataError(f"{self.file}: cannot read dataset ({exc})") from None


def iter_encoded(path_or_uri: str | os.PathLike, rows: int = ROWS_PER_GROUP) -> Iterator[EncodedChunk]:
    """A dataset file's rows as stored, at most `rows` at a time, in file order."""
    parquet, meta = open_dataset(path_or_uri)
    try:
        labelled = parquet.read(columns=["label"]).column("label").null_count < parquet.metadata.num_rows
        for batch in parquet.iter_batches(batch_size=rows):
            yield EncodedChunk(batch, meta, labelled, str(path_or_uri))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path_or_uri}: cannot read dataset ({exc})") from None


def dataset_metadata(path_or_uri: str | os.PathLike) -> dict:
    """The metadata of a dataset file (name, classes, fingerprint, ...) and its rows, reading no rows."""
    parquet, meta = open_dataset(path_or_uri)
    return {**meta, "rows": parquet.metadata.num_rows}


def read_index(path_or_uri: str | os.PathLike) -> tuple[list[str], np.ndarray | None]:
    """A dataset file's ids and labels (-1 where unlabelled; None where it has none), reading no pixels."""
    parquet, _ = open_dataset(path_or_uri)
    try:
        table = parquet.read(columns=["id", "label"])
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path_or_uri}: cannot read dataset ({exc})") from None
    labels = table.column("label")
    return table.column("id").to_pylist(), None if labels.null_count == len(labels) else \
        np.array([-1 if v is None else v for v in labels.to_pylist()], dtype=int)


def select_rows(chunks: Iterable[Dataset], rows: Iterable[int]) -> Iterator[Dataset]:
    """Of a dataset given as chunks in order, the samples `rows` (indices into the whole), in
    ascending order, chunk by chunk (chunks holding none of them are skipped)."""
    wanted, seen = np.unique(np.fromiter(rows, dtype=np.int64)), 0
    for chunk in chunks:
        if not len(wanted) or seen > wanted[-1]:
            return
        mine = wanted[(wanted >= seen) & (wanted < seen + len(chunk))] - seen
        seen += len(chunk)
        if len(mine):
            yield chunk if len(mine) == len(chunk) else chunk.subset(mine)
