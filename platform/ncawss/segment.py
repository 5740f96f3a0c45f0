"""Masks from features: batched PCA + Otsu, the intensity baseline, and IoU.

Sign rule (PCA's first component is defined up to sign): after thresholding, the
side that holds more of the image's outer one-pixel frame is background. Single
cell crops are centred on their cell, so the cell touches the frame less than the
background does. On a tie, the smaller side is the foreground. The response is
returned oriented the same way: the foreground lies on its high side.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from skimage.color import rgb2gray
from skimage.filters import threshold_otsu

OTSU_BINS = 256  # as scikit-image's threshold_otsu


class PCAOtsu(NamedTuple):
    masks: torch.Tensor        # bool (B, H, W)
    response: torch.Tensor     # (B, H, W), projection on PC1, oriented by the sign rule
    threshold: torch.Tensor    # (B,), on the oriented response
    degenerate: torch.Tensor   # bool (B,): constant projection -> empty mask


def otsu_thresholds(values: torch.Tensor, bins: int = OTSU_BINS) -> torch.Tensor:
    """Per-row Otsu threshold of (B, N) values, as scikit-image computes it for one image."""
    lo, hi = values.amin(dim=1), values.amax(dim=1)
    span = (hi - lo).clamp_min(torch.finfo(values.dtype).tiny)
    idx = ((values - lo[:, None]) / span[:, None] * bins).long().clamp_(0, bins - 1)
    hist = torch.zeros(values.shape[0], bins, dtype=torch.float64, device=values.device)
    hist.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    step = (span / bins).double()
    offsets = torch.arange(bins, device=values.device, dtype=torch.float64) + 0.5
    centres = lo.double()[:, None] + offsets * step[:, None]
    # Both ends are non-empty (they hold the min and the max), so no division by zero.
    weight1 = hist.cumsum(1)
    weight2 = hist.flip(1).cumsum(1).flip(1)
    mean1 = (hist * centres).cumsum(1) / weight1
    mean2 = (hist * centres).flip(1).cumsum(1).flip(1) / weight2
    between = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    best = between.argmax(dim=1, keepdim=True)
    return centres.gather(1, best).squeeze(1).to(values.dtype)


def border_frame(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    frame = torch.ones(height, width, dtype=torch.bool, device=device)
    frame[1:-1, 1:-1] = False
    return frame


def pca_otsu(features: torch.Tensor, *, details: bool = False):
    """Cell masks from (B, C, H, W) features: per image PC1 projection, Otsu, sign rule.

    Returns (masks, response); with details=True a PCAOtsu that adds the
    threshold and the degenerate flag. Runs on the features' device.
    """
    b, c, h, w = features.shape
    x = features.detach().flatten(2).transpose(1, 2)               # (B, HW, C)
    x = x - x.mean(dim=1, keepdim=True)
    cov = (x.transpose(1, 2) @ x).double() / max(h * w - 1, 1)      # (B, C, C)
    _, vectors = torch.linalg.eigh(cov)
    pc1 = vectors[:, :, -1].to(x.dtype)                              # largest eigenvalue last
    projection = (x @ pc1[:, :, None]).squeeze(2)                    # (B, HW)
    span = projection.amax(dim=1) - projection.amin(dim=1)
    scale = features.detach().flatten(1).abs().amax(dim=1)
    degenerate = span <= 1e-6 * scale + torch.finfo(x.dtype).tiny
    tau = otsu_thresholds(projection)
    fg = projection > tau[:, None]

    frame = border_frame(h, w, features.device).flatten()
    fg_on_frame = fg[:, frame].sum(dim=1)
    bg_on_frame = int(frame.sum()) - fg_on_frame
    fg_area = fg.sum(dim=1)
    flip = (fg_on_frame > bg_on_frame) | ((fg_on_frame == bg_on_frame) & (2 * fg_area > h * w))
    sign = 1.0 - 2.0 * flip.to(x.dtype)
    masks = torch.where(flip[:, None], ~fg, fg) & ~degenerate[:, None]
    response = torch.where(degenerate[:, None], torch.zeros_like(projection), projection * sign[:, None])
    threshold = torch.where(degenerate, torch.zeros_like(tau), tau * sign)
    result = PCAOtsu(masks.view(b, h, w), response.view(b, h, w), threshold, degenerate)
    return result if details else (result.masks, result.response)


def iou(pred, target):
    """Foreground IoU of bool masks: (H, W) -> float; (B, H, W) -> (B,) array. Both empty -> 1."""
    pred, target = _as_bool_array(pred), _as_bool_array(target)
    if pred.shape != target.shape:
        raise ValueError(f"iou: prediction shape {pred.shape} differs from target shape {target.shape}")
    axes = (-2, -1)
    inter = np.logical_and(pred, target).sum(axis=axes)
    union = np.logical_or(pred, target).sum(axis=axes)
    value = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(value) if pred.ndim == 2 else value


def _as_bool_array(mask) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool)


def intensity_baseline(image: np.ndarray) -> np.ndarray:
    """The trivial baseline: Otsu on the grayscale image (scikit-image), dark side = cell."""
    gray = rgb2gray(image)
    if gray.min() == gray.max():
        return np.zeros(gray.shape, dtype=bool)
    return gray <= threshold_otsu(gray)
