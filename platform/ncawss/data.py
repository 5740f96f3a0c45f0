"""Datasets: the in-memory Dataset, its Parquet format, layout readers, folds.

Parquet format, one row per sample: id (string), image (PNG bytes, RGB),
mask (PNG bytes, null where none), label (int16, null where none), source
(string). Masks keep two levels where the source has them: 255 = nucleus,
128 = cytoplasm, 0 = background; single-level masks are 255 = cell. Dataset
metadata (name, classes, mask levels and encoding, provenance, fingerprint) is
JSON under the schema metadata key b"ncawss".
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image
from sklearn.model_selection import StratifiedKFold, train_test_split

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
METADATA_KEY = b"ncawss"
MASK_ENCODINGS = {1: "PNG: 255 = white blood cell, 0 = background",
                  2: "PNG: 255 = nucleus, 128 = cytoplasm, 0 = background"}
TARGETS = ("cell", "nucleus")
STRAY_SHARE = 0.005  # share of a mask's pixels that may be snapped to the nearest level
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


class DataError(ValueError):
    """Bad input data; the message names the file and the fault."""


@dataclass
class Dataset:
    images: list[np.ndarray]            # uint8 (H, W, 3), sizes may differ
    masks: list[np.ndarray] | None      # bool (H, W), or None
    labels: np.ndarray | None           # int (N,), index into classes; -1 = unlabelled
    classes: list[str]
    ids: list[str]
    name: str = "dataset"
    sources: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    nucleus: list[np.ndarray] | None = None  # bool (H, W) nucleus masks where the source has two levels

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices) -> Dataset:
        idx = [int(i) for i in indices]
        return replace(
            self,
            images=[self.images[i] for i in idx],
            masks=None if self.masks is None else [self.masks[i] for i in idx],
            nucleus=None if self.nucleus is None else [self.nucleus[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            ids=[self.ids[i] for i in idx],
            sources=[self.sources[i] for i in idx] if self.sources else [],
        )

    @property
    def fingerprint(self) -> str:
        """sha256 over ids, pixels, masks and labels: equal content, equal fingerprint."""
        digest = hashlib.sha256()
        for i, image in enumerate(self.images):
            digest.update(self.ids[i].encode() + b"\0" + str(image.shape).encode())
            digest.update(np.ascontiguousarray(image).tobytes())
            if self.masks is not None:
                digest.update(np.packbits(self.masks[i]).tobytes())
            if self.nucleus is not None:
                digest.update(np.packbits(self.nucleus[i]).tobytes())
            if self.labels is not None:
                digest.update(int(self.labels[i]).to_bytes(4, "little", signed=True))
        return digest.hexdigest()

    def target_masks(self, target: str = "cell") -> list[np.ndarray]:
        """Ground truth for a segmentation target: the whole cell, or the nucleus where recorded."""
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {list(TARGETS)}")
        masks = self.masks if target == "cell" else self.nucleus
        if masks is None:
            have = "no masks" if self.masks is None else "single-level masks (no nucleus level)"
            raise DataError(f"{self.name}: target {target!r} needs {target} masks, but the dataset has {have}")
        return masks

    def mask_levels(self) -> list[np.ndarray]:
        """uint8 masks as stored: 255 nucleus / 128 cytoplasm, or 255 cell."""
        if self.nucleus is None:
            return [m.astype(np.uint8) * 255 for m in self.masks]
        return [np.where(n, 255, np.where(m, 128, 0)).astype(np.uint8) for m, n in zip(self.masks, self.nucleus)]


# --- images --------------------------------------------------------------

def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:  # PIL raises several types for corrupt files
        raise DataError(f"{path}: cannot read image ({exc})") from None


def read_mask(path: Path, image_shape: tuple[int, int]) -> np.ndarray:
    """Read a label-image mask and check its size; returns its uint8 values."""
    try:
        with Image.open(path) as img:
            values = np.asarray(img.convert("L") if img.mode in ("1", "P", "RGB", "RGBA", "LA") else img)
    except Exception as exc:
        raise DataError(f"{path}: cannot read mask ({exc})") from None
    if values.ndim != 2:
        raise DataError(f"{path}: mask must be single-channel, got shape {values.shape}")
    if values.shape != image_shape:
        raise DataError(f"{path}: mask is {values.shape[1]}x{values.shape[0]} (WxH) "
                        f"but its image is {image_shape[1]}x{image_shape[0]}")
    return values


def snap_to_levels(values: np.ndarray, levels: set[int], path: Path, max_stray: float) -> tuple[np.ndarray, int]:
    """Masks as they come: values off `levels` (anti-aliased edges) on at most `max_stray` of the
    pixels are set to the nearest level, with a warning naming the file; more is a DataError.
    Returns the values and how many pixels were snapped."""
    stray = ~np.isin(values, sorted(levels))
    count = int(stray.sum())
    if not count:
        return values, 0
    bad = sorted(np.unique(values[stray]).tolist())
    share = count / values.size
    if share > max_stray:
        raise DataError(f"{path}: mask has values {bad[:8]} not allowed by this layout (allowed: {sorted(levels)}) "
                        f"on {count} pixels ({share:.2%}); up to {max_stray:.2%} would be snapped to the nearest "
                        f"level ({'--strict' if max_stray == 0 else '--max-stray'})")
    ordered = np.array(sorted(levels))
    snapped = values.copy()
    snapped[stray] = ordered[np.abs(values[stray, None].astype(int) - ordered[None]).argmin(1)]
    log.warning("%s: %d pixels (%.2f%%) with values %s snapped to the nearest of %s", path, count, 100 * share,
                bad[:8], sorted(levels))
    return snapped, count


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert(mode))


# --- Parquet ---------------------------------------------------------------

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
                         else [encode_png(m) for m in dataset.mask_levels()], pa.binary()),
        "label": pa.array([None] * len(dataset) if dataset.labels is None
                          else [int(v) if v >= 0 else None for v in dataset.labels], pa.int16()),
        "source": pa.array(dataset.sources or [""] * len(dataset), pa.string()),
    }).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    replace_atomically(destination, lambda tmp: pq.write_table(table, tmp))
    log.info("wrote %d samples of %s to %s", len(dataset), dataset.name, destination)
    return destination


def replace_atomically(destination: Path, write: Callable[[str], object]) -> None:
    """`write(tmp)` fills a hidden file beside `destination`, which is then renamed into place:
    a reader never sees half a file, and a failure leaves no file and keeps any earlier one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    levels = None if all(m is None for m in columns["mask"]) else [decode_png(m, "L") for m in columns["mask"]]
    two_levels = levels is not None and meta.get("mask_levels") == 2
    return Dataset(
        images=[decode_png(b, "RGB") for b in columns["image"]],
        masks=None if levels is None else [m > 0 for m in levels],
        nucleus=[m == 255 for m in levels] if two_levels else None,
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


# --- folds -----------------------------------------------------------------

def stratified_folds(labels, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (scikit-learn, shuffled with seed) as (train_idx, test_idx) pairs.

    Samples of a class with fewer than k members cannot be stratified: they are
    kept in every training set (never tested) and a warning names the class.
    """
    labels = np.asarray(labels)
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    values, counts = np.unique(labels, return_counts=True)
    rare = values[counts < k]
    if len(rare):
        warnings.warn(f"classes {rare.tolist()} have fewer than k={k} samples "
                      f"(counts {counts[counts < k].tolist()}): kept in training in every fold, never tested",
                      stacklevel=2)
    rare_idx = np.flatnonzero(np.isin(labels, rare))
    common_idx = np.flatnonzero(~np.isin(labels, rare))
    if len(common_idx) < k:
        raise ValueError(f"cannot make {k} folds from {len(common_idx)} stratifiable samples")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    for train, test in splitter.split(common_idx, labels[common_idx]):
        folds.append((np.sort(np.concatenate([common_idx[train], rare_idx])), common_idx[test]))
    return folds


def holdout_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept_idx, holdout_idx): a stratified share `fraction` of the samples set aside, fixed by seed.

    Classes with fewer than two members cannot be split: they stay in the kept part.
    fraction 0 keeps everything.
    """
    if labels is None:
        raise DataError("the dataset has no class labels: training and a stratified holdout need them")
    labels = np.asarray(labels)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must lie in [0, 1), got {fraction}")
    everything = np.arange(len(labels))
    if fraction == 0.0:
        return everything, everything[:0]
    values, counts = np.unique(labels, return_counts=True)
    single = np.isin(labels, values[counts < 2])
    classes = len(np.unique(labels[~single]))
    if math.floor(fraction * (~single).sum()) < classes:
        raise ValueError(f"holdout fraction {fraction} of {(~single).sum()} samples leaves fewer than one "
                         f"sample for each of the {classes} classes; raise it or use 0 (no holdout)")
    kept, held = train_test_split(everything[~single], test_size=fraction, random_state=seed,
                                  stratify=labels[~single])
    return np.sort(np.concatenate([kept, everything[single]])), np.sort(held)
