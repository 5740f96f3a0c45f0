"""Raw dataset layouts, listed (`Listing`), and convert() to Parquet a chunk at a time."""
from __future__ import annotations

import csv
import functools
import os
from pathlib import Path

import numpy as np

from .class_folders import list_imagefolder, list_prefix
from .dataset import DataError
from .files import IMAGE_SUFFIXES, STRAY_SHARE, binary_mask, check_unique, read_mask, snap_to_levels
from .listing import Listing, RawSample
from .parquet import ROWS_PER_GROUP, DatasetWriter, write_chunks
from .synthetic import synthetic_chunks

ZHENG_CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
ZHENG_MASK_VALUES = {0, 128, 255}  # background, cytoplasm, nucleus


def read_csv_rows(path: Path, columns: int = 2) -> list[list[str]]:
    """Rows of a small CSV file after its header, stripped; each must have `columns` fields."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != columns:
            raise DataError(f"{path}, line {line}: expected {columns} columns, got {len(row)}")
    return [[cell.strip() for cell in row] for row in rows[1:]]


def zheng_mask(path: Path, shape: tuple[int, int], max_stray: float) -> tuple[np.ndarray, int]:
    return snap_to_levels(read_mask(path, shape), ZHENG_MASK_VALUES, path, max_stray)


def list_zheng2018(source: str | os.PathLike, subset: int = 1, max_stray: float = STRAY_SHARE) -> Listing:
    """Zheng et al. 2018: `Dataset N/NNN.bmp` images, `NNN.png` masks, `Class Labels of Dataset N.csv`.
    Mask values other than 0/128/255 on at most `max_stray` of a mask's pixels are snapped to the
    nearest of them (Dataset 2 has anti-aliased edges); more is an error."""
    root = Path(source)
    folder = root / f"Dataset {subset}"
    label_file = root / f"Class Labels of Dataset {subset}.csv"
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (layout zheng2018, subset {subset})")
    rows = read_csv_rows(label_file)
    check_unique([r[0] for r in rows], label_file, "image id")
    labels: dict[str, int] = {}
    for line, (image_id, label) in enumerate(rows, start=2):
        if not label.isdigit() or not 1 <= int(label) <= len(ZHENG_CLASSES):
            raise DataError(f"{label_file}, line {line}: unknown label {label!r} "
                            f"(expected 1..{len(ZHENG_CLASSES)})")
        if not image_id.isdigit():
            raise DataError(f"{label_file}, line {line}: image id {image_id!r} is not a number")
        labels[f"{int(image_id):03d}"] = int(label) - 1
    image_files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in (".bmp", ".jpg", ".jpeg")}
    for image_id in labels:
        if image_id not in image_files:
            raise DataError(f"{label_file}: label row for image {image_id}, "
                            f"but {folder / (image_id + '.bmp')} is missing")
    samples = []
    for image_id in sorted(image_files):
        path = image_files[image_id]
        if image_id not in labels:
            raise DataError(f"{path}: no label row in {label_file}")
        if not path.with_suffix(".png").exists():
            raise DataError(f"{path.with_suffix('.png')}: mask not found for image {path.name}")
        samples.append(RawSample(image_id, path, path.with_suffix(".png"), labels[image_id],
                                 f"Dataset {subset}/{path.name}"))
    if not samples:
        raise DataError(f"{folder}: no images found, the dataset would be empty")
    return Listing(samples, name=f"zheng2018-dataset{subset}", classes=list(ZHENG_CLASSES), labelled=True,
                   mask_levels=2, read_mask=functools.partial(zheng_mask, max_stray=max_stray),
                   provenance={"layout": "zheng2018", "subset": subset,
                               "origin": "Zheng et al. 2018, Micron 107:55-71 (segmentation_WBC)",
                               "max_stray": max_stray})


def list_folder(source: str | os.PathLike, classes: list[str] | None = None, name: str | None = None,
                max_stray: float = STRAY_SHARE) -> Listing:
    """Generic layout: images/ (PNG, BMP, TIFF, JPEG), optional masks/ (same file stem; any
    nonzero value = cell, so 0/255 and 0/1 both work), optional labels.csv (header id,label;
    label = class name). A binary mask's stray grey values (anti-aliased 0/255 edges) on at most
    `max_stray` of its pixels are snapped to the nearer of 0 and 255 first."""
    root = Path(source)
    image_dir, mask_dir, label_file = root / "images", root / "masks", root / "labels.csv"
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: folder not found (layout folder)")
    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    check_unique([p.stem for p in paths], image_dir, "image id (file stem)")
    if not paths:
        raise DataError(f"{image_dir}: no images found, the dataset would be empty")
    ids = [p.stem for p in paths]
    labels = np.full(len(ids), -1)
    if label_file.exists():
        labels, classes = read_folder_labels(label_file, ids, classes)
    masks: dict[str, Path | None] = dict.fromkeys(ids)
    if mask_dir.is_dir():
        masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        for path in paths:
            if path.stem not in masks:
                raise DataError(f"{mask_dir}: no mask for image {path.name}")
    samples = [RawSample(p.stem, p, masks[p.stem], int(label), str(p.relative_to(root)))
               for p, label in zip(paths, labels)]
    return Listing(samples, name=name or root.resolve().name, classes=list(classes or []),
                   labelled=label_file.exists(), mask_levels=1 if mask_dir.is_dir() else None,
                   read_mask=functools.partial(binary_mask, max_stray=max_stray),
                   provenance={"layout": "folder", "max_stray": max_stray})


def read_folder_labels(label_file: Path, ids: list[str], classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Label indices in the order of ids, and the class names they index."""
    rows = read_csv_rows(label_file)
    check_unique([r[0] for r in rows], label_file, "id")
    known = set(ids)
    for line, (image_id, label) in enumerate(rows, start=2):
        if image_id not in known:
            raise DataError(f"{label_file}, line {line}: label row for {image_id!r}, but no such image")
        if classes is not None and label not in classes:
            raise DataError(f"{label_file}, line {line}: unknown label {label!r} (classes: {classes})")
    by_id = dict(rows)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DataError(f"{label_file}: no label for image(s) {missing[:5]}")
    classes = list(classes) if classes is not None else sorted(set(by_id.values()))
    return np.array([classes.index(by_id[i]) for i in ids]), classes


