"""Pictures of masks: galleries (input | ground truth | PC1 response | mask, one row per image, as
a PNG) and outlines drawn on images."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

TILE = 96


def tile(array: np.ndarray, resample=Image.NEAREST) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:  # a response: scale its range to 0..255
        lo, hi = float(array.min()), float(array.max())
        array = ((array - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8)
    img = Image.fromarray(array).convert("RGB").resize((TILE, TILE), resample)
    return np.asarray(img)


def mask_gallery(images, truths, responses, masks, rows: int = 4) -> bytes:
    """PNG bytes of the first `rows` test images of a fold."""
    lines = []
    for image, truth, response, mask in list(zip(images, truths, responses, masks))[:rows]:
        lines.append(np.concatenate([tile(image, Image.BILINEAR), tile(truth), tile(response, Image.BILINEAR),
                                     tile(mask)], axis=1))
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(lines, axis=0)).save(buffer, format="PNG")
    return buffer.getvalue()


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's one-pixel inner boundary."""
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def overlay(image: np.ndarray, mask: np.ndarray, colour=(255, 255, 0)) -> np.ndarray:
    """The image with the mask's outline drawn on it (thickened to 2 pixels on large images)."""
    edge = outline(mask)
    if min(mask.shape) >= 200:
        edge[1:] |= edge[:-1]
        edge[:, 1:] |= edge[:, :-1]
    out = image.copy()
    out[edge] = colour
    return out
