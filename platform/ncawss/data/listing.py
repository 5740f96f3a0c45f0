"""A raw layout's samples, listed and checked before any pixel is decoded, then decoded a chunk
at a time: converting a layout holds one chunk of images, not the dataset."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .files import read_image

# A mask file's values (nonzero = cell; with two levels, 255 = nucleus) and how many of its pixels
# reading it moved (snapped or binarised), given the file and its image's (height, width).
MaskReader = Callable[[Path, tuple[int, int]], tuple[np.ndarray, int]]


@dataclass(frozen=True)
class RawSample:
    id: str
    image: Path
    mask: Path | None  # None: the sample has no mask (it trains, it is not scored)
    label: int         # index into the classes; -1 where the layout has no labels
    source: str        # the image's path under the layout's root, as the dataset records it


@dataclass
class Listing:
    """Everything a layout's files say before their pixels are read; `chunks()` decodes them and
    counts the mask pixels reading moved, which `record()` then reports for the file's provenance."""
    samples: list[RawSample]
    name: str
    classes: list[str]
    labelled: bool
    mask_levels: int | None  # None: no masks; 1: cell; 2: nucleus and cytoplasm
    read_mask: MaskReader
    provenance: dict
    moved: str = "snapped"   # provenance keys <moved>_pixels and <moved>_masks
    moved_counts: list[int] = field(default_factory=list)

    def chunks(self, rows: int) -> Iterator[Dataset]:
        for start in range(0, len(self.samples), rows):
            yield self.decode(self.samples[start:start + rows])

    def decode(self, samples: list[RawSample]) -> Dataset:
        images = [read_image(s.image) for s in samples]
        masks: list[np.ndarray | None] = []
        for sample, image in zip(samples, images):
            values, moved = (None, 0) if sample.mask is None else self.read_mask(sample.mask, image.shape[:2])
            masks.append(values)
            self.moved_counts.append(moved)
        return Dataset(
            images=images, masks=None if self.mask_levels is None else [None if m is None else m > 0 for m in masks],
            nucleus=[None if m is None else m == 255 for m in masks] if self.mask_levels == 2 else None,
            labels=np.array([s.label for s in samples]) if self.labelled else None, classes=list(self.classes),
            ids=[s.id for s in samples], name=self.name, sources=[s.source for s in samples],
            provenance=self.provenance)

    def record(self) -> dict:
        """What converting learnt: pixels moved in all, and in how many masks."""
        return {f"{self.moved}_pixels": int(sum(self.moved_counts)),
                f"{self.moved}_masks": int(sum(c > 0 for c in self.moved_counts))}
