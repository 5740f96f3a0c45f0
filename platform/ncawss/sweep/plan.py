"""The typed records a sweep hands down: the data every trial shares (object-store references)
and one trial's plan for its fold workers."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import DataError, fold_splits
from ..method.config import TrainConfig
from .space import SweepSpec

GALLERY_ROWS = 4  # test images a fold's gallery shows (inference.gallery.mask_gallery's rows)


@dataclass(frozen=True)
class OptunaStudy:
    """Where the sweep's Optuna study lives: an RDB storage URL and the study's name in it."""
    storage: str                         # e.g. sqlite:///OUTPUT/optuna.db, postgresql://...
    name: str


@dataclass(frozen=True)
class EvalSet:
    """An --eval-data set as its fold workers read it: its file's rows as stored (EncodedChunks of
    a row group each, a fraction of their decoded size), decoded a chunk at a time where scored."""
    name: str
    chunks: list[Any]                    # ObjectRefs of its EncodedChunks, in file order


@dataclass(frozen=True, kw_only=True)
class SharedData:
    """Ray object references, put once per sweep and fetched once per node. Nested in this record,
    they reach a trial as references, not as their values."""
    dataset: Any                         # ObjectRef of the cross-validation data, a PreparedSet
    source: dict[str, str]               # name and fingerprint of the file the data came from
    splits: list[tuple[list[int], list[int]]]  # the k folds' (train, test) indices, the same for every trial
    cnns: Any | None = None              # ObjectRef of per-fold {size: CNNBaseline}, where CAM baselines run
    eval_sets: list[EvalSet] = field(default_factory=list)  # the --eval-data sets


@dataclass(frozen=True, kw_only=True)
class TrialPlan:
    """What each fold worker of a trial needs: the configuration, the data, its share of folds."""
    config: TrainConfig
    data: SharedData
    folds: int                           # k of the trial's k-fold split
    folds_per_worker: int
    threads: int                         # torch threads per worker
    cam_kinds: tuple[str, ...]
    launched_at: float                   # time.time() when the trial launched its workers
    actor_started_at: float              # time.time() when the trial's actor process was created
    device: str | None = None            # overrides the device Ray's assignment implies (resources.device)
    launch: int = 1                      # which of the trial's Ray Train runs this is (retries of lost workers)
    objectives: tuple[str, ...] = ()     # the sweep's, each in every report (placeholders before the end)

    @property
    def workers(self) -> int:
        return math.ceil(self.folds / self.folds_per_worker)

    def share(self, rank: int) -> list[int]:
        """The folds worker `rank` trains: a contiguous share, so that rank order is fold order."""
        return list(range(rank * self.folds_per_worker, min(self.folds, (rank + 1) * self.folds_per_worker)))


def sweep_splits(spec: SweepSpec, labels: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The k folds' (train, test) indices every trial uses."""
    if labels is None or (labels < 0).any():
        raise DataError("a sweep trains on image labels: every sample of its data needs one")
    return fold_splits(labels, spec.folds, spec.seed, spec.train_config({}).split)


def gallery_rows(spec: SweepSpec, labels: np.ndarray) -> set[int]:
    """The samples whose full images a sweep keeps: the first of each test fold (their galleries;
    twice as many as shown, for those without a mask) and the first (the MLflow model's example)."""
    return {0, *(int(i) for _, test in sweep_splits(spec, labels) for i in test[:2 * GALLERY_ROWS])}
