"""Every IoU the method reports, in one place: per image, per batch of images, pooled as the
authors pool it, between every pair of masks, and of the folds' majority vote."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..images import by_shape

AUTHORS_SIZE, AUTHORS_BATCH = 64, 32  # the authors' metric: masks at 64x64, IoU pooled over batches of 32


def iou(pred, target):
    """Foreground IoU of bool masks: (H, W) -> float; (B, H, W) -> (B,) array. Both empty -> 1."""
    pred, target = as_bool_array(pred), as_bool_array(target)
    if pred.shape != target.shape:
        raise ValueError(f"iou: prediction shape {pred.shape} differs from target shape {target.shape}")
    axes = (-2, -1)
    inter = np.logical_and(pred, target).sum(axis=axes)
    union = np.logical_or(pred, target).sum(axis=axes)
    value = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(value) if pred.ndim == 2 else value


def iou_each(masks: list[np.ndarray], truth: list[np.ndarray]) -> np.ndarray:
    """Per image IoU of bool masks of any sizes: one vectorised `iou` per distinct size."""
    out = np.empty(len(masks))
    for indices in by_shape((m.shape, t.shape) for m, t in zip(masks, truth)).values():
        out[indices] = iou(np.stack([masks[i] for i in indices]), np.stack([truth[i] for i in indices]))
    return out


def pooled_iou(pred: list[np.ndarray], target: list[np.ndarray], batch: int = AUTHORS_BATCH) -> float:
    """The NCA-WSS authors' metric: IoU pooled over each run of `batch` consecutive images (sum of
    intersections over sum of unions), then the mean over those batches. Empty unions count 1."""
    values = batch_iou(pred, target, batch)
    return float(np.mean(values)) if len(values) else float("nan")


def batch_iou(pred: list[np.ndarray], target: list[np.ndarray], batch: int = AUTHORS_BATCH) -> np.ndarray:
    """Each run of `batch` consecutive images' pooled IoU (pooled_iou's terms): images scored in
    chunks of a multiple of `batch` give the same terms, chunk after chunk."""
    values = []
    for start in range(0, len(pred), batch):
        pairs = [(as_bool_array(p), as_bool_array(t)) for p, t in zip(pred[start:start + batch],
                                                                       target[start:start + batch])]
        inter = sum(int(np.logical_and(p, t).sum()) for p, t in pairs)
        union = sum(int(np.logical_or(p, t).sum()) for p, t in pairs)
        values.append(inter / union if union else 1.0)
    return np.array(values, dtype=float)


def at_authors_size(mask: np.ndarray) -> np.ndarray:
    """A bool mask resized (nearest) to the authors' 64x64."""
    size = (AUTHORS_SIZE, AUTHORS_SIZE)
    return F.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="nearest")[0, 0].bool().numpy()


def pairwise_iou(masks: np.ndarray) -> np.ndarray:
    """(n, H, W) bool masks -> (n, n) IoU of every pair; both empty = 1."""
    flat = masks.reshape(len(masks), -1).astype(np.float32)  # exact counts below 2^24 pixels
    inter = (flat @ flat.T).astype(np.float64)
    area = flat.sum(1, dtype=np.float64)
    union = area[:, None] + area[None, :] - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def majority_vote(fold_masks: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per image, the pixels that more than half of the folds' masks mark."""
    k = len(fold_masks)
    return [np.sum(stack, axis=0) * 2 > k for stack in zip(*fold_masks)]


def as_bool_array(mask) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool)
