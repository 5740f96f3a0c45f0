"""Read-out options of the one pca_otsu path, and the CAM baselines."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from ncawss import Dataset, NCAClassifier, Readout, TrainConfig, iou, pca_otsu
from ncawss.method.images import resize_images
from ncawss.method.readout.components import post_process
from ncawss.method.readout.pca_otsu import PCAOtsu, gaussian_blur, masks_at, read_response
from ncawss.method.readout.states import read_chunk
from ncawss.method.training.cnn import cam_maps, train_cnn


def disk(h=32, w=32, r=6.0, cy=None, cx=None):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(yy - (h / 2 if cy is None else cy), xx - (w / 2 if cx is None else cx)) < r


def test_largest_keeps_the_larger_blob_and_centre_the_central_one():
    small_central = disk(r=4)
    large_corner = disk(r=7, cy=7, cx=24)
    mask = small_central | large_corner
    assert np.array_equal(post_process(mask, "largest"), large_corner)
    assert np.array_equal(post_process(mask, "centre"), small_central)
    assert np.array_equal(post_process(mask, "none"), mask)


def test_centre_takes_the_nearest_component_when_none_covers_the_centre():
    near, far = disk(r=3, cy=16, cx=24), disk(r=5, cy=3, cx=3)
    assert np.array_equal(post_process(near | far, "centre"), near)


def test_post_processing_fills_a_ring():
    ring = disk(r=9) & ~disk(r=4)
    for post in ("largest", "centre"):
        assert np.array_equal(post_process(ring, post), disk(r=9))


def test_empty_mask_stays_empty():
    empty = np.zeros((8, 8), bool)
    assert not post_process(empty, "largest").any() and not post_process(empty, "centre").any()


def three_level_cell(seed=0):
    """Background at 0, a darker rim at -1 and a brighter core at +1.2 (PC1 of a trained NCA)."""
    rng = np.random.default_rng(seed)
    cell, core = disk(r=10), disk(r=7)
    level = np.where(core, 1.2, np.where(cell, -1.0, 0.0))
    gains = rng.normal(0, 1, 6)
    features = gains[:, None, None] * level[None] + rng.normal(0, 0.1, (6, *level.shape))
    return torch.tensor(features, dtype=torch.float32)[None], cell


def test_deviation_finds_a_three_level_cell_where_signed_cannot():
    features, cell = three_level_cell()
    deviation = pca_otsu(features, orient="deviation").masks
    signed = pca_otsu(features, orient="signed").masks
    assert iou(deviation[0], cell) > 0.9
    assert iou(signed[0], cell) < 0.6


def test_smoothing_removes_speckle_before_the_threshold():
    rng = np.random.default_rng(2)
    cell = disk(r=9)
    response = torch.tensor(cell + rng.normal(0, 0.6, cell.shape), dtype=torch.float32)[None]
    rough = read_response(response).masks[0]
    smooth = read_response(response, smooth=1.5).masks[0]
    assert iou(smooth, cell) > iou(rough, cell) + 0.1 and iou(smooth, cell) > 0.85


def test_gaussian_blur_keeps_constants_and_the_mean():
    x = torch.full((2, 9, 9), 3.0)
    assert torch.allclose(gaussian_blur(x, 1.0), x)
    assert torch.equal(gaussian_blur(x, 0.0), x)
    impulse = torch.zeros(1, 15, 15)
    impulse[0, 7, 7] = 1.0
    spread = gaussian_blur(impulse, 1.0)[0]
    assert spread.sum().item() == pytest.approx(1.0, abs=1e-6)  # an interior impulse keeps its mass
    assert spread[7, 7] < 0.2 and spread[7, 8] == pytest.approx(spread[8, 7]) and spread[7, 6] == spread[7, 8]


def test_gaussian_blur_equals_scipy_with_mirrored_edges():
    x = torch.tensor(np.random.default_rng(4).normal(size=(2, 11, 13)), dtype=torch.float32)
    for sigma in (1.0, 1.5, 2.0):  # radius ceil(3 sigma), as scipy's int(3 sigma + 0.5) at these
        expected = [ndimage.gaussian_filter(m, sigma, mode="mirror", truncate=3.0) for m in x.numpy()]
        np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), np.stack(expected), atol=1e-5)


def test_masks_at_ground_truth_resolution_upsample_the_response_and_post_process():
    features, cell = three_level_cell()
    result = pca_otsu(features, orient="deviation")
    big = masks_at(result, [(64, 64)], post="largest")[0]
    assert big.shape == (64, 64)
    yy, xx = np.mgrid[0:64, 0:64]
    assert iou(big, np.hypot(yy - 31.5, xx - 31.5) < 20.5) > 0.85


def test_mask_upsampling_puts_the_boundary_midway_whatever_the_response_values():
    """A square whose inside is far above the threshold and outside just below it: the response's
    bilinear ramp crosses the threshold next to the outside pixels, the mask's at the midpoint."""
    response = torch.full((1, 8, 8), 0.49)
    response[0, 2:6, 2:6] = 10.0
    result = PCAOtsu(masks=response > 0.5, response=response, threshold=torch.full((1,), 0.5),
                     degenerate=torch.zeros(1, dtype=torch.bool))
    by_response = masks_at(result, [(80, 80)])[0]
    by_mask = masks_at(result, [(80, 80)], upsample="mask")[0]
    square = np.zeros((80, 80), bool)
    square[20:60, 20:60] = True                       # pixels 2..5 of 8 at ten times the size
    assert iou(by_mask, square) > 0.97
    assert by_response.sum() > by_mask.sum() and iou(by_response, square) < iou(by_mask, square)
    with pytest.raises(ValueError, match="upsample 'nearest'"):
        masks_at(result, [(80, 80)], upsample="nearest")


