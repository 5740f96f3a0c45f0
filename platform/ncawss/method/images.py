"""Images as the method sees them: resized to the training resolution, normalised, grouped by size,
and the one-pixel border frame that the sign rule and the colour thresholds read."""
from __future__ import annotations

from typing import Hashable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Dataset

FIXED_NORM = 0.5  # normalise "fixed": mean = std = 0.5 per channel, images in [-1, 1]
NORMALISATIONS = ("fold", "fixed")


def by_shape(shapes: Iterable[Hashable]) -> dict[Hashable, list[int]]:
    """Indices grouped by shape, in first-seen order: one batched operation per distinct size."""
    groups: dict[Hashable, list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(i)
    return groups


def border_frame(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """bool (H, W): True on the image's outer one-pixel frame."""
    frame = torch.ones(height, width, dtype=torch.bool, device=device)
    frame[1:-1, 1:-1] = False
    return frame


def resize_images(images: list[np.ndarray], size: int) -> torch.Tensor:
    """uint8 (H, W, 3) images of any size -> float (N, 3, size, size) in [0, 1], antialiased."""
    out = torch.empty(len(images), 3, size, size)
    for indices in by_shape(image.shape for image in images).values():
        x = torch.from_numpy(np.stack([images[i] for i in indices])).permute(0, 3, 1, 2).float() / 255.0
        out[indices] = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out


def normalise(raw: torch.Tensor, mean, std) -> torch.Tensor:
    """(N, 3, H, W) images minus a per-channel mean, over a per-channel std."""
    mean, std = torch.as_tensor(mean, dtype=raw.dtype), torch.as_tensor(std, dtype=raw.dtype)
    return (raw - mean[:, None, None]) / std[:, None, None]


def normalised_training_set(train: Dataset, size: int,
                            normalise_by: str = "fold") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resized training images normalised by their own channel mean/std (the training fold's only),
    or with normalise_by="fixed" by mean = std = 0.5; returns (images, mean, std)."""
    if train.labels is None or (train.labels < 0).any():
        raise ValueError(f"{train.name}: every training image needs a label")
    if normalise_by not in NORMALISATIONS:
        raise ValueError(f"unknown normalise {normalise_by!r}; choose one of {list(NORMALISATIONS)}")
    raw = resize_images(train.images, size)
    if normalise_by == "fixed":
        mean = std = torch.full((3,), FIXED_NORM)
    else:
        mean, std = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return normalise(raw, mean, std), mean, std
