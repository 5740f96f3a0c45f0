"""Files on disk: image and mask decoding, stray mask values, PNG bytes, atomic replacement."""
from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .dataset import DataError

log = logging.getLogger(__name__)

STRAY_SHARE = 0.005  # share of a mask's pixels that may be snapped to the nearest level
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


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


def check_unique(keys: list[str], where: Path, what: str) -> None:
    """A DataError naming `where` and the first key that comes twice."""
    seen = set()
    for key in keys:
        if key in seen:
            raise DataError(f"{where}: duplicate {what} {key!r}")
        seen.add(key)


def binary_mask(path: Path, shape: tuple[int, int], max_stray: float) -> tuple[np.ndarray, int]:
    """A folder-layout mask; a 0/255 one with a few stray values is snapped, anything else (0/1,
    label images with several values) is read as it is: nonzero = cell."""
    values = read_mask(path, shape)
    if values.max() <= 1:
        return values, 0
    try:
        return snap_to_levels(values, {0, 255}, path, max_stray)
    except DataError:  # not meant to be binary: several labels, or more grey than edges have
        return values, 0


def encode_png(array: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG bytes of a uint8 array; zlib's `compress_level` trades size for time (1: fastest)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert(mode))


class AtomicFile:
    """A hidden temporary file beside `destination` (`path`), renamed into place by `commit()`: a
    reader never sees half a file. `discard()` removes it, if it is still there; a failure before
    the commit leaves no file and keeps any earlier one."""

    def __init__(self, destination: Path):
        self.destination = destination
        fd, self.path = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
        os.close(fd)

    def commit(self) -> None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(self.path, self.destination)

    def discard(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)


def replace_atomically(destination: Path, write: Callable[[str], object]) -> None:
    """`write(tmp)` fills a hidden file beside `destination`, which is then renamed into place
    (AtomicFile)."""
    file = AtomicFile(destination)
    try:
        write(file.path)
        file.commit()
    finally:
        file.discard()
