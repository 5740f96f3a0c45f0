"""A set of images' scores: NCA-WSS IoU beside each baseline's on the same images and target,
the lift over the best baseline, and each fold's IoU; flattened to metric names in one place.
`PerReadout` holds one such value for the configured read-out, apart from its variants'."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

import numpy as np

# Every table's heading says so: a user without masks would not know which channel to pick.
HINDSIGHT = ("lift = NCA-WSS minus the best baseline; the best colour threshold (otsu_*) is chosen in hindsight "
             "on the test masks")

def fold_key(fold: int, name: str) -> str:
    """One fold's value as a metric name: fold_key(0, "iou"), fold_key(1, "intensity_iou"), ..."""
    return f"fold{fold}_{name}"


T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class PerReadout(Generic[T]):
    """A value of the configured read-out (`configured`, what the objective uses) and the same
    value of each read-out variant of the same weights, by variant name."""
    configured: T
    variants: dict[str, T] = field(default_factory=dict)

    def map(self, f: Callable[[T], U]) -> PerReadout[U]:
        return PerReadout(f(self.configured), {name: f(v) for name, v in self.variants.items()})


@dataclass(frozen=True, kw_only=True)
class Scores:
    iou: float                                   # NCA-WSS, mean over the images
    baselines: dict[str, float]                  # baseline name (intensity, gradcam, ...) -> mean IoU
    iou64_pooled: float = float("nan")           # the authors' metric (evaluation.authors_iou), where known
    accuracy: float = float("nan")               # the classifier's, where the images have labels
    fold_iou: list[float] = field(default_factory=list)  # each fold alone, where folds voted or were averaged

    @property
    def best_baseline(self) -> str:
        return max(self.baselines, key=self.baselines.__getitem__)

    @property
    def lift(self) -> float:
        """IoU minus the best baseline's IoU on the same images."""
        return self.iou - self.baselines[self.best_baseline]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """`<prefix>iou`, `<prefix><baseline>_iou` of each baseline, `<prefix>lift`, and
        `<prefix>iou64_pooled` where known."""
        extra = {} if np.isnan(self.iou64_pooled) else {f"{prefix}iou64_pooled": self.iou64_pooled}
        return {f"{prefix}iou": self.iou, **{f"{prefix}{b}_iou": v for b, v in self.baselines.items()},
                f"{prefix}lift": self.lift, **extra}

    def fold_metrics(self, prefix: str = "") -> dict[str, float]:
        """`<prefix>fold<i>_iou` of each fold alone."""
        return {prefix + fold_key(i, "iou"): v for i, v in enumerate(self.fold_iou)}

    def as_dict(self) -> dict[str, float | list[float]]:
        """The flat form of the jobs' JSON files: metrics() and `fold_iou`."""
        return {**self.metrics(), "fold_iou": list(self.fold_iou)}

    @classmethod
    def mean(cls, scores: list[Scores]) -> Scores:
        """The mean over folds' scores of the same images (per-fold values: each fold's IoU)."""
        return cls(iou=float(np.mean([s.iou for s in scores])),
                   baselines={b: float(np.mean([s.baselines[b] for s in scores])) for b in scores[0].baselines},
                   iou64_pooled=float(np.mean([s.iou64_pooled for s in scores])),
                   accuracy=float(np.mean([s.accuracy for s in scores])), fold_iou=[s.iou for s in scores])


def majority_accuracy(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """The test accuracy of always answering the training set's most common class: the rate a
    classifier has to beat before its accuracy says anything. Unlabelled samples (-1) count in
    neither set, as in the classifier's accuracy."""
    train, test = np.asarray(train_labels), np.asarray(test_labels)
    majority = np.bincount(train[train >= 0]).argmax()
    known = test[test >= 0]
    return float(np.mean(known == majority)) if len(known) else float("nan")
