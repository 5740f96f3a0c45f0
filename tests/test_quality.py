"""The label-free quality signals' definitions on planted masks, images and features, and the
combined score as a fixed function of them."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import regionprops

from ncawss.method.inference.quality import (
    QualitySignals,
    colour_agreement,
    combined_quality,
    convex_area,
    mask_shape,
)
from ncawss.method.readout.pca_otsu import otsu_separability, pca_otsu


def disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_a_central_disc_is_compact_round_and_central():
    shape = mask_shape(disc(41, 41, 20, 20, 10))
    assert shape.area_fraction == pytest.approx(math.pi * 100 / 41 ** 2, rel=0.03)
    assert shape.solidity > 0.9 and shape.eccentricity < 0.1 and shape.centre_offset == pytest.approx(0, abs=1e-9)


def test_an_off_centre_blob_is_as_far_off_as_its_centroid():
    shape = mask_shape(disc(41, 41, 8, 30, 5))
    assert shape.centre_offset == pytest.approx(math.hypot(12, 10) / math.hypot(20, 20), rel=1e-6)
    assert shape.solidity > 0.9


def test_two_blobs_are_one_region_with_a_low_solidity_and_an_elongated_ellipse():
    shape = mask_shape(disc(41, 41, 20, 8, 5) | disc(41, 41, 20, 32, 5))
    assert shape.solidity < 0.5 and shape.eccentricity > 0.9
    assert shape.centre_offset == pytest.approx(0, abs=1e-9)   # symmetric: the centroid is central


def varied_masks(count: int = 160):
    """Noise, opened noise, ellipses, single pixels and lines, 1 to 60 pixels a side."""
    rng = np.random.default_rng(3)
    for n in range(count):
        h, w = (int(v) for v in rng.integers(1, 61, 2))
        yy, xx = np.mgrid[:h, :w]
        mask = [rng.random((h, w)) < 0.3 * rng.random(),
                ndimage.binary_opening(rng.random((h, w)) < 0.6),
                ((yy - h / 2) ** 2 / (h * rng.random() + 1) + (xx - w / 2) ** 2 / (w * rng.random() + 1)
                 < 5 * rng.random()),
                np.zeros((h, w), bool)][n % 4]
        mask[rng.integers(h), rng.integers(w)] = True
        if n % 8 == 3:
            mask[rng.integers(h)] = True
        yield mask


def test_the_convex_area_and_solidity_are_scikit_images_region_values():
    for mask in varied_masks():
        region = regionprops(mask.astype(np.uint8))[0]
        assert convex_area(mask) == region.area_convex, mask.shape
        assert mask_shape(mask).solidity == region.solidity


def test_an_empty_mask_takes_the_worst_shape_values():
    assert tuple(vars(mask_shape(np.zeros((9, 9), bool))).values()) == (0.0, 0.0, 1.0, 1.0)


def test_separability_is_one_for_two_spikes_and_low_for_a_flat_ramp():
    two = torch.tensor([[0.0] * 30 + [1.0] * 10])
    ramp = torch.linspace(0, 1, 40)[None]
    assert float(otsu_separability(two, torch.tensor([0.5]))) == pytest.approx(1.0)
    assert float(otsu_separability(ramp, torch.tensor([0.5]))) == pytest.approx(0.75, abs=0.02)  # uniform: 3/4
    assert float(otsu_separability(torch.zeros(1, 40), torch.tensor([0.0]))) == 0.0


def test_pc1_share_is_one_for_rank_one_features_and_a_share_for_isotropic_ones():
    g = torch.Generator().manual_seed(0)
    pattern = torch.randn(1, 1, 16, 16, generator=g)
    rank_one = pattern * torch.randn(1, 6, 1, 1, generator=g)           # six channels, one direction
    noise = torch.randn(1, 6, 64, 64, generator=g)
    share_one = pca_otsu(rank_one).pc1_share
    share_noise = pca_otsu(noise).pc1_share
    assert float(share_one) == pytest.approx(1.0, abs=1e-5)
    assert 1 / 6 < float(share_noise) < 1 / 6 + 0.05


def test_colour_agreement_is_each_threshold_s_iou_with_the_mask():
    cell = disc(32, 32, 16, 16, 8)
    image = np.full((32, 32, 3), 220, np.uint8)
    image[cell] = (200, 60, 200)      # a magenta cell on a light grey background
    agreement = colour_agreement(image, cell, "none")
    assert agreement["otsu_g"] == pytest.approx(1.0) and agreement["intensity"] == pytest.approx(1.0)
    off = colour_agreement(image, np.roll(cell, 8, axis=1), "none")
    assert off["otsu_g"] < 0.5


def signals(**change) -> QualitySignals:
    values = dict(stability=0.8, fold_agreement=0.9, colour_agreement={"intensity": 0.7, "otsu_b": 0.9},
                  pc1_share=0.5, separability=0.8, margin=0.4, shape=mask_shape(disc(41, 41, 20, 20, 10)))
    values.update(change)
    return QualitySignals(**values)


def test_the_combined_score_is_the_best_threshold_agreement_times_solidity():
    base = signals()
    assert combined_quality(base) == pytest.approx(0.9 * base.shape.solidity)
    assert combined_quality(base) == combined_quality(signals())   # a function of the signals alone
    two_blobs = signals(shape=mask_shape(disc(41, 41, 20, 8, 5) | disc(41, 41, 20, 32, 5)))
    assert combined_quality(two_blobs) < 0.5 * combined_quality(base)
    assert combined_quality(signals(shape=mask_shape(np.zeros((9, 9), bool)))) == 0.0
    assert combined_quality(signals(colour_agreement={"intensity": 0.1, "otsu_b": 0.2})) < combined_quality(base)
    assert combined_quality(signals(stability=float("nan"))) == combined_quality(base)  # no runs: still a score


def test_the_csv_header_names_every_signal_the_record_gives_in_its_order():
    from ncawss.method.baselines import THRESHOLD_BASELINES
    from ncawss.method.inference.quality import signal_columns

    every = signals(colour_agreement={name: 0.5 for name in THRESHOLD_BASELINES})
    assert signal_columns() == list(every.columns())
