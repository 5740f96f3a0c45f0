"""Threshold baselines: per-image Otsu on one channel of the image, no training.

- intensity: Otsu on the grayscale image, dark side = cell (the paper's trivial baseline);
- otsu_r, otsu_g, otsu_b: Otsu on the red, green or blue channel;
  otsu_s: on HSV saturation; otsu_a, otsu_bstar: on CIELAB a* and b*.
  The colour thresholds choose the cell's side by the border rule of the NCA-WSS read-out
  (pca_otsu.py): the side that holds more of the image's outer one-pixel frame is
  background; on a tie, the smaller side is the foreground.

Which channel is best depends on the stain and the camera, so a table's best colour
threshold is chosen in hindsight on the test masks: a user without masks would not know it.
"""
from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray, rgb2lab
from skimage.filters import threshold_otsu
from skimage.util import img_as_float64

from ..baselines import COLOUR_CHANNELS


def hsv_saturation(image: np.ndarray) -> np.ndarray:
    """HSV saturation of a uint8 (H, W, 3) image, the values scikit-image's rgb2hsv gives (its
    conversion to float is monotonic, so taking the channels' max and min first changes nothing),
    in a fraction of its time: no hue, no reduction over an axis of 3."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    top, bottom = img_as_float64(np.maximum(np.maximum(r, g), b)), img_as_float64(np.minimum(np.minimum(r, g), b))
    delta = top - bottom
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = delta / top
    saturation[delta == 0.0] = 0.0
    return saturation


# Each colour space's channels, as COLOUR_CHANNELS indexes them (of HSV only the saturation is used).
CHANNELS = {"rgb": lambda image: [image[..., i] for i in range(3)],
            "hsv": lambda image: [None, hsv_saturation(image), None],
            "lab": lambda image: list(np.moveaxis(rgb2lab(image), -1, 0))}


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


def channel_mask(channel: np.ndarray) -> np.ndarray:
    """A colour threshold's mask of one channel: Otsu, the cell's side by the border rule."""
    channel = channel.astype(np.float64)
    if channel.min() == channel.max():
        return np.zeros(channel.shape, dtype=bool)
    return border_side(channel > threshold_otsu(channel))


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
