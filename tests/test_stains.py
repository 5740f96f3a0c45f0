"""Per-image normalisation, stain and colour augmentation: colour deconvolution as scikit-image
computes it, the jitter's draws within their stated ranges, and masks that ignore a per-channel
affine change of an image's colours under `normalise: image`."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.color import hed2rgb, rgb2hed

from ncawss import (
    Ensemble,
    TrainConfig,
    make_synthetic,
    predict,
    read_dataset,
    stratified_folds,
    train_fold,
    write_dataset,
)
from ncawss.method.images import hed_to_rgb, rgb_to_hed, shift_stains, standardise_each
from ncawss.method.training.augment import augment_colours, jitter_colour, stain_parameters


def channels_last(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy()


def test_colour_deconvolution_equals_scikit_image_both_ways():
    rng = np.random.default_rng(0)
    rgb = rng.random((3, 10, 12, 3))
    stains = rng.random((3, 10, 12, 3)) * 0.3
    np.testing.assert_allclose(channels_last(rgb_to_hed(torch.tensor(rgb).permute(0, 3, 1, 2))),
                               np.stack([rgb2hed(i) for i in rgb]), atol=1e-12)
    np.testing.assert_allclose(channels_last(hed_to_rgb(torch.tensor(stains).permute(0, 3, 1, 2))),
                               np.stack([hed2rgb(s) for s in stains]), atol=1e-12)


def test_a_stain_shift_is_scikit_images_stains_scaled_and_shifted():
    rng = np.random.default_rng(1)
    rgb = rng.random((1, 8, 8, 3))
    scale, shift = np.array([1.2, 0.8, 1.0]), np.array([0.01, -0.02, 0.0])
    expected = hed2rgb(rgb2hed(rgb[0]) * scale + shift)
    got = shift_stains(torch.tensor(rgb).permute(0, 3, 1, 2), torch.tensor(scale), torch.tensor(shift))
    np.testing.assert_allclose(channels_last(got)[0], expected, atol=1e-12)


def test_per_image_standardisation_ignores_a_per_channel_affine_change():
    raw = torch.rand(4, 3, 16, 16, dtype=torch.float64) * 0.5
    changed = raw * torch.tensor([1.5, 0.7, 1.1], dtype=torch.float64)[:, None, None] + 0.2
    torch.testing.assert_close(standardise_each(changed), standardise_each(raw))
    x = standardise_each(raw)
    torch.testing.assert_close(x.mean(dim=(2, 3)), torch.zeros(4, 3, dtype=torch.float64))
    torch.testing.assert_close(x.std(dim=(2, 3)), torch.ones(4, 3, dtype=torch.float64))


def test_stain_jitter_draws_lie_in_their_stated_ranges_with_uniform_statistics():
    scale, shift = stain_parameters(40000, 0.2, torch.Generator().manual_seed(0))
    assert scale.min() >= 0.8 and scale.max() <= 1.2 and shift.abs().max() <= 0.02
    assert scale.mean().item() == pytest.approx(1.0, abs=0.003)
    assert scale.std().item() == pytest.approx(0.4 / 12 ** 0.5, rel=0.02)   # U(0.8, 1.2)
    assert shift.std().item() == pytest.approx(0.04 / 12 ** 0.5, rel=0.02)  # U(-0.02, 0.02)


def test_zero_strength_is_the_identity_and_draws_nothing():
    raw = torch.rand(5, 3, 8, 8)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    assert torch.equal(augment_colours(raw, 0.0, 0.0, generator), raw)
    assert torch.equal(generator.get_state(), state)
    torch.testing.assert_close(jitter_colour(raw, torch.ones(5, 3)), raw)


def test_colour_jitter_changes_brightness_by_its_factor():
    raw = torch.full((1, 3, 4, 4), 0.4)
    assert torch.allclose(jitter_colour(raw, torch.tensor([[1.5, 1.0, 1.0]])), torch.full_like(raw, 0.6))


TINY = TrainConfig(channels=8, hidden=8, steps=4, image_size=16, epochs=3, batch_size=8, lr=3e-3, seed=2,
                   variants={}, readout={"inference": "mean_field"})


@pytest.fixture(scope="module")
def split():
    data = make_synthetic(n=40, size=16, seed=4)
    train, test = stratified_folds(data.labels, 2, seed=0)[0]
    return data.subset(train), data.subset(test)


def mask_agreement(config: TrainConfig, split) -> tuple[float, bool]:
    """Mean IoU of a trained fold's masks of the test images and of the same images with each channel
    scaled and shifted (an integer affine change, exact in uint8), and whether the classes agree."""
    train, test = split
    fold = train_fold(config, train, test)
    ensemble = Ensemble(config=config, folds=[fold.model], classes=train.classes)
    images = [im // 3 + 20 for im in test.images]                        # uint8 in 20..105
    changed = [(im * np.array([1, 2, 1]) + np.array([40, 0, 90])).astype(np.uint8) for im in images]
    a, b = predict(ensemble, images, runs=0), predict(ensemble, changed, runs=0)
    agreement = np.mean([np.logical_and(p.mask, q.mask).sum() / max(np.logical_or(p.mask, q.mask).sum(), 1)
                         for p, q in zip(a, b)])
    return float(agreement), [p.label for p in a] == [q.label for q in b]


def test_normalise_image_makes_the_masks_blind_to_a_per_channel_affine_colour_change(split):
    agreement, same_classes = mask_agreement(TINY.replace(normalise="image"), split)
    assert agreement > 0.99 and same_classes
    assert mask_agreement(TINY.replace(normalise="fold"), split)[0] < 0.95  # the fold's statistics do not


def test_colour_augmented_training_is_deterministic_given_the_seed_and_changes_the_weights(split):
    config = TINY.replace(stain_jitter=0.2, colour_jitter=0.3, epochs=2)
    a, b = train_fold(config, *split), train_fold(config, *split)
    plain = train_fold(TINY.replace(epochs=2), *split)
    for key in a.model.state_dict:
        assert torch.equal(a.model.state_dict[key], b.model.state_dict[key]), key
    assert not torch.equal(a.model.state_dict["nca.fc0.weight"], plain.model.state_dict["nca.fc0.weight"])


ROOT = Path(__file__).resolve().parent.parent


def prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/prepare_data.py", *args], capture_output=True, text=True, cwd=ROOT)


def test_restain_keeps_masks_labels_and_ids_and_shifts_the_stains_by_the_recorded_amount(tmp_path):
    source, output = tmp_path / "a.parquet", tmp_path / "a-restained.parquet"
    write_dataset(make_synthetic(n=12, size=24, seed=5), source)
    run = prepare("restain", "--source", str(source), "--output", str(output), "--seed", "3", "--strength", "0.4")
    assert run.returncode == 0, run.stderr
    before, after = read_dataset(source), read_dataset(output)
    assert after.ids == before.ids and after.classes == before.classes and after.name == f"{before.name}-restained"
    np.testing.assert_array_equal(after.labels, before.labels)
    assert all(np.array_equal(a, b) for a, b in zip(after.masks, before.masks))
    assert all(np.array_equal(a, b) for a, b in zip(after.nucleus, before.nucleus))
    record = after.provenance["restain"]
    scale, shift = np.array(record["stain_scale"]), np.array(record["stain_shift"])
    assert np.all(np.abs(scale - 1) <= 0.4) and np.all(np.abs(shift) <= 0.04) and np.abs(scale - 1).max() > 0.05
    assert f"stain scales {[round(v, 3) for v in record['stain_scale']]}" in run.stdout
    errors = []
    for old, new in zip(before.images, after.images):
        expected = rgb2hed(old) * scale + shift
        inside = (old > 25).all(axis=2) & (old < 230).all(axis=2) & (expected > 0.01).all(axis=2)
        errors.append(np.abs(rgb2hed(new) - expected)[inside])
    assert np.median(np.concatenate(errors)) < 0.002   # uint8 rounding only
    assert not any(np.array_equal(a, b) for a, b in zip(after.images, before.images))


def test_restain_refuses_a_strength_outside_its_range_and_writes_nothing(tmp_path):
    source, output = tmp_path / "a.parquet", tmp_path / "out.parquet"
    write_dataset(make_synthetic(n=6, size=16, seed=5), source)
    run = prepare("restain", "--source", str(source), "--output", str(output), "--strength", "1.5")
    assert run.returncode == 2 and "--strength 1.5" in run.stderr and not output.exists()
