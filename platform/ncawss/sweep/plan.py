"""The typed records a sweep hands down: the data every trial shares (object-store references)
and one trial's plan for its fold workers."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..method.config import TrainConfig


@dataclass(frozen=True)
class OptunaStudy:
    """Where the sweep's Optuna study lives: an RDB storage URL and the study's name in it."""
    storage: str                         # e.g. sqlite:///OUTPUT/optuna.db, postgresql://...
    name: str


@dataclass(frozen=True, kw_only=True)
class SharedData:
    """Ray object references, put once per sweep and fetched once per node. Nested in this record,
    they reach a trial as references, not as their values."""
    dataset: Any                         # ObjectRef of the cross-validation Dataset
    source: dict[str, str]               # name and fingerprint of the file the data came from
    splits: list[tuple[list[int], list[int]]]  # the k folds' (train, test) indices, the same for every trial
    cnns: Any | None = None              # ObjectRef of per-fold {size: CNNBaseline}, where CAM baselines run
    eval_sets: list[Any] = field(default_factory=list)  # ObjectRefs of the --eval-data Datasets


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
