"""Label-free signals of a predicted mask's quality, their fixed combination, and how well a
score ranks images by their true IoU.

Signals of one image (each a column of predict.py's predictions.csv):
- stability: mean IoU over pairs of masks from two different folds' stochastic runs (the
  score before the combination; NaN without runs);
- fold_agreement: mean IoU over pairs of the folds' own masks (those the folds vote with);
- agree_<baseline>: IoU of the mask with each threshold baseline's mask (intensity and the
  colour thresholds, under the read-out's post-processing): a mask that no threshold of any
  channel reproduces has followed something other than the stain;
- pc1_share: the share of the NCA features' variance the first principal component explains
  (mean over folds): a state with one dominant direction has one thing to separate;
- separability: Otsu's between-class variance over the total variance of the response it
  thresholds (mean over folds): near 1 for a two-sided response, low where the cut is arbitrary;
- margin: the mean softmax's top class minus the second: how sure the classifier is;
- area_fraction, solidity (area over convex hull area), eccentricity (of the ellipse with the
  mask's second moments), centre_offset (the centroid's distance from the image centre over half
  the diagonal): a white cell in a single-cell crop is one compact, roughly central blob;
- raw_solidity: the solidity of each fold's mask before post-processing (mean over folds),
  at the training resolution: keeping one component makes any mask compact, so the raw mask
  tells a read-out that found one blob from one that found debris.

quality, the score predict.py reports and sorts by, is their fixed combination
(`combined_quality`); the parts stay beside it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np

from ..baselines import THRESHOLD_BASELINES
from ..readout.components import post_process
from ..readout.thresholds import threshold_masks
from ..scoring.metrics import iou, pairwise_iou


def cross_fold_agreement(masks: np.ndarray) -> float:
    """(k, R, H, W) masks of k folds x R runs -> mean IoU over pairs from different folds
    (k = 1: over pairs of runs)."""
    k, runs = masks.shape[:2]
    if k * runs < 2:
        return 1.0
    fold = np.repeat(np.arange(k), runs)
    pairs = fold[:, None] != fold[None, :] if k > 1 else ~np.eye(runs, dtype=bool)
    return float(pairwise_iou(masks.reshape(k * runs, *masks.shape[2:]))[pairs].mean())


class Ranking(NamedTuple):
    """How well a label-free score orders images by their true IoU."""
    spearman: float
    low_iou: float          # mean true IoU of the quarter the score ranks lowest
    high_iou: float         # ... and of the quarter it ranks highest
    lowest: np.ndarray      # the indices of that lowest quarter


def rank_by_score(score: np.ndarray, iou: np.ndarray) -> Ranking:
    from scipy.stats import spearmanr

    order = np.argsort(score, kind="stable")
    quarter = max(len(order) // 4, 1)
    return Ranking(float(spearmanr(score, iou).statistic), float(iou[order[:quarter]].mean()),
                   float(iou[order[-quarter:]].mean()), order[:quarter])


@dataclass(frozen=True)
class MaskShape:
    """Shape of a bool mask (its foreground taken as one region). Empty: area and solidity 0,
    eccentricity and centre_offset 1 (the worst values)."""
    area_fraction: float
    solidity: float
    eccentricity: float
    centre_offset: float


def mask_shape(mask: np.ndarray) -> MaskShape:
    from skimage.measure import regionprops

    if not mask.any():
        return MaskShape(0.0, 0.0, 1.0, 1.0)
    region = regionprops(mask.astype(np.uint8))[0]
    h, w = mask.shape
    cy, cx = region.centroid
    offset = math.hypot(cy - (h - 1) / 2, cx - (w - 1) / 2) / math.hypot((h - 1) / 2, (w - 1) / 2) if h * w > 1 else 0.0
    return MaskShape(float(mask.mean()), solidity(mask), float(region.eccentricity), min(offset, 1.0))


def solidity(mask: np.ndarray) -> float:
    """A bool (H, W) mask's area over its convex hull's (scikit-image's region solidity); 0 if empty."""
    return int(mask.sum()) / convex_area(mask) if mask.any() else 0.0


def convex_area(mask: np.ndarray) -> int:
    """The pixels of a non-empty bool (H, W) mask's convex hull, as scikit-image's
    convex_hull_image counts them (pixel centres inside or on the hull of the mask pixels' edge
    midpoints), without drawing the hull: each hull edge bounds each row's run of columns, in
    integers (coordinates doubled, so that the midpoints are whole). 8x faster at 256 px."""
    from scipy.spatial import ConvexHull

    rows = np.flatnonzero(mask.any(axis=1))
    left = mask[rows].argmax(axis=1)
    right = mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
    y = 2 * rows  # a row's outer pixels hold the hull's candidate midpoints
    points = np.concatenate([np.stack([u, v], axis=1) for u, v in
                             [(y, 2 * left - 1), (y, 2 * right + 1), (y - 1, 2 * left), (y + 1, 2 * left),
                              (y - 1, 2 * right), (y + 1, 2 * right)]])
    corners = points[ConvexHull(points).vertices]
    u, v = corners[:, :1], corners[:, 1:]
    du, dv = np.roll(corners[:, 0], -1)[:, None] - u, np.roll(corners[:, 1], -1)[:, None] - v
    turn = np.sign(np.sum(u[:, 0] * np.roll(v[:, 0], -1) - np.roll(u[:, 0], -1) * v[:, 0]))
    # pixel (row r, column c) is inside or on edge i where turn * (du (2c - v) - dv (2r - u)) >= 0,
    # that is a * c >= b per edge and row
    a = 2 * turn * du
    b = turn * (du * v + dv * (2 * np.arange(rows[0], rows[-1] + 1)[None, :] - u))
    lowest = np.where(a > 0, -(-b // np.where(a > 0, a, 1)), -1).max(axis=0)
    highest = np.where(a < 0, b // np.where(a < 0, a, 1), mask.shape[1]).min(axis=0)
    blocked = ((a == 0) & (b > 0)).any(axis=0)
    return int(np.where(blocked, 0, np.clip(highest - lowest + 1, 0, None)).sum())


@dataclass(frozen=True, kw_only=True)
class QualitySignals:
    """The label-free signals of one predicted mask (module doc)."""
    stability: float
    fold_agreement: float
    colour_agreement: dict[str, float]   # threshold baseline -> IoU of the mask with its mask
    pc1_share: float
    separability: float
    margin: float
    shape: MaskShape
    raw_solidity: float = float("nan")   # the read-out's masks before post-processing (mean over folds)

    def columns(self) -> dict[str, float]:
        """Flat, as predictions.csv names them."""
        return {"stability": self.stability, "fold_agreement": self.fold_agreement,
                **{f"agree_{name}": v for name, v in self.colour_agreement.items()},
                "pc1_share": self.pc1_share, "separability": self.separability, "margin": self.margin,
                **asdict(self.shape), "raw_solidity": self.raw_solidity}


def signal_columns() -> list[str]:
    """The names QualitySignals.columns() gives, in its order: predictions.csv's header."""
    shape = [f.name for f in fields(MaskShape)]
    return ["stability", "fold_agreement", *(f"agree_{name}" for name in THRESHOLD_BASELINES), "pc1_share",
            "separability", "margin", *shape, "raw_solidity"]


def colour_agreement(image: np.ndarray, mask: np.ndarray, post: str,
                     thresholds: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """IoU of a mask with each threshold baseline's mask of its (H, W, 3) image, post-processed as
    the mask was (`thresholds`: the image's threshold_masks, where computed already)."""
    thresholds = threshold_masks(image) if thresholds is None else thresholds
    return {name: iou(mask, post_process(m, post)) for name, m in thresholds.items()}


def combined_quality(signals: QualitySignals) -> float:
    """The quality score, a fixed function of one image's signals (nothing is fitted): the best
    agreement of the mask with any threshold baseline's mask, times the mask's solidity. High
    where some channel of the stain reproduces the mask and the mask is one compact blob; low for
    an empty mask, a mask no channel explains (a red cell, background), or one split in pieces.
    Chosen among fixed candidates on Dataset 1 and synthetic data (docs/RESULTS.md section 11)."""
    return max(signals.colour_agreement.values(), default=0.0) * signals.shape.solidity