LAYOUTS = {"zheng2018": list_zheng2018, "folder": list_folder, "imagefolder": list_imagefolder,
           "prefix": list_prefix}


def list_layout(layout: str, source: str | os.PathLike | None, **options) -> Listing:
    """A raw layout's samples, listed and checked; nothing decoded yet."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted([*LAYOUTS, 'synthetic'])}")
    if source is None:
        raise ValueError(f"layout {layout!r} needs a source folder")
    return LAYOUTS[layout](source, **options)


def convert(layout: str, source: str | os.PathLike | None, destination: str | os.PathLike, **options) -> Path:
    """Read a raw layout and write it as one Parquet dataset file, a row group at a time: memory
    holds one chunk of images, not the dataset. Returns the file's path; a failure leaves no file.

    Options: zheng2018: subset (1 or 2), max_stray; folder: classes, name, max_stray; imagefolder:
    images, masks, classes, name, max_stray; prefix: images, masks, separator, classes, name,
    max_stray; synthetic (source ignored): n, size, seed, domain.
    """
    if layout == "synthetic":  # generated chunk by chunk, written as it is drawn
        return write_chunks(synthetic_chunks(**options), destination)
    listing = list_layout(layout, source, **options)
    with DatasetWriter(destination, name=listing.name, classes=listing.classes, mask_levels=listing.mask_levels,
                       provenance=listing.provenance) as writer:
        for chunk in listing.chunks(ROWS_PER_GROUP):
            writer.write(chunk)
        writer.provenance.update(listing.record())
    return writer.destination
