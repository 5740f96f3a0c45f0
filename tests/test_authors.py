"""The NCA-WSS authors' options: binarised and standardised PCA without a sign rule, their pooled
64x64 metric, max pooling, fixed normalisation and plain KFold; and clear errors for unknown values."""
import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu
from sklearn.decomposition import PCA
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from conftest import ROOT
from ncawss import ConfigError, Readout, iou, load_config, pca_otsu, train_fold
from ncawss.data import fold_splits
from ncawss.method.config import make_config
from ncawss.method.images import normalised_training_set, resize_images
from ncawss.method.nca.model import NCAClassifier
from ncawss.method.readout.pca_otsu import PCAOtsu
from ncawss.method.scoring.evaluation import authors_iou
from ncawss.method.scoring.metrics import pooled_iou


def authors_reference(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, PC1 scores) of one (C, H, W) state as the authors' script computes them."""
    c, h, w = state.shape
    pixels = (state > 0).astype(np.float64).reshape(c, -1).T             # binarised, (HW, C)
    scores = PCA(n_components=1).fit_transform(StandardScaler().fit_transform(pixels))[:, 0]
    return (scores > threshold_otsu(scores)).reshape(h, w), scores.reshape(h, w)


def planted_states(seed=0) -> torch.Tensor:
    """States whose channels carry a disc with random gains and offsets, with constant channels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:24, 0:24]
    disc = np.hypot(yy - 11, xx - 13) < 6
    states = []
    for _ in range(4):
        gains = rng.normal(0, 1, (8, 1, 1))
        s = gains * disc + rng.normal(0, 0.6, (8, 24, 24)) + rng.normal(0, 0.3, (8, 1, 1))
        s[2] = 1.5                                  # constant positive: binarised to all ones
        s[5] = -0.5                                 # constant negative: all zeros
        states.append(s)
    return torch.tensor(np.stack(states), dtype=torch.float64)


def test_authors_read_out_equals_scikit_learn_scaler_pca_and_scikit_image_otsu():
    states = planted_states()
    result = pca_otsu(states, binarise=True, standardise=True, orient="none")
    for state, mask, response in zip(states.numpy(), result.masks.numpy(), result.response.numpy()):
        expected_mask, expected_scores = authors_reference(state)
        # orient "none" keeps scikit-learn's sign: the scores themselves, not only up to sign
        np.testing.assert_allclose(response.ravel(), expected_scores.ravel(), atol=1e-9)
        np.testing.assert_array_equal(mask, expected_mask)


def test_without_a_sign_rule_the_mask_is_the_background_where_scikit_learns_sign_points_there():
    yy, xx = np.mgrid[0:20, 0:20]
    disc = np.hypot(yy - 10, xx - 10) < 5
    state = np.stack([np.where(disc, -1.0, 1.0), np.full((20, 20), 0.3), np.where(disc, -0.2, 0.1)])
    state = torch.tensor(state[None])                 # its largest loading is positive on the background
    none = pca_otsu(state, binarise=True, standardise=True, orient="none").masks[0].numpy()
    signed = pca_otsu(state, binarise=True, standardise=True, orient="signed").masks[0].numpy()
    np.testing.assert_array_equal(none, authors_reference(state[0].numpy())[0])
    np.testing.assert_array_equal(none, ~disc)
    np.testing.assert_array_equal(signed, disc)


def test_an_all_constant_state_gives_an_empty_mask_as_the_reference_does():
    state = torch.full((1, 6, 10, 10), 2.0, dtype=torch.float64)
    result = pca_otsu(state, binarise=True, standardise=True, orient="none")
    assert result.degenerate.tolist() == [True] and not result.masks.any()
    pixels = StandardScaler().fit_transform(np.ones((100, 6)))
    assert not pixels.any()                          # the reference's standardised pixels are all 0 too


def test_a_channel_constant_up_to_rounding_is_zero_after_standardising_not_amplified_noise():
    states = planted_states(seed=2).float()[:, :6]
    wobble = 0.3 + torch.randn(4, 1, 24, 24, generator=torch.Generator().manual_seed(0)) * 1e-7  # a few ulps
    with_constant = torch.cat([states, wobble], dim=1)
    result = pca_otsu(with_constant, standardise=True)
    alone = pca_otsu(states, standardise=True)
    torch.testing.assert_close(result.response.abs(), alone.response.abs(), rtol=1e-4, atol=1e-4)


def test_standardise_alone_makes_the_read_out_blind_to_channel_scale():
    states = planted_states(seed=1).float()
    scaled = states * torch.tensor([1, 100, 1, 0.01, 1, 1, 5, 1.0])[None, :, None, None]
    a = pca_otsu(states, standardise=True).masks
    b = pca_otsu(scaled, standardise=True).masks
    assert torch.equal(a, b)
    assert not torch.equal(pca_otsu(states).masks, pca_otsu(scaled).masks)


def test_pooled_iou_equals_the_hand_computation_on_three_batches():
    rng = np.random.default_rng(0)
    pred = [rng.random((8, 8)) > 0.5 for _ in range(70)]
    truth = [rng.random((8, 8)) > 0.4 for _ in range(70)]
    by_hand = []
    for start in (0, 32, 64):                      # batches of 32, 32 and 6 images
        inter = sum(np.sum(p & t) for p, t in zip(pred[start:start + 32], truth[start:start + 32]))
        union = sum(np.sum(p | t) for p, t in zip(pred[start:start + 32], truth[start:start + 32]))
        by_hand.append(inter / union)
    assert pooled_iou(pred, truth, 32) == pytest.approx(np.mean(by_hand))
    per_image = np.mean([iou(p, t) for p, t in zip(pred, truth)])
    assert pooled_iou(pred, truth, 32) != pytest.approx(per_image)  # pooling weighs big masks more


def test_authors_iou_compares_at_64x64_against_nearest_resized_masks():
    truth = [np.zeros((128, 128), bool) for _ in range(2)]
    truth[0][32:96, 32:96] = True                       # a square: exactly 16..48 at 64x64
    truth[1][:, :64] = True
    response = torch.zeros(2, 32, 32)
    response[0, 8:24, 8:24] = 1.0                      # the same square at 32x32
    response[1, :, :8] = 1.0                           # a quarter of the image
    result = PCAOtsu(masks=response > 0.5, response=response, threshold=torch.full((2,), 0.5),
                     degenerate=torch.zeros(2, dtype=torch.bool))
    # image 0: intersection 32*32 = union; image 1: 64*16 of 64*32: pooled (1024 + 1024) / (1024 + 2048)
    per_image, pooled = authors_iou(result, truth, "none")
    assert pooled == pytest.approx(2048 / 3072)
    np.testing.assert_allclose(per_image, [1.0, 0.5])


def test_max_pooling_feeds_the_head_the_per_channel_maximum_of_the_state():
    torch.manual_seed(0)
    model = NCAClassifier(channels=8, hidden=8, steps=3, n_classes=3, head_hidden=4, pool="max")
    torch.nn.init.normal_(model.nca.fc1.weight, std=0.1)
    x = torch.randn(2, 3, 12, 12)
    logits, state = model(x, mean_field=True)
    torch.testing.assert_close(logits, model.head(state.amax(dim=(2, 3))))
    model.pool = "mean"
    torch.testing.assert_close(model(x, mean_field=True)[0], model.head(state.mean(dim=(2, 3))))


def test_fixed_normalisation_maps_images_to_minus_one_one_whatever_the_fold(small_synthetic):
    x, normalisation = normalised_training_set(small_synthetic, 16, "fixed")
    raw = resize_images(small_synthetic.images, 16)
    torch.testing.assert_close(x, raw * 2 - 1)
    assert normalisation.mean == normalisation.std == (0.5, 0.5, 0.5) and not normalisation.per_image
    config = make_config({"channels": 6, "hidden": 4, "steps": 2, "head_hidden": 4, "epochs": 1, "batch_size": 8,
                          "image_size": 16, "normalise": "fixed", "variants": {}})
    train, test = small_synthetic.subset(np.arange(30)), small_synthetic.subset(np.arange(30, 40))
    assert train_fold(config, train, test).model.norm_mean == [0.5, 0.5, 0.5]


def test_config_pool_reaches_the_model():
    assert NCAClassifier.from_config(make_config({"pool": "max"}), 5).pool == "max"


def test_kfold_split_is_scikit_learns_shuffled_kfold_over_all_images():
    labels = np.array([0] * 30 + [1] * 5)
    ours = fold_splits(labels, 5, 42, "kfold")
    theirs = list(KFold(5, shuffle=True, random_state=42).split(labels))
    for (a, b), (c, d) in zip(ours, theirs):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    stratified = fold_splits(labels, 5, 42, "stratified")
    assert all(np.sum(labels[test] == 1) == 1 for _, test in stratified)


@pytest.mark.parametrize("values, key", [
    ({"pool": "avg"}, "pool"),
    ({"normalise": "imagenet"}, "normalise"),
    ({"split": "group"}, "split"),
    ({"readout": {"orient": "flip"}}, "readout.orient"),
    ({"readout": {"binarise": "maybe"}}, "readout.binarise"),
])
def test_unknown_option_values_stop_with_one_message_naming_the_key(values, key):
    with pytest.raises(ConfigError) as error:
        make_config(values, "authors.yaml")
    message = str(error.value)
    assert f"authors.yaml: key {key!r}" in message and len(message.splitlines()) == 1


def test_read_out_names_show_the_authors_options():
    assert Readout(binarise=True, standardise=True, orient="none").name == "binarise+standardise+unoriented"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    assert load_config(path).epochs >= 1


def test_authors_config_sets_every_option_their_script_differs_in():
    config = load_config(ROOT / "configs" / "authors.yaml")
    assert (config.pool, config.normalise, config.split, config.epochs) == ("max", "fixed", "kfold", 128)
    assert (config.readout.binarise, config.readout.standardise, config.readout.orient) == (True, True, "none")
    paper = load_config(ROOT / "configs" / "paper.yaml")
    assert (paper.pool, paper.normalise, paper.split, paper.readout.binarise) == ("mean", "fold", "stratified", False)
    assert {"authors", "authors_signed", "binarised"} <= set(paper.variant_readouts())
