#!/usr/bin/env python3
"""Batched pca_otsu vs a per-image numpy + scikit-image loop on the same feature maps.

    python bench/pca_otsu.py [--n 1000] [--channels 32] [--size 64]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage.filters import threshold_otsu

from common import machine
from ncawss import pca_otsu
from ncawss.method.readout.pca_otsu import OTSU_BINS


def reference_pca_otsu(features: np.ndarray) -> tuple[np.ndarray, float]:
    """One (C, H, W) feature map: numpy PCA, scikit-image Otsu; (projection (HW,), threshold)."""
    c, h, w = features.shape
    x = features.reshape(c, -1).T.astype(np.float64)
    x = x - x.mean(0)
    _, vectors = np.linalg.eigh(x.T @ x / (h * w - 1))
    projection = x @ vectors[:, -1]
    return projection, threshold_otsu(projection)


def reference_masks(features: np.ndarray) -> list[np.ndarray]:
    """The per-image loop, sign rule included (the side holding more of the border is background)."""
    _, h, w = features.shape[1:]
    frame = np.ones((h, w), bool)
    frame[1:-1, 1:-1] = False
    masks = []
    for f in features:
        projection, tau = reference_pca_otsu(f)
        mask = (projection > tau).reshape(h, w)
        if mask[frame].sum() > (~mask)[frame].sum():
            mask = ~mask
        masks.append(mask)
    return masks


def feature_maps(n: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """Random cell-like maps: a blob of random position and size on noise, random channel gains."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    centres = rng.uniform(0.35, 0.65, (n, 2)) * size
    radii = rng.uniform(0.15, 0.3, n) * size
    blobs = np.hypot(yy - centres[:, :1, None], xx - centres[:, 1:, None]) < radii[:, None, None]
    gains = rng.normal(0, 1, (n, channels, 1, 1))
    return (gains * blobs[:, None] + rng.normal(0, 0.5, (n, channels, size, size))).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    features = feature_maps(args.n, args.channels, args.size)
    tensor = torch.from_numpy(features)

    pca_otsu(tensor[:8])  # warm-up
    start = time.perf_counter()
    result = pca_otsu(tensor)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    ref = reference_masks(features)
    loop = time.perf_counter() - start

    differing = sum(int((m.numpy() != r).sum()) for m, r in zip(result.masks, ref))
    # Pixels may differ only where the projection lies within one Otsu bin of the threshold
    # (plus float32 rounding of the batched projection: 1e-5 of its range).
    beyond_bin = 0
    for i in np.flatnonzero([(m.numpy() != r).any() for m, r in zip(result.masks, ref)]):
        projection, tau = reference_pca_otsu(features[i])
        diff = (result.masks[i].numpy() != ref[i]).flatten()
        tolerance = np.ptp(projection) * (1 / OTSU_BINS + 1e-5)
        beyond_bin += int((np.abs(projection[diff] - tau) > tolerance).sum())
    print(f"machine: {machine()}")
    print(f"{args.n} feature maps of {args.channels}x{args.size}x{args.size} (float32)\n")
    print("| implementation                   | seconds | maps/s  | speed-up |")
    print("|----------------------------------|--------:|--------:|---------:|")
    print(f"| per-image numpy + scikit-image   | {loop:7.3f} | {args.n / loop:7.0f} |    1.0x |")
    print(f"| batched pca_otsu (torch)         | {batched:7.3f} | {args.n / batched:7.0f} | {loop / batched:7.1f}x |")
    total = args.n * args.size * args.size
    print(f"\nmasks: {differing} of {total} pixels differ ({100 * differing / total:.4f}%), "
          f"{beyond_bin} of them farther than one Otsu bin from the threshold; "
          f"{int(result.degenerate.sum())} degenerate maps")


if __name__ == "__main__":
    main()
