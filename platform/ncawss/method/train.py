"""NCA-WSS folds start to end: k folds trained as one batched model, then every read-out evaluated;
one fold alone (`train_fold`) and sequential k-fold cross-validation are the same code with k = 1."""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import Dataset, fold_splits
from .baselines import CNN_WIDTHS, CNNBaseline, train_cnns
from .config import TrainConfig
from .evaluation import Evaluation, TestSet, evaluate
from .folds import FoldModel
from .loop import BatchedTrainer, build_model, make_folds, normalised_training_set
from .nca import FoldStack

log = logging.getLogger(__name__)


class FoldsHooks:
    """Callbacks of train_folds, each with one entry per fold; subclass and override what you need."""

    def on_epoch(self, epoch: int, metrics: list[dict]) -> None:
        """Called after each epoch (1-based) with every fold's training (and evaluation) metrics."""

    def save_checkpoint(self, checkpoints: list[dict]) -> None:
        """Called after each epoch with every fold's self-contained checkpoint (copies, safe to keep)."""

    def load_checkpoint(self) -> list[dict] | None:
        """Called once at the start: every fold's checkpoint to continue from, or None."""
        return None


class FoldHooks:
    """Callbacks of train_fold (one fold); subclass and override what you need."""

    def on_epoch(self, epoch: int, metrics: dict) -> None:
        """Called after each epoch (1-based) with its training (and evaluation) metrics."""

    def save_checkpoint(self, checkpoint: dict) -> None:
        """Called after each epoch with a self-contained checkpoint (a copy, safe to keep)."""

    def load_checkpoint(self) -> dict | None:
        """Called once at the start: a checkpoint to continue from, or None."""
        return None


class OneFold(FoldsHooks):
    """A single fold's hooks seen as the hooks of a batch of one."""

    def __init__(self, hooks: FoldHooks):
        self.hooks = hooks

    def on_epoch(self, epoch: int, metrics: list[dict]) -> None:
        self.hooks.on_epoch(epoch, metrics[0])

    def save_checkpoint(self, checkpoints: list[dict]) -> None:
        self.hooks.save_checkpoint(checkpoints[0])

    def load_checkpoint(self) -> list[dict] | None:
        checkpoint = self.hooks.load_checkpoint()
        return None if checkpoint is None else [checkpoint]


@dataclass
class FoldResult:
    accuracy: float
    iou: float                          # configured read-out
    baseline_iou: dict[str, float]      # each baseline under the configured read-out's target and post
    readout_iou: dict[str, float]       # mean IoU of every read-out variant of the same weights
    readout_iou64: dict[str, float]     # the same, by the authors' metric (evaluation.authors_iou)
    evaluations: dict[str, Evaluation]  # "readout" (the configured one) and every variant
    test_ids: list[str]
    history: list[dict]
    model: FoldModel                    # the trained weights, normalisation and CAM baseline CNNs
    epochs: int
    seconds: float                      # wall time of the batch of folds this fold trained in

    @property
    def evaluation(self) -> Evaluation:
        return self.evaluations["readout"]

    @property
    def lift(self) -> float:
        """IoU minus the best baseline's IoU on the same images."""
        return self.iou - max(self.baseline_iou.values())


@dataclass
class CVResult:
    folds: list[FoldResult] = field(default_factory=list)

    @property
    def fold_iou(self) -> list[float]:
        return [f.iou for f in self.folds]

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.fold_iou))

    @property
    def std_iou(self) -> float:
        return float(np.std(self.fold_iou))

    def baseline(self, name: str = "intensity") -> tuple[float, float]:
        """(mean, std) over folds of a baseline's IoU."""
        values = [f.baseline_iou[name] for f in self.folds]
        return float(np.mean(values)), float(np.std(values))

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean([f.accuracy for f in self.folds]))


