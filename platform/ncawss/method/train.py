"""NCA-WSS folds start to end: k folds trained as one batched model, then every read-out evaluated;
one fold alone (`train_fold`) and sequential k-fold cross-validation are the same code with k = 1."""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from ..data import Dataset, fold_splits
from .baselines import CNN_WIDTHS
from .config import TrainConfig
from .images import Normalisation, TrainingImages
from .nca.model import FoldStack, NCAClassifier
from .prepared import PreparedSet, TestFold
from .scoring.evaluation import Evaluation, TestSet, evaluate
from .scoring.folds import FoldModel
from .scoring.scores import PerReadout, Scores
from .training.cnn import CNNBaseline, train_cnns
from .training.loop import BatchedTrainer, Fold, make_folds
from .training.plan import Execution

log = logging.getLogger(__name__)


class TrainingHooks:
    """Callbacks of train_folds and train_fold, each with one entry per fold; subclass and override
    what you need."""

    def on_epoch(self, epoch: int, metrics: list[dict]) -> None:
        """Called after each epoch (1-based) with every fold's training (and evaluation) metrics."""

    def save_checkpoint(self, checkpoints: list[dict]) -> None:
        """Called after each epoch with every fold's self-contained checkpoint (copies, safe to keep)."""

    def load_checkpoint(self) -> list[dict] | None:
        """Called once at the start: every fold's checkpoint to continue from, or None."""
        return None


@dataclass(kw_only=True)
class FoldResult:
    evaluations: PerReadout[Evaluation]  # the configured read-out and every variant, on the fold's test images
    test_ids: list[str]
    history: list[dict]
    model: FoldModel                    # the trained weights, normalisation and CAM baseline CNNs
    epochs: int
    seconds: float                      # wall time of the batch of folds this fold trained in
    execution: Execution                # how it trained: fold by fold or stacked, precision, compiled

    @property
    def evaluation(self) -> Evaluation:
        """The configured read-out's evaluation."""
        return self.evaluations.configured

    @property
    def scores(self) -> Scores:
        """The configured read-out's scores: IoU, each baseline's, lift, accuracy."""
        return self.evaluations.configured.scores


@dataclass
class CVResult:
    folds: list[FoldResult] = field(default_factory=list)

    @property
    def scores(self) -> Scores:
        """The mean over folds of the configured read-out's scores (fold_iou: each fold's IoU)."""
        return Scores.mean([f.scores for f in self.folds])

    def std(self, baseline: str | None = None) -> float:
        """The spread (std) over folds of NCA-WSS's IoU, or of a baseline's."""
        return float(np.std([f.scores.baselines[baseline] if baseline else f.scores.iou for f in self.folds]))


def split_of(dataset: Dataset | PreparedSet, train: np.ndarray, test: np.ndarray,
             size: int) -> tuple[Dataset | TrainingImages, Dataset | TestFold]:
    """A fold's training and test samples, by index."""
    if isinstance(dataset, PreparedSet):
        return dataset.training(train, size), dataset.test_fold(test)
    return dataset.subset(train), dataset.subset(test)


def train_folds(config: TrainConfig, splits: list[tuple[Dataset | TrainingImages, Dataset | TestFold]],
                hooks: TrainingHooks | None = None, device: str | torch.device = "cpu",
                cnns: list[dict[str, CNNBaseline]] | None = None, cam_kinds: tuple[str, ...] = ()) -> list[FoldResult]:
    """Train NCA-WSS on each (train, test) split (image labels only), all folds batched as one model,
    then evaluate every read-out on each test set beside the baselines (the thresholds, and
    `cam_kinds` of each fold's `cnns`); test samples with no mask are left out. Fold i computes what
    `train_fold` computes on split i alone. A split of a prepared set (training images and a test
    fold, prepared.py) is evaluated chunk by chunk, with the same values."""
    hooks = hooks or TrainingHooks()
    device = torch.device(device)
    started = time.perf_counter()
    splits = [(train, test.scored()) for train, test in splits]  # a sample with no mask trains, unscored
    n_classes = len(splits[0][0].classes)
    models = [NCAClassifier.from_config(config, n_classes).to(device) for _ in splits]
    folds = make_folds(config, models, [train for train, _ in splits], device, fire=True)
    tests = [test_sets(test, fold.normalisation, config, (cnns or [None] * len(splits))[i], cam_kinds, device)
             for i, (fold, (_, test)) in enumerate(zip(folds, splits))]
    checkpoints = hooks.load_checkpoint()
    if checkpoints is not None:
        for fold, checkpoint in zip(folds, checkpoints):
            fold.restore(checkpoint)
        log.info("resuming %d folds from epoch %d", len(folds), folds[0].epoch)
    execution = Execution.plan(config, device, len(folds), images=max(len(fold) for fold in folds))
    trainer = BatchedTrainer(FoldStack(models, execution.grouped), folds, config, execution, config.fire_rate,
                             config.steps)
    for epoch in range(folds[0].epoch + 1, config.epochs + 1):
        run_epoch(trainer, folds, tests, epoch, config, device)
        hooks.on_epoch(epoch, [fold.history[-1] for fold in folds])
        hooks.save_checkpoint(copy.deepcopy([fold.checkpoint() for fold in folds]))
    return [FoldResult(evaluations=evaluate(fold.model, test(), config, device), test_ids=list(split[1].ids),
                       history=fold.history, epochs=config.epochs,
                       model=fold_model(fold, n_classes, cnns[i] if cnns else None),
                       seconds=time.perf_counter() - started, execution=execution)
            for i, (fold, test, split) in enumerate(zip(folds, tests, splits))]


