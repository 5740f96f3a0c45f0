import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from ncawss import intensity_baseline, iou, pca_otsu
from ncawss.method.readout.pca_otsu import OTSU_BINS, otsu_thresholds
from pca_otsu import reference_pca_otsu  # bench/pca_otsu.py: numpy + scikit-image, per image


def disk(h=32, w=32, r=8, cy=None, cx=None):
    yy, xx = np.mgrid[0:h, 0:w]
    cy = h / 2 if cy is None else cy
    cx = w / 2 if cx is None else cx
    return np.hypot(yy - cy, xx - cx) < r


def planted_features(mask: np.ndarray, channels=8, noise=0.2, seed=0) -> torch.Tensor:
    """Channels that each carry the mask with a random gain, plus noise."""
    rng = np.random.default_rng(seed)
    gains = rng.normal(0, 1, channels)
    f = gains[:, None, None] * mask[None] + rng.normal(0, noise, (channels, *mask.shape))
    return torch.tensor(f, dtype=torch.float32)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_planted_disk_is_recovered_whichever_sign_pc1_takes(sign):
    gt = disk()
    result = pca_otsu(sign * planted_features(gt)[None])
    masks, response = result.masks, result.response
    assert iou(masks[0], gt) > 0.95
    assert response[0][torch.from_numpy(gt)].mean() > response[0][~torch.from_numpy(gt)].mean()


def test_inverted_projection_is_corrected_per_image():
    gt = disk(r=7)
    f = planted_features(gt, seed=1)
    batch = torch.stack([f, -f, 2 * f, -3 * f])
    masks = pca_otsu(batch).masks
    assert all(iou(m, gt) > 0.95 for m in masks)


def test_off_centre_cell_still_chooses_the_side_away_from_the_border():
    gt = disk(r=6, cy=10, cx=20)
    masks = pca_otsu(-planted_features(gt, seed=2)[None]).masks
    assert iou(masks[0], gt) > 0.95


def test_constant_features_give_an_empty_mask_and_a_flag():
    features = torch.stack([torch.full((5, 16, 16), 3.0), planted_features(disk(16, 16, 4), channels=5)])
    result = pca_otsu(features)
    assert result.degenerate.tolist() == [True, False]
    assert not result.masks[0].any() and result.masks[1].any()
    assert torch.isfinite(result.response).all() and torch.isfinite(result.threshold).all()


def test_all_zero_features_give_an_empty_mask():
    result = pca_otsu(torch.zeros(2, 4, 8, 8))
    assert result.degenerate.all() and not result.masks.any()


def test_batched_pca_otsu_matches_per_image_scikit_image_reference():
    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (6, 5, 20, 20)) * rng.uniform(0.5, 3, (1, 5, 1, 1))
    features[:, :, 5:14, 4:12] += rng.normal(0, 2, (6, 5, 1, 1))  # give PC1 some structure
    result = pca_otsu(torch.tensor(features, dtype=torch.float32))
    for i in range(len(features)):
        projection, tau = reference_pca_otsu(features[i])
        ours = result.response[i].flatten().double().numpy()
        sign = np.sign(np.dot(ours, projection))  # eigenvector signs may differ
        np.testing.assert_allclose(ours, sign * projection, rtol=1e-3, atol=1e-3)
        bin_width = np.ptp(projection) / OTSU_BINS
        assert abs(result.threshold[i].item() - sign * tau) <= bin_width
        ref_mask = sign * projection > sign * tau
        disagree = result.masks[i].flatten().numpy() != ref_mask
        # Masks may differ only for values within one bin of the threshold.
        assert (np.abs(projection[disagree] - tau) <= bin_width).all()


def test_otsu_thresholds_match_scikit_image():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 1, (4, 300)), rng.normal(4, 0.5, (4, 200))], axis=1)
    ours = otsu_thresholds(torch.tensor(values, dtype=torch.float64))
    for row, t in zip(values, ours):
        assert t.item() == pytest.approx(threshold_otsu(row), abs=np.ptp(row) / OTSU_BINS * 1e-6)


def test_pca_otsu_stays_on_the_features_device_and_dtype():
    result = pca_otsu(planted_features(disk(16, 16, 4))[None].double())
    masks, response = result.masks, result.response
    assert masks.dtype == torch.bool and response.dtype == torch.float64 and masks.device == response.device


def test_iou_values():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert iou(a, b) == 1.0
    a[0, :2] = True
    assert iou(a, b) == 0.0
    b[0, 1:4] = True
    assert iou(a, b) == pytest.approx(1 / 4)
    batch = iou(np.stack([a, a]), np.stack([b, a]))
    np.testing.assert_allclose(batch, [0.25, 1.0])
    assert iou(torch.from_numpy(a), torch.from_numpy(a)) == 1.0


def test_iou_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        iou(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_intensity_baseline_takes_the_dark_side():
    gt = disk(40, 40, 10)
    image = np.where(gt[..., None], [90, 60, 120], [230, 220, 200]).astype(np.uint8)
    mask = intensity_baseline(image)
    assert mask.dtype == bool and iou(mask, gt) == 1.0


def test_intensity_baseline_of_a_constant_image_is_empty():
    assert not intensity_baseline(np.full((8, 8, 3), 128, np.uint8)).any()


def test_constant_features_with_a_large_offset_are_degenerate_but_small_structure_is_not():
    constant = torch.full((1, 6, 16, 16), 1234.5678)
    assert pca_otsu(constant).degenerate.all()
    faint = planted_features(disk(16, 16, 4), channels=6, noise=0.0)[None] * 1e-3
    result = pca_otsu(faint)
    assert not result.degenerate.any() and iou(result.masks[0], disk(16, 16, 4)) == 1.0


def test_fill_holes_equals_scipys_binary_fill_holes():
    from scipy import ndimage

    from ncawss.method.readout.components import fill_holes
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = ndimage.binary_opening(rng.random((40, 37)) < 0.6)
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7], ring[4, 4] = True, False
    assert fill_holes(ring)[4, 4] and not fill_holes(np.zeros((5, 5), bool)).any()
