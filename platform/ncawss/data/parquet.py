"""The dataset file: one Parquet table per dataset, read from a local path or any pyarrow URI.

Parquet format, one row per sample: id (string), image (PNG bytes, RGB),
mask (PNG bytes, null where the sample has none), label (int16, null where none), source
(string). Masks keep two levels where the source has them: 255 = nucleus,
128 = cytoplasm, 0 = background; single-level masks are 255 = cell. Dataset
metadata (name, classes, mask levels and encoding, provenance, fingerprint) is
JSON under the schema metadata key b"ncawss".
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .dataset import DataError, Dataset
from .files import decode_png, encode_png, replace_atomically

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
METADATA_KEY = b"ncawss"
MASK_ENCODINGS = {1: "PNG: 255 = white blood cell, 0 = background",
                  2: "PNG: 255 = nucleus, 128 = cytoplasm, 0 = background"}


def write_dataset(dataset: Dataset, destination: str | os.PathLike) -> Path:
    """Write dataset as one Parquet file; a temporary file is renamed into place at the end."""
    if len(dataset) == 0:
        raise DataError(f"{dataset.name}: the dataset is empty, nothing to write")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION, "name": dataset.name, "classes": dataset.classes,
        "mask_levels": None if dataset.masks is None else 1 if dataset.nucleus is None else 2,
        "mask_encoding": None if dataset.masks is None else MASK_ENCODINGS[1 if dataset.nucleus is None else 2],
        "provenance": dataset.provenance, "fingerprint": dataset.fingerprint,
    }
    table = pa.table({
        "id": pa.array(dataset.ids, pa.string()),
        "image": pa.array([encode_png(im) for im in dataset.images], pa.binary()),
        "mask": pa.array([None] * len(dataset) if dataset.masks is None
                         else [None if m is None else encode_png(m) for m in dataset.mask_levels()], pa.binary()),
        "label": pa.array([None] * len(dataset) if dataset.labels is None
                          else [int(v) if v >= 0 else None for v in dataset.labels], pa.int16()),
        "source": pa.array(dataset.sources or [""] * len(dataset), pa.string()),
    }).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    replace_atomically(destination, lambda tmp: pq.write_table(table, tmp))
    log.info("wrote %d samples of %s to %s", len(dataset), dataset.name, destination)
    return destination



def read_dataset(path_or_uri: str | os.PathLike) -> Dataset:
    """Read a dataset written by convert() from a local path or a pyarrow-supported URI."""
    location = str(path_or_uri)
    try:
        if "://" in location:
            filesystem, path = pafs.FileSystem.from_uri(location)
            table = pq.read_table(path, filesystem=filesystem)
        else:
            table = pq.read_table(location)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{location}: cannot read dataset ({exc})") from None
    raw_meta = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw_meta is None:
        raise DataError(f"{location}: not an ncawss dataset (no {METADATA_KEY.decode()!r} schema metadata)")
    meta = json.loads(raw_meta)
    columns = table.to_pydict()
    labels = columns["label"]
    levels = None if all(m is None for m in columns["mask"]) else \
        [None if m is None else decode_png(m, "L") for m in columns["mask"]]
    two_levels = levels is not None and meta.get("mask_levels") == 2
    return Dataset(
        images=[decode_png(b, "RGB") for b in columns["image"]],
        masks=None if levels is None else [None if m is None else m > 0 for m in levels],
        nucleus=[None if m is None else m == 255 for m in levels] if two_levels else None,
        labels=None if all(v is None for v in labels) else np.array([-1 if v is None else v for v in labels]),
        classes=list(meta["classes"]), ids=list(columns["id"]), name=meta["name"],
        sources=list(columns["source"]), provenance=meta.get("provenance", {}),
    )


def dataset_metadata(path_or_uri: str | os.PathLike) -> dict:
    """The schema metadata of a dataset file (name, classes, fingerprint, ...) without reading rows."""
    location = str(path_or_uri)
    if "://" in location:
        filesystem, path = pafs.FileSystem.from_uri(location)
        schema = pq.read_schema(path, filesystem=filesystem)
    else:
        schema = pq.read_schema(location)
    return json.loads(schema.metadata[METADATA_KEY])
