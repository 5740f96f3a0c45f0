"""Procedural blood-smear-like crops: one white blood cell among red cells, exact masks.

Five classes differ in what a classifier can learn (nucleus shape, cytoplasm
colour, granules); the mask is the whole white cell. The images are built so a
grayscale threshold is not enough: red cells are about as dark as the white
cell's cytoplasm, and illumination is uneven. Two domains ("a", "b") differ in
stain colours and background, as two labs' images do.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from skimage.filters import gaussian

from .dataset import Dataset

CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]

# RGB in [0, 1] per domain: plasma, red cell, nucleus, and per-class cytoplasm.
DOMAINS = {
    "a": {"plasma": (0.90, 0.86, 0.72), "rbc": (0.78, 0.50, 0.50), "nucleus": (0.36, 0.22, 0.52),
          "cytoplasm": [(0.74, 0.62, 0.78), (0.62, 0.66, 0.84), (0.66, 0.64, 0.78),
                        (0.86, 0.56, 0.44), (0.58, 0.48, 0.72)], "granule": (0.82, 0.40, 0.22)},
    "b": {"plasma": (0.92, 0.82, 0.86), "rbc": (0.80, 0.44, 0.58), "nucleus": (0.24, 0.24, 0.58),
          "cytoplasm": [(0.70, 0.60, 0.84), (0.56, 0.64, 0.90), (0.62, 0.62, 0.84),
                        (0.88, 0.50, 0.52), (0.52, 0.44, 0.78)], "granule": (0.86, 0.36, 0.34)},
}
CELL_RADIUS = [0.30, 0.22, 0.34, 0.30, 0.27]  # fraction of the crop side, before scale jitter


def make_synthetic(n: int = 200, size: int = 64, seed: int = 0, domain: str = "a") -> Dataset:
    """n crops of size x size, classes balanced, deterministic given (n, size, seed, domain)."""
    return Dataset.join(list(synthetic_chunks(n, size, seed, domain)))


def synthetic_chunks(n: int = 200, size: int = 64, seed: int = 0, domain: str = "a",
                     rows: int = 256) -> Iterator[Dataset]:
    """make_synthetic's crops as Datasets of at most `rows`, drawn one chunk at a time: the same
    crops, whatever `rows` is."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; choose one of {sorted(DOMAINS)}")
    if n < 1 or size < 16:
        raise ValueError(f"synthetic data needs n >= 1 and size >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    for start in range(0, n, rows):
        part = range(start, min(n, start + rows))
        images, masks, nuclei = zip(*(draw_crop(int(labels[i]), size, DOMAINS[domain], rng) for i in part))
        yield Dataset(images=list(images), masks=list(masks), labels=labels[start:part.stop], classes=list(CLASSES),
                      ids=[f"syn{i:05d}" for i in part], name=f"synthetic-{domain}",
                      sources=[f"synthetic:{domain}:{seed}:{i}" for i in part],
                      provenance={"layout": "synthetic", "domain": domain, "seed": seed, "size": size, "n": n},
                      nucleus=list(nuclei))


def draw_crop(label: int, size: int, stain: dict,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, white-cell mask, nucleus mask)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)

    def jitter(colour, s: float = 0.04) -> np.ndarray:
        return np.clip(np.asarray(colour) + rng.normal(0, s, 3), 0, 1)

    image = np.ones((size, size, 3)) * jitter(stain["plasma"], 0.03)

    scale = rng.uniform(0.85, 1.15)
    radius = CELL_RADIUS[label] * size * scale
    cy, cx = size / 2 + rng.uniform(-0.06, 0.06, 2) * size

    # Red cells: discs with a pale centre, several of them, some touching the white cell.
    rbc = jitter(stain["rbc"])
    for _ in range(rng.integers(4, 9)):
        r = rng.uniform(0.14, 0.2) * size * scale
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(radius + 0.3 * r, 0.75 * size)
        y, x = cy + dist * np.sin(angle), cx + dist * np.cos(angle)
        d = np.hypot(yy - y, xx - x) / r
        inside = d < 1
        pale = 0.25 * np.clip(1 - d / 0.55, 0, 1)
        image[inside] = (rbc + pale[..., None] * (1 - rbc))[inside]

    # The white cell: slightly elliptic, cytoplasm, granules, nucleus.
    ey, ex = rng.uniform(0.88, 1.12, 2)
    theta = rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / ex
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / ey
    cell = np.hypot(u, v) < radius
    image[cell] = jitter(stain["cytoplasm"][label])
    add_granules(image, cell, label, stain, rng, size)
    nucleus = nucleus_shape(label, u, v, radius, rng) & cell
    image[nucleus] = jitter(stain["nucleus"], 0.05) * (0.75 if label == 4 else 1.0)

    # Uneven illumination, blur, noise, brightness.
    direction = rng.uniform(0, 2 * np.pi)
    ramp = ((xx * np.cos(direction) + yy * np.sin(direction)) / size - 0.5) * rng.uniform(0.15, 0.35)
    image = gaussian(image, sigma=0.7, channel_axis=-1) * (1 + ramp[..., None]) * rng.uniform(0.88, 1.08)
    image += rng.normal(0, 0.02, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), cell, nucleus


def add_granules(image, cell, label, stain, rng, size) -> None:
    """Coarse orange granules (eosinophil), dark granules (basophil), fine pink dust (neutrophil)."""
    count, colour, darkness = {0: (25, stain["granule"], 0.85), 3: (45, stain["granule"], 1.0),
                               4: (35, stain["nucleus"], 0.6)}.get(label, (0, None, 1.0))
    ys, xs = np.nonzero(cell)
    for k in rng.choice(len(ys), size=min(count, len(ys)), replace=False):
        y, x = ys[k], xs[k]
        image[max(y - 1, 0):y + 1, max(x - 1, 0):x + 1] = np.asarray(colour) * darkness


def nucleus_shape(label: int, u: np.ndarray, v: np.ndarray, radius: float, rng) -> np.ndarray:
    """Nucleus in cell coordinates (u, v): lobed, round, kidney, bilobed, round."""
    turn = rng.uniform(0, 2 * np.pi)
    ru, rv = u * np.cos(turn) - v * np.sin(turn), u * np.sin(turn) + v * np.cos(turn)
    if label == 0:  # neutrophil: 3-4 lobes on an arc
        lobes = rng.integers(3, 5)
        angles = np.linspace(-1.1, 1.1, lobes)
        return np.any([np.hypot(ru - 0.45 * radius * np.cos(a), rv - 0.45 * radius * np.sin(a)) < 0.25 * radius
                       for a in angles], axis=0)
    if label == 1:  # lymphocyte: large round nucleus, thin cytoplasm rim
        return np.hypot(ru - 0.08 * radius, rv) < 0.78 * radius
    if label == 2:  # monocyte: kidney shape, an ellipse with a bite
        body = np.hypot(ru / 0.72, rv / 0.5) < radius
        return body & ~(np.hypot(ru - 0.55 * radius, rv) < 0.35 * radius)
    if label == 3:  # eosinophil: two lobes
        return (np.hypot(ru - 0.35 * radius, rv) < 0.3 * radius) | (np.hypot(ru + 0.35 * radius, rv) < 0.3 * radius)
    return np.hypot(ru, rv) < 0.5 * radius  # basophil: round, under dark granules
