"""A prepared set (what a sweep shares instead of full images) gives what the full images give:
the same training tensors, the same threshold IoU, the same fold results chunk by chunk."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from ncawss import make_synthetic
from ncawss.data import Dataset, fold_splits
from ncawss.method.baselines import CAM_KINDS, CNN_WIDTHS, baseline_names
from ncawss.method.config import TrainConfig
from ncawss.method.images import resize_images
from ncawss.method.prepared import PackedMasks, PreparedSet
from ncawss.method.readout.components import POSTS
from ncawss.method.scoring import evaluation as evaluation_module
from ncawss.method.scoring.evaluation import TestSet
from ncawss.method.train import cross_validate, train_folds
from ncawss.method.training.cnn import train_cnns


@pytest.fixture(scope="module")
def mixed() -> Dataset:
    """Two sizes of crop, a few samples without a mask."""
    small = make_synthetic(n=48, size=24, seed=3)
    large = make_synthetic(n=40, size=28, seed=4)
    large = replace(large, ids=[f"large-{i}" for i in large.ids])
    joined = Dataset.join([small, large])
    masks = list(joined.masks)
    nucleus = list(joined.nucleus)
    for i in (5, 50, 51):
        masks[i] = nucleus[i] = None
    return replace(joined, masks=masks, nucleus=nucleus)


def chunks(dataset: Dataset, rows: int):
    return (dataset.subset(range(s, min(s + rows, len(dataset)))) for s in range(0, len(dataset), rows))


def test_packed_masks_unpack_to_the_masks_of_every_size_and_none():
    rng = np.random.default_rng(0)
    masks = [rng.random((5, 7)) > 0.5, None, rng.random((9, 3)) > 0.5, np.zeros((1, 1), bool)]
    packed = PackedMasks.join([PackedMasks.pack(masks[:2]), PackedMasks.pack(masks[2:])])
    assert len(packed) == 4 and packed.present().tolist() == [True, False, True, True]
    for original, unpacked in zip(masks, (packed[i] for i in range(4))):
        assert (unpacked is None) if original is None else np.array_equal(unpacked, original)


def test_prepared_set_holds_the_resized_images_a_fold_worker_computed_from_the_full_ones(mixed):
    prepared = PreparedSet.from_chunks(chunks(mixed, 30), sizes=[16, 32], keep_images=[0, 60])
    for size in (16, 32):
        assert torch.equal(torch.from_numpy(prepared.inputs[size]), resize_images(mixed.images, size))
    assert prepared.fingerprint == mixed.fingerprint
    assert prepared.ids == mixed.ids and np.array_equal(prepared.labels, mixed.labels)
    assert sorted(prepared.images) == [0, 60] and np.array_equal(prepared.images[60], mixed.images[60])
    assert all(np.array_equal(prepared.masks[i], m) if m is not None else prepared.masks[i] is None
               for i, m in enumerate(mixed.masks))
    with pytest.raises(ValueError, match="image_size 24 was not prepared"):
        prepared.training([0, 1], 24)


def test_prepared_threshold_iou_is_what_evaluation_computes_from_the_masks(mixed):
    scored = mixed.scored()
    prepared = PreparedSet.from_chunks([scored], sizes=[16])
    test = TestSet.prepare(scored, replace_norm(), 16)
    for p, post in enumerate(POSTS):
        for t, target in enumerate(("cell", "nucleus")):
            readout = TrainConfig().readout.model_copy(update={"post": post, "target": target})
            expected = test.baseline_iou(readout)
            for b, name in enumerate(expected):
                assert np.array_equal(prepared.threshold_iou[:, b, p, t], expected[name]), (post, target, name)


def replace_norm():
    from ncawss.method.images import Normalisation
    return Normalisation()


def test_folds_of_a_prepared_set_train_and_score_as_the_full_images_do(mixed, monkeypatch):
    monkeypatch.setattr(evaluation_module, "CHUNK", 8)  # a test fold of 44 images in chunks of 32
    # lr high enough that the stochastic read-out's noise changes the masks (chunks must carry it on)
    config = TrainConfig(channels=6, hidden=8, head_hidden=8, steps=4, image_size=16, epochs=2, batch_size=8,
                         lr=0.02, eval_every=1, precision="fp32", compile=False)
    splits = fold_splits(mixed.labels, 2, 0, config.split)
    cnn_config = config.replace(epochs=1)
    by_size = {size: train_cnns(cnn_config, [mixed.subset(tr) for tr, _ in splits], size) for size in CNN_WIDTHS}
    cnns = [{size: by_size[size][i] for size in CNN_WIDTHS} for i in range(2)]
    full = train_folds(config, [(mixed.subset(tr), mixed.subset(te)) for tr, te in splits], cnns=cnns,
                       cam_kinds=CAM_KINDS)
    prepared = PreparedSet.from_chunks(chunks(mixed, 25), sizes=[16])
    chunked = train_folds(config, [(prepared.training(tr, 16), prepared.test_fold(te)) for tr, te in splits],
                          cnns=cnns, cam_kinds=CAM_KINDS)
    assert min(len(te) for _, te in splits) > 32
    for a, b in zip(full, chunked):
        assert a.test_ids == b.test_ids
        assert a.history == b.history  # the mid-training evaluation's IoU too
        for name in ("configured", *a.evaluations.variants):
            ea = a.evaluations.configured if name == "configured" else a.evaluations.variants[name]
            eb = b.evaluations.configured if name == "configured" else b.evaluations.variants[name]
            assert np.array_equal(ea.image_iou, eb.image_iou)
            assert np.array_equal(ea.predictions, eb.predictions)
            assert np.array_equal(ea.image_iou64, eb.image_iou64)
            assert list(ea.baseline_image_iou) == list(eb.baseline_image_iou)
            assert set(ea.baseline_image_iou) == set(baseline_names(CAM_KINDS))
            for baseline, values in ea.baseline_image_iou.items():
                assert np.array_equal(values, eb.baseline_image_iou[baseline]), baseline
            assert ea.scores == eb.scores
            assert ea.degenerate == eb.degenerate
        assert len(b.evaluation.masks) == 32 and len(a.evaluation.masks) == len(a.test_ids)
        assert all(np.array_equal(x, y) for x, y in zip(a.evaluation.masks, b.evaluation.masks))
        for key, value in a.model.state_dict.items():
            assert torch.equal(value, b.model.state_dict[key]), key


def test_cross_validation_of_a_set_prepared_with_its_configs_posts_scores_as_the_full_images_do(mixed):
    config = TrainConfig(channels=6, hidden=8, head_hidden=8, steps=4, image_size=16, epochs=1, batch_size=8,
                         precision="fp32", compile=False, variants={"kept": {"post": "largest"}})
    assert config.posts == ("none", "largest")  # the configured read-out's and the variant's
    prepared = PreparedSet.from_chunks(chunks(mixed, 25), sizes=[16], posts=config.posts)
    full, chunked = cross_validate(config, mixed, k=2), cross_validate(config, prepared, k=2)
    for a, b in zip(full.folds, chunked.folds):
        assert a.test_ids == b.test_ids
        assert a.evaluations.map(lambda e: e.scores) == b.evaluations.map(lambda e: e.scores)
    assert set(full.folds[0].evaluations.variants) == {"kept"}
