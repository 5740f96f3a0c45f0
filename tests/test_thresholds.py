"""The threshold baselines: Otsu on one channel of the image, the side chosen by the border rule."""
import typing

import numpy as np
import pytest
from skimage.color import rgb2hsv, rgb2lab
from skimage.filters import threshold_otsu

from ncawss import colour_baseline, intensity_baseline, iou
from ncawss.method.baselines import (
    CAM_KINDS,
    COLOUR_CHANNELS,
    THRESHOLD_BASELINES,
    CamKind,
    baseline_names,
    check_cam_kinds,
)
from ncawss.method.readout.thresholds import CHANNELS, threshold_masks

CHANNEL_OF = {"otsu_r": lambda im: im[..., 0], "otsu_g": lambda im: im[..., 1], "otsu_b": lambda im: im[..., 2],
              "otsu_s": lambda im: rgb2hsv(im)[..., 1], "otsu_a": lambda im: rgb2lab(im)[..., 1],
              "otsu_bstar": lambda im: rgb2lab(im)[..., 2]}


def disc(size=40, r=9, cy=None, cx=None):
    yy, xx = np.mgrid[0:size, 0:size]
    return np.hypot(yy - (size / 2 if cy is None else cy), xx - (size / 2 if cx is None else cx)) < r


def stained(cell_rgb, background_rgb, mask, seed=0):
    """A uint8 image: one colour inside the mask, another outside, a little noise."""
    rng = np.random.default_rng(seed)
    image = np.where(mask[..., None], np.array(cell_rgb, float), np.array(background_rgb, float))
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", COLOUR_CHANNELS)
def test_each_colour_baseline_is_scikit_image_otsu_on_its_channel_with_the_border_side(name):
    cell = disc(cy=22, cx=18)
    image = stained((120, 60, 170), (225, 190, 200), cell)
    channel = CHANNEL_OF[name](image).astype(float)
    above = channel > threshold_otsu(channel)
    # The reference side: the frame lies mostly outside the cell, so the side off the frame is the cell.
    frame = np.ones_like(above)
    frame[1:-1, 1:-1] = False
    expected = ~above if above[frame].mean() > 0.5 else above
    mask = colour_baseline(image, name)
    np.testing.assert_array_equal(mask, expected)
    assert iou(mask, cell) > 0.9


def reference_mask(image, name):
    """A colour threshold from scikit-image's whole colour conversions and the border rule on a frame."""
    channel = CHANNEL_OF[name](image).astype(float)
    if channel.min() == channel.max():
        return np.zeros(channel.shape, dtype=bool)
    above = channel > threshold_otsu(channel)
    frame = np.ones_like(above)
    frame[1:-1, 1:-1] = False
    on_frame = int(above[frame].sum())
    off_frame = int(frame.sum()) - on_frame
    flip = on_frame > off_frame or (on_frame == off_frame and 2 * int(above.sum()) > above.size)
    return ~above if flip else above


@pytest.mark.parametrize("shape", [(1, 6), (2, 9), (3, 3), (5, 2), (31, 47)])
def test_threshold_masks_equal_each_baseline_from_scikit_images_own_colour_conversions(shape):
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    image[0, 0] = 0  # black: saturation 0 / 0
    image[-1, -1] = 90  # grey: no saturation
    masks = threshold_masks(image)
    np.testing.assert_array_equal(masks["intensity"], intensity_baseline(image))
    for name in COLOUR_CHANNELS:
        np.testing.assert_array_equal(masks[name], reference_mask(image, name), err_msg=name)
        np.testing.assert_array_equal(colour_baseline(image, name), masks[name], err_msg=name)


def test_each_colour_channel_holds_scikit_images_values():
    image = np.random.default_rng(5).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    image[:4, :4] = (70, 70, 70)  # grey and black: saturation 0
    image[-2:, -2:] = 0
    for name, (space, index) in COLOUR_CHANNELS.items():
        channel = CHANNELS[space](image)[index]
        values = channel.table[channel.codes] if isinstance(channel, tuple) else channel
        np.testing.assert_array_equal(values, CHANNEL_OF[name](image), err_msg=name)


def test_the_border_rule_keeps_the_cell_whether_it_is_darker_or_brighter_than_the_background():
    cell = disc()
    darker = stained((40, 40, 90), (200, 200, 230), cell)
    brighter = stained((200, 200, 250), (40, 40, 90), cell)
    assert iou(colour_baseline(darker, "otsu_b"), cell) > 0.95
    assert iou(colour_baseline(brighter, "otsu_b"), cell) > 0.95
    # gray intensity always takes the dark side: it finds the background of the bright cell
    assert iou(intensity_baseline(brighter), ~cell) > 0.95


def test_the_best_channel_depends_on_the_stain():
    """A cell that differs from its background only in blue is found by otsu_b and missed by otsu_r."""
    cell = disc()
    image = stained((200, 180, 90), (200, 180, 220), cell)
    masks = threshold_masks(image)
    assert iou(masks["otsu_b"], cell) > 0.95
    assert iou(masks["otsu_r"], cell) < 0.5


def test_a_constant_channel_gives_an_empty_mask():
    image = np.full((16, 16, 3), 100, np.uint8)
    assert not any(m.any() for m in threshold_masks(image).values())


def test_unknown_colour_baseline_is_named():
    with pytest.raises(ValueError, match="otsu_x"):
        colour_baseline(np.zeros((4, 4, 3), np.uint8), "otsu_x")


def test_the_registry_names_every_baseline_evaluation_computes_in_one_order():
    image = np.zeros((20, 20, 3), np.uint8)
    image[5:15, 5:15] = (120, 40, 160)
    assert list(threshold_masks(image)) == list(THRESHOLD_BASELINES) == ["intensity", *COLOUR_CHANNELS]
    assert set(COLOUR_CHANNELS) == set(CHANNEL_OF)  # each tested against scikit-image above
    assert typing.get_args(CamKind) == CAM_KINDS == ("gradcam", "eigencam")
    assert baseline_names(("eigencam",)) == [*THRESHOLD_BASELINES, "eigencam", "eigencam_large"]
    assert check_cam_kinds(["eigencam", "gradcam"]) == ("gradcam", "eigencam")
    with pytest.raises(ValueError, match=r"\['intensity'\] \(threshold baselines are always on\)"):
        check_cam_kinds(["intensity"])
