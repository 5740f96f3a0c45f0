"""Layouts whose class is in the path, as the NCA-WSS authors read Raabin-WBC and Matek19:
`imagefolder` (images/<class>/<name>, masks mirrored under GT_masks/<class>/) and `prefix`
(image/<class>_<n>.jpg, masks/ with the same names). A sample whose mask is missing keeps a
null mask: it trains, it is not scored.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import DataError
from .files import IMAGE_SUFFIXES, STRAY_SHARE, binary_mask, check_unique, read_mask
from .listing import Listing, RawSample

log = logging.getLogger(__name__)

LOSSY_SUFFIXES = (".jpg", ".jpeg")
MASK_THRESHOLD = 128  # a lossy mask's pixel >= this is cell: JPEG noise sits near 0 and 255


@dataclass(frozen=True)
class Sample:
    """One image of a class-in-the-path layout and its mask file, where there is one."""
    id: str
    label: str
    image: Path
    mask: Path | None


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def mask_index(folder: Path) -> dict[str, Path]:
    """Mask files by stem; two masks of one stem (a.png and a.jpg) are ambiguous."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in image_files(folder):
        if path.stem in found:
            raise DataError(f"{path}: a second mask for {path.stem!r} beside {found[path.stem].name}")
        found[path.stem] = path
    return found


def binarised_mask(path: Path, shape: tuple[int, int], max_stray: float) -> tuple[np.ndarray, int]:
    """A 0/255 (or 0/1) mask as booleans, and how many pixels reading it moved: a lossy file's
    pixels off 0 and 255 are cut at MASK_THRESHOLD; a lossless one's stray values are snapped
    (folder layout rules)."""
    if path.suffix.lower() not in LOSSY_SUFFIXES:
        values, moved = binary_mask(path, shape, max_stray)
        return values > 0, moved
    values = read_mask(path, shape)
    if values.max() <= 1:
        return values > 0, 0
    return values >= MASK_THRESHOLD, int((~np.isin(values, (0, 255))).sum())


def warn_orphans(masks: dict[str, Path], stems: list[str]) -> None:
    orphans = sorted(set(masks) - set(stems))
    if orphans:
        log.warning("%s: %d masks without an image, left out (e.g. %s)", masks[orphans[0]].parent, len(orphans),
                    masks[orphans[0]].name)


def listing(samples: list[Sample], classes: list[str], root: Path, name: str, provenance: dict,
            max_stray: float) -> Listing:
    if not samples:
        raise DataError(f"{root}: no images found, the dataset would be empty")
    unknown = sorted({s.label for s in samples} - set(classes))
    if unknown:
        raise DataError(f"{root}: classes {unknown} found but not in the given classes {classes}")
    missing = sum(s.mask is None for s in samples)
    if missing:
        log.warning("%s: %d of %d images have no mask: they train, they are not scored", root, missing, len(samples))
    raw = [RawSample(s.id, s.image, s.mask, classes.index(s.label), str(s.image.relative_to(root))) for s in samples]
    return Listing(raw, name=name, classes=list(classes), labelled=True,
                   mask_levels=None if missing == len(samples) else 1,
                   read_mask=functools.partial(binarised_mask, max_stray=max_stray),
                   provenance={**provenance, "mask_threshold": MASK_THRESHOLD, "max_stray": max_stray,
                               "missing_masks": missing}, moved="binarised")


def folder_of(root: Path, name: str, layout: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (layout {layout})")
    return folder


def list_imagefolder(source: str | os.PathLike, images: str = "images", masks: str = "GT_masks",
                     classes: list[str] | None = None, name: str | None = None,
                     max_stray: float = STRAY_SHARE) -> Listing:
    """Images under <source>/<images>/<class>/, masks mirrored under <source>/<masks>/<class>/ with
    the same stem (torchvision's ImageFolder; the authors' Raabin-WBC). Classes: the folder names,
    sorted, unless given in label order. Ids are <class>/<stem>."""
    root = Path(source)
    image_root = folder_of(root, images, "imagefolder")
    stray = sorted(p.name for p in image_files(image_root))
    if stray:
        raise DataError(f"{image_root / stray[0]}: an image outside a class folder (layout imagefolder: "
                        f"{images}/<class>/<name>)")
    found = sorted(p.name for p in image_root.iterdir() if p.is_dir())
    samples = []
    for label in found:
        files = image_files(image_root / label)
        if not files:
            raise DataError(f"{image_root / label}: class folder without images")
        by_stem = mask_index(root / masks / label)
        stems = [p.stem for p in files]
        check_unique(stems, image_root / label, "image stem (ids are <class>/<stem>)")
        warn_orphans(by_stem, stems)
        samples += [Sample(f"{label}/{p.stem}", label, p, by_stem.get(p.stem)) for p in files]
    return listing(samples, list(classes) if classes else found, root, name or root.resolve().name,
                        {"layout": "imagefolder", "images": images, "masks": masks}, max_stray)


def list_prefix(source: str | os.PathLike, images: str = "image", masks: str = "masks", separator: str = "_",
                classes: list[str] | None = None, name: str | None = None,
                max_stray: float = STRAY_SHARE) -> Listing:
    """One folder <source>/<images>/ of <class><separator><rest> files, masks in <source>/<masks>/
    with the same stem (the authors' Matek19 subset). Classes: the prefixes, sorted, unless given
    in label order. Ids are the stems."""
    if not separator:
        raise ValueError("layout prefix: the separator must not be empty")
    root = Path(source)
    image_root = folder_of(root, images, "prefix")
    by_stem = mask_index(root / masks)
    samples = []
    for path in image_files(image_root):
        label, sep, rest = path.stem.partition(separator)
        if not sep or not label or not rest:
            raise DataError(f"{path}: no class prefix (layout prefix expects <class>{separator}<name>)")
        samples.append(Sample(path.stem, label, path, by_stem.get(path.stem)))
    stems = [s.id for s in samples]
    check_unique(stems, image_root, "image stem")
    warn_orphans(by_stem, stems)
    found = sorted({s.label for s in samples})
    return listing(samples, list(classes) if classes else found, root, name or root.resolve().name,
                        {"layout": "prefix", "images": images, "masks": masks, "separator": separator}, max_stray)
