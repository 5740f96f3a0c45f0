import numpy as np
import pytest
import torch

from ncawss import (
    TrainConfig,
    TrainingHooks,
    cross_validate,
    load_config,
    make_synthetic,
    stratified_folds,
    train_fold,
)
from ncawss.method.baselines import COLOUR_CHANNELS
from ncawss.method.config import ConfigError, make_config
from ncawss.method.images import resize_images
from ncawss.method.readout.thresholds import colour_baseline, intensity_baseline
from ncawss.method.scoring.metrics import iou

TINY = TrainConfig(channels=8, hidden=8, steps=4, image_size=16, epochs=3, batch_size=8, lr=1e-3, seed=5)


@pytest.fixture(scope="module")
def split(small_synthetic):
    train, test = stratified_folds(small_synthetic.labels, 2, seed=0)[0]
    return small_synthetic.subset(train), small_synthetic.subset(test)


class Recorder(TrainingHooks):  # one fold: lists of one
    def __init__(self, resume_from=None):
        self.epochs, self.checkpoints, self.resume_from = [], [], resume_from

    def on_epoch(self, epoch, metrics):
        self.epochs.append((epoch, metrics[0]))

    def save_checkpoint(self, checkpoints):
        self.checkpoints.append(checkpoints[0])

    def load_checkpoint(self):
        return None if self.resume_from is None else [self.resume_from]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_is_deterministic_given_the_seed(split):
    a, b = train_fold(TINY, *split), train_fold(TINY, *split)
    assert_same_weights(a.model.state_dict, b.model.state_dict)
    assert a.scores == b.scores and a.history == b.history
    c = train_fold(TINY.replace(seed=6), *split)
    assert not torch.equal(a.model.state_dict["nca.fc0.weight"], c.model.state_dict["nca.fc0.weight"])


def test_restored_checkpoint_continues_bit_for_bit(split):
    straight = Recorder()
    uninterrupted = train_fold(TINY, *split, hooks=straight)
    assert [e for e, _ in straight.epochs] == [1, 2, 3] and len(straight.checkpoints) == 3
    first_epoch = Recorder()
    train_fold(TINY.replace(epochs=1), *split, hooks=first_epoch)  # "interrupted" after epoch 1
    resumed_hooks = Recorder(resume_from=first_epoch.checkpoints[-1])
    resumed = train_fold(TINY, *split, hooks=resumed_hooks)
    assert [e for e, _ in resumed_hooks.epochs] == [2, 3]
    assert_same_weights(uninterrupted.model.state_dict, resumed.model.state_dict)
    assert resumed.history == uninterrupted.history and resumed.scores == uninterrupted.scores


def test_checkpoint_holds_everything_needed_to_continue(split):
    hooks = Recorder()
    train_fold(TINY.replace(epochs=1), *split, hooks=hooks)
    checkpoint = hooks.checkpoints[0]
    assert {"epoch", "model", "optimiser", "scheduler", "sample_rng", "fire_rng", "history"} <= checkpoint.keys()
    assert checkpoint["epoch"] == 1 and checkpoint["scheduler"]["last_epoch"] == 3  # 20 images / batch 8


def test_normalisation_statistics_come_from_the_training_fold_only(split):
    train, test = split
    result = train_fold(TINY.replace(epochs=1), train, test)
    expected = resize_images(train.images, 16).mean(dim=(0, 2, 3))
    np.testing.assert_allclose(result.model.norm_mean, expected.numpy(), rtol=1e-6)
    everything = resize_images(train.images + test.images, 16).mean(dim=(0, 2, 3))
    assert not np.allclose(result.model.norm_mean, everything.numpy(), rtol=1e-6)


def test_fold_result_reports_nca_and_baseline_on_the_same_test_images(split):
    train, test = split
    result = train_fold(TINY, train, test)
    ev, scores = result.evaluation, result.scores
    assert result.test_ids == test.ids and len(ev.image_iou) == len(ev.baseline_image_iou["intensity"]) == len(test)
    assert [m.shape for m in ev.masks] == [m.shape for m in test.masks]  # ground truth's resolution
    assert scores.iou == pytest.approx(ev.image_iou.mean()) and 0 <= scores.accuracy <= 1
    assert set(result.evaluations.variants) == {"stochastic", "mean_field"}
    assert result.evaluations.variants["stochastic"].scores.iou == pytest.approx(scores.iou)
    expected = {"intensity": np.mean([iou(intensity_baseline(im), gt) for im, gt in zip(test.images, test.masks)])}
    for name in COLOUR_CHANNELS:
        expected[name] = np.mean([iou(colour_baseline(im, name), gt) for im, gt in zip(test.images, test.masks)])
    assert scores.baselines == pytest.approx(expected)
    # The lift is measured against the best of all baselines, here a colour threshold, not gray.
    assert scores.lift == pytest.approx(scores.iou - max(expected.values()))
    assert max(expected, key=expected.__getitem__) != "intensity"


