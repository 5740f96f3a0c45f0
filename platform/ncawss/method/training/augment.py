"""Augmentation of training batches, drawn per image from its fold's generator (deterministic given
the seed): rotation and flips, and off by default, stain and colour jitter.

- stain jitter s (computational pathology's HED augmentation): each image's haematoxylin, eosin
  and DAB channels (images.rgb_to_hed, scikit-image's colour deconvolution) each scaled by
  U(1 - s, 1 + s) and shifted by U(-0.1 s, 0.1 s) (images.STAIN_SHIFT: stain values of these
  crops lie near 0..0.25), then back to RGB;
- colour jitter c: brightness, contrast (about the image's mean gray) and saturation (about each
  pixel's gray) each scaled by U(1 - c, 1 + c), clipped to [0, 1].
Colour jitter runs on the resized RGB images before normalisation, so under `normalise: image`
only what a per-channel affine change cannot express (stain mixing, saturation) reaches a model.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..images import shift_stains, stain_parameters, uniform

GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) affine matrices: rotation in [0, 360) degrees and random horizontal/vertical flips."""
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    flip = torch.randint(0, 2, (n, 2), generator=generator) * 2 - 1
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip[:, 0], -sin * flip[:, 1]
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip[:, 0], cos * flip[:, 1]
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample (N, C, H, W) images with (N, 2, 3) affine matrices, reflection at the edges."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def gray(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    return torch.einsum("nchw,c->nhw", rgb, torch.tensor(GRAY, dtype=rgb.dtype, device=rgb.device))[:, None]


def jitter_colour(rgb: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] with (N, 3) brightness, contrast and saturation factors applied in
    that order, each result clipped to [0, 1]."""
    b, c, s = (factors[:, i].to(rgb).view(-1, 1, 1, 1) for i in range(3))
    x = (rgb * b).clamp(0, 1)
    level = gray(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - level) * c + level).clamp(0, 1)
    luma = gray(x)
    return ((x - luma) * s + luma).clamp(0, 1)


def augment_colours(rgb: torch.Tensor, stain: float, colour: float, generator: torch.Generator) -> torch.Tensor:
    """Stain, then colour jitter of (N, 3, H, W) RGB images in [0, 1]; a strength of 0 draws nothing."""
    n = len(rgb)
    if stain > 0:
        rgb = shift_stains(rgb, *stain_parameters(n, stain, generator))
    if colour > 0:
        rgb = jitter_colour(rgb, uniform((n, 3), 1 - colour, 1 + colour, generator))
    return rgb
