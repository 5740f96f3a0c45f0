"""How far a fold ensemble's masks of one image agree, and how well a label-free score ranks
images by their true IoU."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


def pairwise_iou(masks: np.ndarray) -> np.ndarray:
    """(n, H, W) bool masks -> (n, n) IoU of every pair; both empty = 1."""
    flat = masks.reshape(len(masks), -1).astype(np.float32)  # exact counts below 2^24 pixels
    inter = (flat @ flat.T).astype(np.float64)
    area = flat.sum(1, dtype=np.float64)
    union = area[:, None] + area[None, :] - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


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
