"""Splits: stratified or plain k folds and a stratified holdout (scikit-learn, seeded).

scikit-learn is imported where a split is made: a sweep's fold workers receive their folds as
indices and so start without it (it is the costliest import of a worker's launch after torch).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .dataset import DataError


def stratified_folds(labels, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (scikit-learn, shuffled with seed) as (train_idx, test_idx) pairs.

    Samples of a class with fewer than k members cannot be stratified: they are
    kept in every training set (never tested) and a warning names the class.
    """
    labels = np.asarray(labels)
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    values, counts = np.unique(labels, return_counts=True)
    rare = values[counts < k]
    if len(rare):
        warnings.warn(f"classes {rare.tolist()} have fewer than k={k} samples "
                      f"(counts {counts[counts < k].tolist()}): kept in training in every fold, never tested",
                      stacklevel=2)
    rare_idx = np.flatnonzero(np.isin(labels, rare))
    common_idx = np.flatnonzero(~np.isin(labels, rare))
    if len(common_idx) < k:
        raise ValueError(f"cannot make {k} folds from {len(common_idx)} stratifiable samples")
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    for train, test in splitter.split(common_idx, labels[common_idx]):
        folds.append((np.sort(np.concatenate([common_idx[train], rare_idx])), common_idx[test]))
    return folds


SPLITS = ("stratified", "kfold")


def fold_splits(labels, k: int, seed: int, kind: str = "stratified") -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_idx, test_idx) pairs: `stratified_folds`, or with kind="kfold" scikit-learn's
    KFold(k, shuffle=True, random_state=seed) over all samples (the NCA-WSS authors' split)."""
    if kind not in SPLITS:
        raise ValueError(f"unknown split {kind!r}; choose one of {list(SPLITS)}")
    if kind == "stratified":
        return stratified_folds(labels, k, seed)
    if k < 2 or k > len(labels):
        raise ValueError(f"cannot make {k} folds from {len(labels)} samples")
    from sklearn.model_selection import KFold

    return [(train, test) for train, test in KFold(n_splits=k, shuffle=True, random_state=seed).split(labels)]


def holdout_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept_idx, holdout_idx): a stratified share `fraction` of the samples set aside, fixed by seed.

    Classes with fewer than two members cannot be split: they stay in the kept part.
    fraction 0 keeps everything.
    """
    if labels is None:
        raise DataError("the dataset has no class labels: training and a stratified holdout need them")
    labels = np.asarray(labels)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must lie in [0, 1), got {fraction}")
    everything = np.arange(len(labels))
    if fraction == 0.0:
        return everything, everything[:0]
    values, counts = np.unique(labels, return_counts=True)
    single = np.isin(labels, values[counts < 2])
    classes = len(np.unique(labels[~single]))
    if math.floor(fraction * (~single).sum()) < classes:
        raise ValueError(f"holdout fraction {fraction} of {(~single).sum()} samples leaves fewer than one "
                         f"sample for each of the {classes} classes; raise it or use 0 (no holdout)")
    from sklearn.model_selection import train_test_split

    kept, held = train_test_split(everything[~single], test_size=fraction, random_state=seed,
                                  stratify=labels[~single])
    return np.sort(np.concatenate([kept, everything[single]])), np.sort(held)