def train_folds(config: TrainConfig, splits: list[tuple[Dataset, Dataset]], hooks: FoldsHooks | None = None,
                device: str | torch.device = "cpu", cnns: list[dict[str, CNNBaseline]] | None = None,
                cam_kinds: tuple[str, ...] = ()) -> list[FoldResult]:
    """Train NCA-WSS on each (train, test) split (image labels only), all folds batched as one model,
    then evaluate every read-out on each test set beside the baselines (intensity, and `cam_kinds`
    of each fold's `cnns`); test samples with no mask are left out. Fold i computes what `train_fold`
    computes on split i alone."""
    hooks = hooks or FoldsHooks()
    device = torch.device(device)
    started = time.perf_counter()
    splits = [(train, test.scored()) for train, test in splits]  # a sample with no mask trains, unscored
    prepared = [normalised_training_set(train, config.image_size, config.normalise) for train, _ in splits]
    data = [(x.to(device), torch.as_tensor(train.labels, dtype=torch.long, device=device))
            for (x, _, _), (train, _) in zip(prepared, splits)]
    tests = [TestSet.prepare(test, mean, std, config.image_size, (cnns or [None] * len(splits))[i], cam_kinds, device)
             for i, ((_, mean, std), (_, test)) in enumerate(zip(prepared, splits))]
    models = [build_model(config, len(splits[0][0].classes)).to(device) for _ in splits]
    folds = make_folds(config, models, data, device, fire=True)
    checkpoints = hooks.load_checkpoint()
    if checkpoints is not None:
        for fold, checkpoint in zip(folds, checkpoints):
            fold.restore(checkpoint)
        log.info("resuming %d folds from epoch %d", len(folds), folds[0].epoch)
    trainer = BatchedTrainer(FoldStack(models), folds, config, config.fire_rate, config.steps)

    for epoch in range(folds[0].epoch + 1, config.epochs + 1):
        metrics = trainer.epoch()
        evaluate_now = config.eval_every and epoch % config.eval_every == 0 and epoch < config.epochs
        for fold, test, m in zip(folds, tests, metrics):
            m["epoch"] = epoch
            if evaluate_now:
                ev = evaluate(fold.model, test, config, device, {"readout": config.readout})["readout"]
                m.update(test_accuracy=ev.accuracy, test_iou=float(ev.iou.mean()), test_iou64_pooled=ev.iou64_pooled)
            fold.history.append(m)
            fold.epoch = epoch
        log.info("epoch %d/%d %s", epoch, config.epochs, " | ".join(
            " ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "epoch") for m in metrics))
        hooks.on_epoch(epoch, metrics)
        hooks.save_checkpoint(copy.deepcopy([fold.checkpoint() for fold in folds]))

    results = []
    for i, (fold, test, (_, mean, std), (_, test_data)) in enumerate(zip(folds, tests, prepared, splits)):
        evaluations = evaluate(fold.model, test, config, device)
        ev = evaluations["readout"]
        results.append(FoldResult(
            accuracy=ev.accuracy, iou=float(ev.iou.mean()),
            baseline_iou={name: float(v.mean()) for name, v in ev.baseline_iou.items()},
            readout_iou={name: float(e.iou.mean()) for name, e in evaluations.items() if name != "readout"},
            readout_iou64={name: e.iou64_pooled for name, e in evaluations.items() if name != "readout"},
            evaluations=evaluations, test_ids=list(test_data.ids), history=fold.history,
            model=FoldModel({k: v.detach().cpu().clone() for k, v in fold.model.state_dict().items()},
                            mean.tolist(), std.tolist(), len(splits[0][0].classes), cnns[i] if cnns else None),
            epochs=config.epochs, seconds=time.perf_counter() - started))
    return results


def train_fold(config: TrainConfig, train: Dataset, test: Dataset, hooks: FoldHooks | None = None,
               device: str | torch.device = "cpu", cnns: dict[str, CNNBaseline] | None = None,
               cam_kinds: tuple[str, ...] = ()) -> FoldResult:
    """One fold alone: `train_folds` with k = 1. Deterministic given config.seed."""
    return train_folds(config, [(train, test)], OneFold(hooks or FoldHooks()), device,
                       [cnns] if cnns else None, cam_kinds)[0]


def cross_validate(config: TrainConfig, dataset: Dataset, k: int = 5, seed: int = 0,
                   device: str | torch.device = "cpu", cam_kinds: tuple[str, ...] = (),
                   batched: bool = True) -> CVResult:
    """k-fold cross-validation (config.split: stratified or plain KFold); with `cam_kinds` (gradcam,
    eigencam) each fold also trains the two CNN baselines. batched: all folds as one model (default),
    else one after another."""
    splits = [(dataset.subset(tr), dataset.subset(te)) for tr, te in fold_splits(dataset.labels, k, seed, config.split)]
    groups = [splits] if batched else [[s] for s in splits]
    result = CVResult()
    for group in groups:
        log.info("training %d fold(s) of %d: %s train images", len(group), k, [len(tr) for tr, _ in group])
        cnns = None
        if cam_kinds:
            by_size = {size: train_cnns(config, [tr for tr, _ in group], size, device) for size in CNN_WIDTHS}
            cnns = [{size: by_size[size][i] for size in CNN_WIDTHS} for i in range(len(group))]
        for fold in train_folds(config, group, device=device, cnns=cnns, cam_kinds=cam_kinds):
            log.info("fold %d/%d: IoU %.3f (best baseline %.3f), accuracy %.3f, %.0f s", len(result.folds) + 1, k,
                     fold.iou, max(fold.baseline_iou.values()), fold.accuracy, fold.seconds)
            result.folds.append(fold)
    return result
