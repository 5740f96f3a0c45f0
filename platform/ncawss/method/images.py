"""Images as the method sees them: resized to the training resolution, normalised, grouped by size,
the one-pixel border frame that the sign rule and the colour thresholds read, and stains: the
haematoxylin, eosin and DAB channels of colour deconvolution (scikit-image's rgb2hed, batched)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Hashable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb, rgb_from_hed

from ..data import Dataset

LOG_FLOOR = 1e-6  # scikit-image's floor before the logarithm of colour deconvolution
STAIN_SHIFT = 0.1  # a stain shift's range over its scale's: stain values of WBC crops lie near 0..0.25
FIXED_NORM = 0.5  # normalise "fixed": mean = std = 0.5 per channel, images in [-1, 1]
NORMALISATIONS = ("fold", "fixed", "image")


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


def standardise_each(raw: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) images, each channel of each image to zero mean and unit std over its own pixels:
    a per-channel affine change of an image's colours (another stain's intensity, a camera's gain
    and offset) leaves the result unchanged."""
    mean = raw.mean(dim=(2, 3), keepdim=True)
    return (raw - mean) / raw.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)


@dataclass(frozen=True)
class Normalisation:
    """How a model's input images are normalised: by a per-channel mean and std (the training
    fold's, or fixed), or with `per_image` each image by its own (mean and std then unused)."""
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    per_image: bool = False

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        return standardise_each(raw) if self.per_image else normalise(raw, self.mean, self.std)


@dataclass(frozen=True, kw_only=True)
class TrainingImages:
    """Labelled training images already resized to the training resolution, as resize_images gives
    them: what training needs of a dataset (a prepared set hands these out, prepared.py).

    They are rows of an array that may be larger (a prepared set's, mapped from shared memory) and
    are copied out only as they are read, a batch at a time (`take`): training holds no copy of
    the whole set."""
    pixels: np.ndarray                  # float32 (M, 3, S, S) in [0, 1]
    rows: np.ndarray                    # int (N,): the images, rows of pixels
    labels: np.ndarray                  # int (N,), index into classes
    classes: list[str]
    ids: list[str]
    name: str

    @classmethod
    def resized(cls, dataset: Dataset, size: int) -> TrainingImages:
        """A dataset's images resized to `size` (resize_images)."""
        return cls(pixels=resize_images(dataset.images, size).numpy(), rows=np.arange(len(dataset)),
                   labels=dataset.labels, classes=list(dataset.classes), ids=list(dataset.ids), name=dataset.name)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def size(self) -> int:
        return self.pixels.shape[-1]

    def take(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Images `batch` (positions in this set) as (B, 3, S, S) in [0, 1], a copy."""
        return torch.from_numpy(self.pixels[self.rows[np.asarray(batch)]])

    @property
    def raw(self) -> torch.Tensor:
        """All the images as (N, 3, S, S) in [0, 1], a copy."""
        return torch.from_numpy(self.pixels[self.rows])


def normalised_training_set(train: Dataset | TrainingImages, size: int,
                            normalise_by: str = "fold") -> tuple[torch.Tensor, Normalisation]:
    """Resized, normalised training images and their normalisation (see training_images)."""
    images, normalisation = training_images(train, size, normalise_by)
    return normalisation(images.raw), normalisation


def training_images(train: Dataset | TrainingImages, size: int,
                    normalise_by: str = "fold") -> tuple[TrainingImages, Normalisation]:
    """Training images resized to `size`, and their normalisation: by their own channel mean/std
    (the training fold's only, "fold"), by mean = std = 0.5 ("fixed"), or each image by its own
    ("image")."""
    if train.labels is None or (train.labels < 0).any():
        raise ValueError(f"{train.name}: every training image needs a label")
    if normalise_by not in NORMALISATIONS:
        raise ValueError(f"unknown normalise {normalise_by!r}; choose one of {list(NORMALISATIONS)}")
    if isinstance(train, TrainingImages) and train.size != size:
        raise ValueError(f"{train.name}: its images were resized to {train.size} px, not {size}")
    images = train if isinstance(train, TrainingImages) else TrainingImages.resized(train, size)
    if normalise_by == "image":
        return images, Normalisation(per_image=True)
    if normalise_by == "fixed":
        return images, Normalisation((FIXED_NORM,) * 3, (FIXED_NORM,) * 3)
    raw = images.raw  # a passing copy: the fold's statistics
    return images, Normalisation(tuple(raw.mean(dim=(0, 2, 3)).tolist()),
                                 tuple(raw.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()))


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 3, H, W) haematoxylin, eosin and DAB, as scikit-image's rgb2hed."""
    density = torch.log(rgb.clamp_min(LOG_FLOOR)) / math.log(LOG_FLOOR)
    matrix = torch.as_tensor(hed_from_rgb, dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("nchw,cd->ndhw", density, matrix).clamp_min(0)


def hed_to_rgb(stains: torch.Tensor) -> torch.Tensor:
    """The inverse of rgb_to_hed, as scikit-image's hed2rgb: (N, 3, H, W) stains -> RGB in [0, 1]."""
    matrix = torch.as_tensor(rgb_from_hed, dtype=stains.dtype, device=stains.device)
    return torch.exp(torch.einsum("nchw,cd->ndhw", stains * math.log(LOG_FLOOR), matrix)).clamp(0, 1)


def shift_stains(rgb: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB images in another stain: each stain channel times `scale` plus `shift`
    ((N, 3) or (3,) each), through colour deconvolution and back."""
    scale, shift = scale.to(rgb).reshape(-1, 3, 1, 1), shift.to(rgb).reshape(-1, 3, 1, 1)
    return hed_to_rgb(rgb_to_hed(rgb) * scale + shift)


def uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def stain_parameters(n: int, strength: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3) stain scales in [1 - s, 1 + s] and (n, 3) shifts in [-0.1 s, 0.1 s], uniform."""
    return (uniform((n, 3), 1 - strength, 1 + strength, generator),
            uniform((n, 3), -STAIN_SHIFT * strength, STAIN_SHIFT * strength, generator))


def restain(dataset: Dataset, strength: float, seed: int, source_fingerprint: str | None = None) -> Dataset:
    """A copy of `dataset` in another stain: one stain scale and shift for every image (as a lab's
    staining would differ), drawn from `seed` as stain_parameters draws a training image's; masks,
    labels and ids unchanged. The provenance records the source (`source_fingerprint`: the whole
    file's, where `dataset` is one chunk of it), scale and shift."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength {strength}: a stain shift's strength lies in (0, 1]")
    scale, shift = (t[0] for t in stain_parameters(1, strength, torch.Generator().manual_seed(seed)))
    images = []
    for image in dataset.images:
        rgb = torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255.0
        out = shift_stains(rgb, scale.double(), shift.double())[0].permute(1, 2, 0)
        images.append((out * 255.0).round().to(torch.uint8).numpy())
    record = {"restained_from": dataset.name, "source_fingerprint": source_fingerprint or dataset.fingerprint,
              "strength": strength, "seed": seed, "stain_scale": scale.tolist(), "stain_shift": shift.tolist()}
    return replace(dataset, images=images, name=f"{dataset.name}-restained", provenance={**dataset.provenance,
                                                                                         "restain": record})