def smooth_input(size=24):
    yy, xx = np.mgrid[0:size, 0:size] / size
    x = np.stack([np.sin(3 * yy), np.cos(2 * xx), disk(size, size, size / 3).astype(float)])
    return torch.tensor(x, dtype=torch.float32)[None].repeat(2, 1, 1, 1)


def roughness(response: torch.Tensor) -> float:
    """Pixel noise of a response: its mean |difference to the 3x3 neighbourhood mean|, relative to its spread."""
    local = torch.nn.functional.avg_pool2d(response[:, None], 3, 1, 1, count_include_pad=False)[:, 0]
    return float((response - local).abs().mean() / response.std())


def perturbed_classifier():
    torch.manual_seed(0)
    model = NCAClassifier(channels=8, hidden=16, steps=12, fire_rate=0.5, n_classes=2)
    with torch.no_grad():
        model.nca.fc1.weight.normal_(0, 0.3)  # an NCA that updates, like a trained one
    return model.eval()


def engine_response(model, x, readout: Readout, seed: int) -> torch.Tensor:
    """The read-out engine's oriented PC1 response of one read-out; run r draws from seed + r."""
    generators = [torch.Generator().manual_seed(seed + r) for r in range(readout.runs)]
    (result,), _ = read_chunk(model, x, [readout], generators)
    return result.response


@torch.inference_mode()
def test_averaged_runs_and_mean_field_lower_the_responses_pixel_noise():
    model, x = perturbed_classifier(), smooth_input()

    def noise(readout):
        return roughness(engine_response(model, x, readout.replace(channels="hidden"), seed=1))

    one, eight = noise(Readout(runs=1)), noise(Readout(runs=8))
    mean_field = noise(Readout(inference="mean_field"))
    assert eight < 0.7 * one and mean_field < 0.7 * one


@torch.inference_mode()
def test_mean_field_read_out_is_deterministic_and_ignores_runs():
    model, x = perturbed_classifier(), smooth_input()
    a = engine_response(model, x, Readout(inference="mean-field"), seed=1)
    b = engine_response(model, x, Readout(inference="mean_field", runs=4), seed=9)
    assert torch.equal(a, b)


def object_dataset(n=80, size=40, side=8, seed=0):
    """Class = colour of one square placed at random; the rest is noise. Masks: the square."""
    rng = np.random.default_rng(seed)
    images, masks, labels = [], [], []
    for i in range(n):
        image = rng.integers(90, 160, (size, size, 3)).astype(np.uint8)
        y, x = rng.integers(2, size - side - 2, 2)
        label = i % 2
        image[y:y + side, x:x + side] = (220, 40, 40) if label == 0 else (40, 40, 220)
        mask = np.zeros((size, size), bool)
        mask[y:y + side, x:x + side] = True
        images.append(image)
        masks.append(mask)
        labels.append(label)
    return Dataset(images=images, masks=masks, labels=np.array(labels), classes=["red", "blue"],
                   ids=[f"o{i}" for i in range(n)], name="objects")


def test_gradcam_mask_overlaps_the_object_that_carries_the_class():
    data = object_dataset()
    config = TrainConfig(image_size=40, epochs=20, batch_size=16, lr=3e-3, augment=False, seed=0)
    cnn = train_cnn(config, data.subset(range(60)), "small")
    test = data.subset(range(60, 80))
    maps = cam_maps(cnn.model(), cnn.normalisation(resize_images(test.images, 40)))
    assert (maps.predictions.numpy() == test.labels).mean() > 0.9
    masks = masks_at(read_response(maps.gradcam), [m.shape for m in test.masks])
    overlap = np.mean([iou(m, t) for m, t in zip(masks, test.masks)])
    # Chance: the same masks scored against other images' objects (placed elsewhere at random).
    chance = np.mean([iou(m, t) for m, t in zip(masks, test.masks[1:] + test.masks[:1])])
    recall = np.mean([(m & t).sum() / t.sum() for m, t in zip(masks, test.masks)])
    assert overlap > 2.5 * chance and recall > 0.8  # Grad-CAM is coarse: it covers the object and more
