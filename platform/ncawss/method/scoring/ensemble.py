"""A trained configuration's k fold models as one ensemble, and its scores on a dataset: the
folds' majority vote beside each baseline's, every read-out."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...data import DataError, Dataset
from ..config import Readout, TrainConfig
from .evaluation import Evaluation, TestSet, evaluate
from .folds import FoldModel, FoldRecord, read_fold_records
from .metrics import vote_iou
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
    dataset, config = dataset.scored(), ensemble.config
    per_fold = [evaluate(fold.nca(config).to(device), fold_test_set(config, fold, dataset, cam_kinds, device), config,
                         device) for fold in ensemble.folds]
    variants = config.variant_readouts()
    return PerReadout(voted([e.configured for e in per_fold], config.readout, dataset),
                      {name: voted([e.variants[name] for e in per_fold], variants[name], dataset)
                       for name in per_fold[0].variants})


def voted(evaluations: list[Evaluation], readout: Readout, dataset: Dataset) -> Scores:
    """One read-out's scores of the folds' majority vote, and of each fold alone."""
    truth = dataset.target_masks(readout.target)
    baselines = {b: vote_iou([e.baseline_masks[b] for e in evaluations], truth) for b in evaluations[0].baseline_masks}
    return Scores(iou=vote_iou([e.masks for e in evaluations], truth), baselines=baselines,
                  fold_iou=[e.scores.iou for e in evaluations])


def fold_test_set(config: TrainConfig, fold: FoldModel, dataset: Dataset, cam_kinds: tuple[str, ...],
                  device: str | torch.device) -> TestSet:
    return TestSet.prepare(dataset, fold.normalisation, config.image_size, fold.cnns, cam_kinds, device)


def fold_scores(config: TrainConfig, fold: FoldModel, dataset: Dataset, device: str | torch.device = "cpu",
                cam_kinds: tuple[str, ...] = ()) -> Scores:
    """One fold's model on `dataset` (its samples with masks) under the configured read-out, beside
    every baseline."""
    test = fold_test_set(config, fold, dataset.scored(), cam_kinds, device)
    return evaluate(fold.nca(config).to(device), test, config, device, variants=False).configured.scores
