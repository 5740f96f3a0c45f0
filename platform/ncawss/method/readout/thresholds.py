"""Threshold baselines: per-image Otsu on one channel of the image, no training.

- intensity: Otsu on the grayscale image, dark side = cell (the paper's trivial baseline);
- otsu_r, otsu_g, otsu_b: Otsu on the red, green or blue channel;
  otsu_s: on HSV saturation; otsu_a, otsu_bstar: on CIELAB a* and b*.
  The colour thresholds choose the cell's side by the border rule of the NCA-WSS read-out
  (pca_otsu.py): the side that holds more of the image's outer one-pixel frame is
  background; on a tie, the smaller side is the foreground.

Which channel is best depends on the stain and the camera, so a table's best colour
threshold is chosen in hindsight on the test masks: a user without masks would not know it.

The masks are those of scikit-image's conversions (rgb2gray, rgb2hsv, rgb2lab) and threshold_otsu
on the float channel, computed with the same values in less time. A channel that depends on a few
uint8 values per pixel (R, G or B; saturation, on the channels' max and min) is a table of values
indexed by a code per pixel, and its Otsu histogram is built from the values present, weighted by
their pixel counts: each value falls in the bin its pixels would fall in.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from skimage.color import rgb2gray, rgb2xyz, xyz_tristimulus_values
from skimage.filters import threshold_otsu
from skimage.util import img_as_float64

from ..baselines import COLOUR_CHANNELS


class Coded(NamedTuple):
    """A channel as an integer code per pixel and the value of each code: the channel is table[codes]."""
    codes: np.ndarray
    table: np.ndarray


def saturation_of(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """HSV saturation from the uint8 channels' max and min, the values scikit-image's rgb2hsv gives
    (its conversion to float is monotonic, so taking the max and min first changes nothing)."""
    top, bottom = img_as_float64(top), img_as_float64(bottom)
    delta = top - bottom
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = delta / top
    saturation[delta == 0.0] = 0.0
    return saturation


def srgb_linear() -> np.ndarray:
    """rgb2xyz's sRGB gamma of each uint8 value: its formula, once for a table instead of per pixel."""
    value = img_as_float64(np.arange(256, dtype=np.uint8))
    curved = value > 0.04045
    value[curved] = np.power((value[curved] + 0.055) / 1.055, 2.4)
    value[~curved] /= 12.92
    return value


UINT8_VALUES = np.arange(256, dtype=np.float64)
SATURATION = saturation_of(*(part.astype(np.uint8) for part in np.divmod(np.arange(256 * 256), 256)))
LINEAR = srgb_linear()
XYZ_OF_PRIMARIES = rgb2xyz(np.eye(3)[None])[0]  # row i: XYZ of primary i, exactly rgb2xyz's matrix transposed
WHITE = xyz_tristimulus_values(illuminant="D65", observer="2", dtype=np.float64)  # rgb2lab's defaults


def hsv_saturation(image: np.ndarray) -> Coded:
    """HSV saturation of a uint8 (H, W, 3) image, coded by the channels' max * 256 + min (rgb2hsv's values)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    top, bottom = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    return Coded(top.astype(np.intp) * 256 + bottom, SATURATION)


def cielab_ab(image: np.ndarray) -> list[np.ndarray]:
    """CIELAB a* and b* of a uint8 (H, W, 3) image, the values rgb2lab gives: its formulas, the
    gamma read from a table, and no L*."""
    xyz = (LINEAR[image] @ XYZ_OF_PRIMARIES) / WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return [500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])]


# Each colour space's channels, as COLOUR_CHANNELS indexes them (None: a channel no baseline uses).
CHANNELS = {"rgb": lambda image: [Coded(image[..., i], UINT8_VALUES) for i in range(3)],
            "hsv": lambda image: [None, hsv_saturation(image), None],
            "lab": lambda image: [None, *cielab_ab(image)]}


def intensity_baseline(image: np.ndarray) -> np.ndarray:
    """The trivial baseline: Otsu on the grayscale image (scikit-image), dark side = cell."""
    gray = rgb2gray(image)
    if gray.min() == gray.max():
        return np.zeros(gray.shape, dtype=bool)
    return gray <= threshold_otsu(gray)


def border_side(above: np.ndarray) -> np.ndarray:
    """The cell's side of a bool (H, W) split: `above`, or its complement where the border rule says so."""
    frame = np.ones(above.shape, dtype=bool)  # the outer one-pixel frame, as images.border_frame
    frame[1:-1, 1:-1] = False
    on_frame = int(above[frame].sum())
    off_frame = int(frame.sum()) - on_frame
    flip = on_frame > off_frame or (on_frame == off_frame and 2 * int(above.sum()) > above.size)
    return ~above if flip else above


def channel_mask(channel: np.ndarray | Coded) -> np.ndarray:
    """A colour threshold's mask of one channel (float, or Coded): Otsu, the cell's side by the border rule."""
    if isinstance(channel, Coded):
        counts = np.bincount(channel.codes.ravel(), minlength=len(channel.table))
        present = np.flatnonzero(counts)
        values = channel.table[present]
        if values.min() == values.max():
            return np.zeros(channel.codes.shape, dtype=bool)
        return border_side((channel.table > otsu(values, counts[present]))[channel.codes])
    channel = channel.astype(np.float64, copy=False)
    if channel.min() == channel.max():
        return np.zeros(channel.shape, dtype=bool)
    return border_side(channel > threshold_otsu(channel))


def otsu(values: np.ndarray, counts: np.ndarray) -> float:
    """threshold_otsu of a channel given as its distinct values and their pixel counts (the same
    256 bins over the same range, the same counts in each)."""
    hist, edges = np.histogram(values, bins=256, range=(values.min(), values.max()), weights=counts)
    return threshold_otsu(hist=(hist, (edges[:-1] + edges[1:]) / 2.0))


def colour_baseline(image: np.ndarray, name: str) -> np.ndarray:
    """Mask of one colour threshold (a key of baselines.COLOUR_CHANNELS) of a uint8 (H, W, 3) image."""
    if name not in COLOUR_CHANNELS:
        raise ValueError(f"unknown colour baseline {name!r}; choose one of {list(COLOUR_CHANNELS)}")
    space, index = COLOUR_CHANNELS[name]
    return channel_mask(CHANNELS[space](image)[index])


def threshold_masks(image: np.ndarray) -> dict[str, np.ndarray]:
    """Every threshold baseline's mask of one image, at its resolution (each colour space converted once)."""
    spaces = {space: CHANNELS[space](image) for space in {space for space, _ in COLOUR_CHANNELS.values()}}
    return {"intensity": intensity_baseline(image),
            **{name: channel_mask(spaces[space][index]) for name, (space, index) in COLOUR_CHANNELS.items()}}
