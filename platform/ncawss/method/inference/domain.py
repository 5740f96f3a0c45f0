"""One fold's model on another dataset (a sweep's --eval-data set), read a chunk at a time: the mean
label-free quality of its masks, and where the set has masks, its IoU beside the baselines'."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ...data import Dataset
from ..config import TrainConfig
from ..scoring.ensemble import Ensemble, FoldScorer, Regroup
from ..scoring.evaluation import chunk_size
from ..scoring.folds import FoldModel
from ..scoring.scores import Scores
from .predict import Predictor


def fold_on_dataset(config: TrainConfig, fold: FoldModel, classes: list[str], chunks: Iterable[Dataset],
                    device: str | torch.device = "cpu",
                    cam_kinds: tuple[str, ...] = ()) -> tuple[float, Scores | None]:
    """The mean quality of the fold's masks on every sample of a dataset given as chunks in order
    (predict with no stochastic runs), and its scores on the samples with masks (fold_scores), or
    None where the dataset has no masks: the whole set's values, with one chunk in memory."""
    predictor = Predictor(Ensemble(config, [fold], classes), device, runs=0)
    scorer = FoldScorer(config, fold, device, cam_kinds)
    # Regrouped as predict() and evaluation cut a whole set, so that the read-out noise falls alike.
    batches, scored = Regroup(predictor.batch_size, scored=False), Regroup(chunk_size(config.batch_size))
    qualities: list[float] = []
    masked = False
    for chunk in chunks:  # a chunk without masks gives the scored regroup nothing
        masked |= chunk.masks is not None
        for batch in batches.push(chunk):
            qualities += [p.quality for p in predictor.chunk(batch.images)]
        for group in scored.push(chunk):
            scorer.push(group)
    for batch in batches.rest():
        qualities += [p.quality for p in predictor.chunk(batch.images)]
    for group in scored.rest():
        scorer.push(group)
    return float(np.mean(qualities)), scorer.scores() if masked else None
