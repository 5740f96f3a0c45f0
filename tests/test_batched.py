"""k folds trained as one batched model compute what each fold computes alone."""
import numpy as np
import pytest
import torch

from ncawss import NCAClassifier, TrainConfig, TrainingHooks, make_synthetic, train_cnn, train_fold, train_folds
from ncawss.method.images import resize_images
from ncawss.method.nca.model import FoldStack
from ncawss.method.training import plan
from ncawss.method.training.cnn import train_cnns
from ncawss.method.training.loop import BatchedTrainer, make_folds
from ncawss.method.training.plan import Execution

TINY = TrainConfig(channels=6, hidden=8, head_hidden=8, steps=3, image_size=12, epochs=2, batch_size=32,
                   lr=1e-3, seed=3, variants={})
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def uneven_splits():
    """Three folds whose training sets hold 193, 192 and 64 images (7, 6 and 2 batches of 32)."""
    data = make_synthetic(n=260, size=16, seed=4)
    order = np.random.default_rng(0).permutation(len(data))
    splits = []
    for n_train in (193, 192, 64):
        train, test = order[:n_train], order[n_train:n_train + 10]
        splits.append((data.subset(train), data.subset(test)))
        order = np.roll(order, 37)
    return splits


class Checkpoints(TrainingHooks):
    def __init__(self):
        self.saved = []

    def save_checkpoint(self, checkpoints):
        self.saved.append(checkpoints)


def assert_close_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_each_batched_fold_equals_that_fold_trained_alone(uneven_splits):
    hooks = Checkpoints()
    batched = train_folds(TINY, uneven_splits, hooks)
    for fold, (train, test) in zip(batched, uneven_splits):
        alone = train_fold(TINY, train, test)
        assert_close_weights(fold.model.state_dict, alone.model.state_dict)
        for h_batched, h_alone in zip(fold.history, alone.history):
            assert h_batched["train_loss"] == pytest.approx(h_alone["train_loss"], rel=1e-4)
            assert h_batched["train_accuracy"] == h_alone["train_accuracy"]
            assert h_batched["lr"] == h_alone["lr"]
        assert fold.scores.iou == pytest.approx(alone.scores.iou, abs=0.02)
    # 193 images: 7 optimiser steps an epoch; 192: 6; 64: 2 (none skipped, none added)
    assert [c["scheduler"]["last_epoch"] for c in hooks.saved[-1]] == [14, 12, 4]
    assert [c["optimiser"]["state"][0]["step"].item() for c in hooks.saved[-1]] == [14, 12, 4]


@pytest.mark.parametrize("normalise", ["fold", "fixed", "image"])
def test_a_folds_batches_are_its_whole_training_set_normalised_then_indexed(uneven_splits, normalise):
    """Batches are normalised as drawn (no normalised copy of the fold is held), with the values
    the whole fold normalised at once gives."""
    config = TINY.replace(normalise=normalise, augment=False)
    train = uneven_splits[0][0]
    (fold,) = make_folds(config, [NCAClassifier.from_config(config, len(train.classes))], [train], "cpu", fire=True)
    whole = fold.normalisation(resize_images(train.images, config.image_size))
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:37]
    assert torch.equal(fold.images(rows, config), whole[rows])
    assert torch.equal(fold.y[rows], torch.as_tensor(train.labels)[rows])
    if normalise == "fold":
        assert fold.normalisation.mean != (0.0, 0.0, 0.0) and not torch.equal(whole, resize_images(train.images, 12))


def trained_stack(splits, fold_by_fold: bool) -> tuple[list[dict], list[list[dict]]]:
    """Two epochs of the folds through BatchedTrainer: (state dicts, per-fold epoch metrics)."""
    models = [NCAClassifier.from_config(TINY, len(splits[0][0].classes)) for _ in splits]
    execution = Execution.plan(TINY, "cpu", len(models), fold_by_fold=fold_by_fold)
    folds = make_folds(TINY, models, [train for train, _ in splits], "cpu", fire=True)
    trainer = BatchedTrainer(FoldStack(models), folds, TINY, execution, TINY.fire_rate, TINY.steps)
    metrics = [trainer.epoch() for _ in range(2)]
    return [m.state_dict() for m in models], metrics


def test_fold_by_fold_training_equals_one_stacked_pass(uneven_splits):
    by_fold, by_fold_metrics = trained_stack(uneven_splits, fold_by_fold=True)
    stacked, stacked_metrics = trained_stack(uneven_splits, fold_by_fold=False)
    for a, b in zip(by_fold, stacked):
        assert_close_weights(a, b)
    for epoch_a, epoch_b in zip(by_fold_metrics, stacked_metrics):
        for a, b in zip(epoch_a, epoch_b):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
            assert a["train_accuracy"] == b["train_accuracy"] and a["lr"] == b["lr"]
    untrained = NCAClassifier.from_config(TINY, 5).state_dict()["nca.fc1.weight"]
    assert not torch.equal(by_fold[0]["nca.fc1.weight"], untrained)