def test_sets(test: Dataset | TestFold, normalisation: Normalisation, config: TrainConfig,
              cnns: dict[str, CNNBaseline] | None, cam_kinds: tuple[str, ...],
              device: torch.device) -> Callable[[], Iterable[TestSet]]:
    """What evaluation reads of a fold's test set, each time it evaluates: a Dataset's TestSet,
    prepared once; a prepared set's test fold, chunk by chunk (its full images are not at hand)."""
    if isinstance(test, TestFold):
        return lambda: test.test_sets(normalisation, config.image_size, config.batch_size, cnns, cam_kinds, device)
    prepared = TestSet.prepare(test, normalisation, config.image_size, cnns, cam_kinds, device)
    return lambda: [prepared]


def run_epoch(trainer: BatchedTrainer, folds: list[Fold], tests: list[Callable[[], Iterable[TestSet]]], epoch: int,
              config: TrainConfig, device: torch.device) -> None:
    """One epoch of every fold, its metrics (and at evaluation epochs the test fold's) in each history."""
    metrics = trainer.epoch()
    evaluate_now = config.eval_every and epoch % config.eval_every == 0 and epoch < config.epochs
    for fold, test, m in zip(folds, tests, metrics):
        m["epoch"] = epoch
        if evaluate_now:
            scores = evaluate(fold.model, test(), config, device, variants=False).configured.scores
            m.update(test_accuracy=scores.accuracy, test_iou=scores.iou, test_iou64_pooled=scores.iou64_pooled)
        fold.history.append(m)
        fold.epoch = epoch
    log.info("epoch %d/%d %s", epoch, config.epochs, " | ".join(
        " ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "epoch") for m in metrics))


def fold_model(fold: Fold, n_classes: int, cnns: dict[str, CNNBaseline] | None) -> FoldModel:
    """A trained fold's weights (copied to the CPU), normalisation and CAM baseline CNNs."""
    norm = fold.normalisation
    return FoldModel(state_dict={k: v.detach().cpu().clone() for k, v in fold.model.state_dict().items()},
                     norm_mean=list(norm.mean), norm_std=list(norm.std), norm_per_image=norm.per_image,
                     n_classes=n_classes, cnns=cnns)


def train_fold(config: TrainConfig, train: Dataset, test: Dataset, hooks: TrainingHooks | None = None,
               device: str | torch.device = "cpu", cnns: dict[str, CNNBaseline] | None = None,
               cam_kinds: tuple[str, ...] = ()) -> FoldResult:
    """One fold alone: `train_folds` with k = 1 (its hooks see lists of one). Deterministic given
    config.seed."""
    return train_folds(config, [(train, test)], hooks, device, [cnns] if cnns else None, cam_kinds)[0]


def cross_validate(config: TrainConfig, dataset: Dataset | PreparedSet, k: int = 5, seed: int = 0,
                   device: str | torch.device = "cpu", cam_kinds: tuple[str, ...] = (),
                   batched: bool = True) -> CVResult:
    """k-fold cross-validation (config.split: stratified or plain KFold); with `cam_kinds` (gradcam,
    eigencam) each fold also trains the two CNN baselines. batched: all folds as one model (default),
    else one after another. A prepared set (PreparedSet, prepared at config.image_size with the
    posts of its read-outs) gives the values its full images give."""
    splits = [split_of(dataset, train, test, config.image_size)
              for train, test in fold_splits(dataset.labels, k, seed, config.split)]
    groups = [splits] if batched else [[s] for s in splits]
    result = CVResult()
    for group in groups:
        log.info("training %d fold(s) of %d: %s train images", len(group), k, [len(tr) for tr, _ in group])
        cnns = None
        if cam_kinds:
            by_size = {size: train_cnns(config, [tr for tr, _ in group], size, device) for size in CNN_WIDTHS}
            cnns = [{size: by_size[size][i] for size in CNN_WIDTHS} for i in range(len(group))]
        for fold in train_folds(config, group, device=device, cnns=cnns, cam_kinds=cam_kinds):
            scores = fold.scores
            log.info("fold %d/%d: IoU %.3f (best baseline %.3f), accuracy %.3f, %.0f s", len(result.folds) + 1, k,
                     scores.iou, scores.baselines[scores.best_baseline], scores.accuracy, fold.seconds)
            result.folds.append(fold)
    return result