def test_eval_every_adds_test_metrics_to_the_epoch(split):
    hooks = Recorder()
    train_fold(TINY.replace(eval_every=2), *split, hooks=hooks)
    assert "test_iou" in hooks.epochs[1][1] and "test_iou" not in hooks.epochs[0][1]


def test_cross_validate_runs_every_fold(small_synthetic):
    result = cross_validate(TINY.replace(epochs=1), small_synthetic, k=2, seed=0)
    assert len(result.folds) == 2
    assert sorted(sum((f.test_ids for f in result.folds), [])) == sorted(small_synthetic.ids)
    fold_iou = [f.scores.iou for f in result.folds]
    assert result.scores.fold_iou == fold_iou and result.scores.iou == pytest.approx(np.mean(fold_iou))
    assert result.std() == pytest.approx(np.std(fold_iou))
    intensity = [f.scores.baselines["intensity"] for f in result.folds]
    assert result.scores.baselines["intensity"] == pytest.approx(np.mean(intensity))
    assert result.std("intensity") == pytest.approx(np.std(intensity))


@pytest.mark.slow
def test_short_cpu_run_learns_and_beats_the_intensity_baseline():
    """The quick-start configuration on synthetic data: above chance, and its mean-field
    read-out above the intensity baseline on the same test images."""
    config = load_config("configs/quickstart.yaml")
    assert config.readout.inference == "mean_field"
    data = make_synthetic(n=200, size=config.image_size, seed=0)
    train, test = stratified_folds(data.labels, 2, seed=0)[0]
    result = train_fold(config, data.subset(train), data.subset(test))
    assert result.scores.accuracy > 0.45  # chance: 0.2
    assert result.scores.iou > result.scores.baselines["intensity"] + 0.08


def test_read_out_variants_are_changes_to_the_configured_read_out():
    config = make_config({"readout": "mean-field", "variants": {"paper": {"inference": "stochastic"},
                                                                "smooth": {"smooth": 1.0, "post": "largest"}}})
    readouts = config.variant_readouts()
    assert set(readouts) == {"paper", "smooth"}  # the configured read-out is config.readout, not a variant
    assert config.readout.inference == "mean_field" and readouts["paper"].name == "paper"
    assert (readouts["smooth"].inference, readouts["smooth"].smooth, readouts["smooth"].post) == \
        ("mean_field", 1.0, "largest")
    with pytest.raises(ConfigError, match=r"variants\.bad: readout: key 'post'"):
        make_config({"variants": {"bad": {"post": "biggest"}}})


def test_every_read_out_variant_is_scored_beside_the_baselines_of_the_same_target(split):
    train, test = split
    config = TINY.replace(variants={"nucleus": {"target": "nucleus"}, "largest": {"post": "largest"}})
    result = train_fold(config, train, test)
    nucleus = result.evaluations.variants["nucleus"]
    expected = [iou(intensity_baseline(im), gt) for im, gt in zip(test.images, test.nucleus)]
    np.testing.assert_allclose(nucleus.baseline_image_iou["intensity"], expected)
    assert all(m.shape == gt.shape for m, gt in zip(nucleus.masks, test.nucleus))
    largest = result.evaluations.variants["largest"]
    assert all(label_count(m) <= 1 for m in largest.masks)
    assert set(result.evaluations.variants) == {"nucleus", "largest"}


def label_count(mask):
    from scipy import ndimage
    return ndimage.label(mask)[1]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'fire_rate'"):
        make_config({"fire_rate": 1.5})
    with pytest.raises(ConfigError, match=r"key 'chanels'.*Extra inputs"):
        make_config({"chanels": 8})
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'steps'"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml: file not found"):
        load_config(tmp_path / "missing.yaml")
