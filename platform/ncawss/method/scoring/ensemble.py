"""A trained configuration's k fold models as one ensemble, and its scores on a dataset: the
folds' majority vote beside each baseline's, every read-out."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ...data import DataError, Dataset
from ..config import Readout, TrainConfig
from .evaluation import Evaluation, Evaluator, TestSet, chunk_size, evaluate
from .folds import FoldModel, FoldRecord, read_fold_records
from .metrics import iou_each, majority_vote
from .scores import PerReadout, Scores


@dataclass
class Ensemble:
    """A trained configuration's k fold models: what predicting needs, with no data beside it."""
    config: TrainConfig
    folds: list[FoldModel]
    classes: list[str]

    @classmethod
    def from_records(cls, records: list[FoldRecord], source: str = "model") -> Ensemble:
        """From the fold records a sweep or cross_validate.py --save writes."""
        if not records:
            raise DataError(f"{source}: no fold models")
        if any(r.config != records[0].config for r in records):
            raise DataError(f"{source}: the fold models were trained with different configurations")
        return cls(records[0].config, [r.model for r in records], list(records[0].classes))

    @classmethod
    def load(cls, folder: str | Path) -> Ensemble:
        """The fold models under `folder` (a sweep's best_model/, a cross_validate.py --save folder)."""
        return cls.from_records(read_fold_records(folder), str(folder))

    @property
    def min_side(self) -> int:
        """The smallest image side accepted: half the training resolution."""
        return max(self.config.image_size // 2, 8)


def score_dataset(ensemble: Ensemble, dataset: Dataset, device: str | torch.device = "cpu",
                  cam_kinds: tuple[str, ...] = ()) -> PerReadout[Scores]:
    """Every fold's model segments `dataset` (held-out or another domain's images; labels optional).

    Per read-out: the IoU of the folds' majority-vote masks, of each fold alone, and of each
    baseline's majority vote over the folds' CNNs (the thresholds need no training), all on the
    same images and target. Samples with no mask are left out.
    """
    return score_chunks(ensemble, [dataset.scored()], device, cam_kinds)


def score_chunks(ensemble: Ensemble, chunks: Iterable[Dataset], device: str | torch.device = "cpu",
                 cam_kinds: tuple[str, ...] = ()) -> PerReadout[Scores]:
    """score_dataset of a dataset given as chunks in order, of any sizes: its samples with masks,
    regrouped to evaluation.chunk_size (scored_chunks), give the same values, with one chunk in
    memory."""
    config = ensemble.config
    evaluators: list[Evaluator] = []
    parts: list[list[Votes]] = []
    for chunk in scored_chunks(chunks, chunk_size(config.batch_size)):
        tests = [fold_test_set(config, fold, chunk, cam_kinds, device) for fold in ensemble.folds]
        if not evaluators:
            evaluators = [Evaluator(fold.nca(config).to(device), tests[0], config, device) for fold in ensemble.folds]
        per_fold = [evaluator(test) for evaluator, test in zip(evaluators, tests)]
        parts.append([Votes.of([e[r] for e in per_fold], readout, chunk)
                      for r, readout in enumerate(evaluators[0].readouts)])
        del tests, per_fold  # every fold's masks of this chunk: gone before the next is read
    if not parts:
        raise DataError("no samples with a mask: nothing to score")
    scores = [Votes.join([p[r] for p in parts]).scores() for r in range(len(parts[0]))]
    return PerReadout(scores[0], dict(zip(evaluators[0].names, scores[1:])))


@dataclass(frozen=True)
class Votes:
    """One read-out's per-image IoU on some images: of the folds' majority vote, of each
    baseline's vote over the folds, and of each fold alone."""
    iou: np.ndarray
    baselines: dict[str, np.ndarray]
    folds: list[np.ndarray]

    @classmethod
    def of(cls, evaluations: list[Evaluation], readout: Readout, dataset: Dataset) -> Votes:
        truth = dataset.target_masks(readout.target)
        return cls(iou_each(majority_vote([e.masks for e in evaluations]), truth),
                   {b: iou_each(majority_vote([e.baseline_masks[b] for e in evaluations]), truth)
                    for b in evaluations[0].baseline_masks},
                   [e.image_iou for e in evaluations])

    @classmethod
    def join(cls, parts: list[Votes]) -> Votes:
        return cls(np.concatenate([p.iou for p in parts]),
                   {b: np.concatenate([p.baselines[b] for p in parts]) for b in parts[0].baselines},
                   [np.concatenate(folds) for folds in zip(*(p.folds for p in parts))])

    def scores(self) -> Scores:
        return Scores(iou=float(self.iou.mean()), baselines={b: float(v.mean()) for b, v in self.baselines.items()},
                      fold_iou=[float(f.mean()) for f in self.folds])


def scored_chunks(chunks: Iterable[Dataset], size: int) -> Iterator[Dataset]:
    """The samples with masks of a dataset's chunks (of any sizes, in order) as Datasets of `size`
    samples, in order, the last fewer."""
    regroup = Regroup(size)
    for chunk in chunks:
        yield from regroup.push(chunk)
    yield from regroup.rest()


class Regroup:
    """Samples pushed a chunk at a time (by default those with masks; `scored=False`: every one),
    handed back in Datasets of `size`."""

    def __init__(self, size: int, scored: bool = True):
        self.size, self.scored, self.held = size, scored, []

    def push(self, chunk: Dataset) -> list[Dataset]:
        kept = [i for i, mask in enumerate(chunk.masks or []) if mask is not None] if self.scored \
            else range(len(chunk))
        if kept:
            self.held.append(chunk.subset(kept))
        out = []
        while sum(len(part) for part in self.held) >= self.size:
            held = Dataset.join(self.held)
            out.append(held.subset(range(self.size)))
            self.held = [held.subset(range(self.size, len(held)))] if len(held) > self.size else []
        return out

    def rest(self) -> list[Dataset]:
        return [Dataset.join(self.held)] if self.held else []


def fold_test_set(config: TrainConfig, fold: FoldModel, dataset: Dataset, cam_kinds: tuple[str, ...],
                  device: str | torch.device) -> TestSet:
    return TestSet.prepare(dataset, fold.normalisation, config.image_size, fold.cnns, cam_kinds, device)


class FoldScorer:
    """One fold's model on a dataset's samples with masks, pushed in order as chunks of
    evaluation.chunk_size (the last fewer), under the configured read-out beside every baseline:
    the read-out noise carries on from chunk to chunk, so the scores are the whole set's."""

    def __init__(self, config: TrainConfig, fold: FoldModel, device: str | torch.device = "cpu",
                 cam_kinds: tuple[str, ...] = ()):
        self.config, self.fold, self.device, self.cam_kinds = config, fold, device, cam_kinds
        self.evaluator: Evaluator | None = None
        self.parts: list[Evaluation] = []

    def push(self, chunk: Dataset) -> None:
        test = fold_test_set(self.config, self.fold, chunk, self.cam_kinds, self.device)
        if self.evaluator is None:
            self.evaluator = Evaluator(self.fold.nca(self.config).to(self.device), test, self.config, self.device,
                                       variants=False)
        self.parts.append(replace(self.evaluator(test)[0], masks=[], baseline_masks={}, responses=np.empty(0)))

    def scores(self) -> Scores:
        if not self.parts:
            raise DataError("no samples with a mask: nothing to score")
        return Evaluation.join(self.parts).scores


def own_fold_scores(ensemble: Ensemble, test_ids: list[list[str]], chunks: Iterable[Dataset],
                    device: str | torch.device = "cpu", cam_kinds: tuple[str, ...] = ()) -> Scores:
    """Each fold's model on its own test samples (`test_ids`, those with masks) of a dataset given
    as chunks in order, under the configured read-out, beside every baseline; the mean over the
    folds (Scores.mean). In file order and chunks of evaluation.chunk_size, as a sweep scored its
    test folds: its cross-validation numbers, with one chunk in memory."""
    size = chunk_size(ensemble.config.batch_size)
    wanted = [set(ids) for ids in test_ids]
    regroups = [Regroup(size) for _ in ensemble.folds]
    scorers = [FoldScorer(ensemble.config, fold, device, cam_kinds) for fold in ensemble.folds]
    for chunk in chunks:
        for ids, regroup, scorer in zip(wanted, regroups, scorers):
            for group in regroup.push(chunk.subset([i for i, sample in enumerate(chunk.ids) if sample in ids])):
                scorer.push(group)
    for regroup, scorer in zip(regroups, scorers):
        for group in regroup.rest():
            scorer.push(group)
    if any(not scorer.parts for scorer in scorers):
        raise DataError("a fold's test samples are not in the dataset, or none has a mask")
    return Scores.mean([scorer.scores() for scorer in scorers])


def fold_scores(config: TrainConfig, fold: FoldModel, dataset: Dataset, device: str | torch.device = "cpu",
                cam_kinds: tuple[str, ...] = ()) -> Scores:
    """One fold's model on `dataset` (its samples with masks) under the configured read-out, beside
    every baseline."""
    test = fold_test_set(config, fold, dataset.scored(), cam_kinds, device)
    return evaluate(fold.nca(config).to(device), test, config, device, variants=False).configured.scores