def test_the_execution_plan_is_fold_by_fold_on_cpu_stacked_elsewhere_and_grouped_for_triton():
    def how(execution):
        return execution.fold_by_fold, execution.grouped, execution.cuda_graph

    assert how(Execution.plan(TINY, "cpu", 3)) == (True, False, False)
    assert Execution.plan(TINY, "cpu", 1).fold_by_fold is False  # one fold: nothing to split
    assert how(Execution.plan(TINY, "cuda", 3)) == (False, False, True)
    assert Execution.plan(TINY, "cuda", 3, graphable=False).cuda_graph is False
    assert Execution.plan(TINY.replace(cuda_graph=False), "cuda", 3).cuda_graph is False
    assert Execution.plan(TINY.replace(kernel="triton"), "cuda", 3).grouped is True
    assert Execution.plan(TINY, "cuda", 3, fold_by_fold=True).cuda_graph is False  # graphs replay stacked passes


def test_precision_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(plan, "native_bf16", lambda: native)
        assert Execution.plan(TINY, "cpu", 3).precision == ("bf16" if native else "fp32")
        assert Execution.plan(TINY, "cuda", 3).precision == "fp32"
        for chosen in ("fp32", "bf16"):
            assert Execution.plan(TINY.replace(precision=chosen), "cpu", 3).precision == chosen


def test_compile_auto_compiles_only_cpu_trainings_long_enough_to_repay_it():
    paper = TrainConfig(epochs=256)  # the paper's shape: 32 channels, hidden 32, 32 steps, 64 x 64
    assert Execution.plan(paper, "cpu", 5, images=240).compiled  # 61,440 images at the paper's shape
    assert not Execution.plan(paper.replace(epochs=24), "cpu", 5, images=240).compiled  # 5,760
    assert not Execution.plan(paper, "cuda", 5, images=240).compiled
    assert not Execution.plan(paper, "cpu", 5, images=240, graphable=False).compiled  # the CNN baselines
    assert not Execution.plan(TINY, "cpu", 3, images=10_000).compiled
    assert Execution.plan(TINY.replace(compile=True), "cpu", 3).compiled
    assert not Execution.plan(paper.replace(compile=False), "cpu", 5, images=240).compiled


def test_compiled_training_follows_the_eager_one(uneven_splits):
    """torch.compile'd forward passes (batches padded to one shape) give the same training, up to
    the compiler's reordering of float sums."""
    config = TINY.replace(precision="fp32")
    eager = train_folds(config, uneven_splits[:2])
    compiled = train_folds(config.replace(compile=True), uneven_splits[:2])
    assert compiled[0].execution.compiled and not eager[0].execution.compiled
    for a, b in zip(eager, compiled):
        assert_close_weights(a.model.state_dict, b.model.state_dict)
        assert [h["train_accuracy"] for h in a.history] == [h["train_accuracy"] for h in b.history]


def test_batched_folds_differ_from_each_other(uneven_splits):
    folds = train_folds(TINY, uneven_splits[:2])
    assert not torch.equal(folds[0].model.state_dict["nca.fc0.weight"], folds[1].model.state_dict["nca.fc0.weight"])


def test_two_batched_runs_with_one_seed_are_identical(uneven_splits):
    a, b = train_folds(TINY, uneven_splits), train_folds(TINY, uneven_splits)
    for x, y in zip(a, b):
        for key in x.model.state_dict:
            assert torch.equal(x.model.state_dict[key], y.model.state_dict[key]), key
        assert x.history == y.history and x.scores == y.scores


def test_batched_cnn_baselines_equal_each_cnn_trained_alone(uneven_splits):
    trains = [train for train, _ in uneven_splits]
    batched = train_cnns(TINY, trains, "small")
    for cnn, train in zip(batched, trains):
        alone = train_cnn(TINY, train, "small")
        assert_close_weights(cnn.state_dict, alone.state_dict)
        assert cnn.norm_mean == alone.norm_mean


def test_resuming_batched_folds_from_a_checkpoint_continues_bit_for_bit(uneven_splits):
    straight = train_folds(TINY, uneven_splits)
    first = Checkpoints()
    train_folds(TINY.replace(epochs=1), uneven_splits, first)

    class Resume(TrainingHooks):
        def load_checkpoint(self):
            return first.saved[-1]

    resumed = train_folds(TINY, uneven_splits, Resume())
    for a, b in zip(straight, resumed):
        for key in a.model.state_dict:
            assert torch.equal(a.model.state_dict[key], b.model.state_dict[key]), key
        assert a.history == b.history


@CUDA
def test_cuda_graph_training_equals_eager_training_on_cuda(uneven_splits):
    graphed = train_folds(TINY, uneven_splits, device="cuda")
    eager = train_folds(TINY.replace(cuda_graph=False), uneven_splits, device="cuda")
    for a, b in zip(graphed, eager):
        assert_close_weights(a.model.state_dict, b.model.state_dict)
        assert a.history[-1]["train_loss"] == pytest.approx(b.history[-1]["train_loss"], rel=1e-4)


@CUDA
def test_bf16_training_runs_and_stays_near_fp32_on_cuda(uneven_splits):
    fp32 = train_folds(TINY, uneven_splits, device="cuda")
    bf16 = train_folds(TINY.replace(precision="bf16"), uneven_splits, device="cuda")
    for a, b in zip(fp32, bf16):
        assert all(np.isfinite(h["train_loss"]) for h in b.history)
        assert b.history[-1]["train_loss"] == pytest.approx(a.history[-1]["train_loss"], rel=0.05)
        assert not torch.equal(a.model.state_dict["nca.fc0.weight"], b.model.state_dict["nca.fc0.weight"])
