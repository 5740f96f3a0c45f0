"""The in-memory Dataset: images, masks (cell and nucleus), labels, ids and provenance."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

TARGETS = ("cell", "nucleus")


class DataError(ValueError):
    """Bad input data; the message names the file and the fault."""


@dataclass(kw_only=True)
class Dataset:
    images: list[np.ndarray]            # uint8 (H, W, 3), sizes may differ
    masks: list[np.ndarray | None] | None  # bool (H, W); None: no masks, or a sample's entry None: it has none
    labels: np.ndarray | None           # int (N,), index into classes; -1 = unlabelled
    classes: list[str]
    ids: list[str]
    name: str = "dataset"
    sources: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    nucleus: list[np.ndarray | None] | None = None  # bool (H, W) where masks have two levels; None where masks are

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def join(cls, chunks: list[Dataset]) -> Dataset:
        """Chunks of one dataset (as a streaming reader yields them) as one Dataset."""
        first = chunks[0]

        def joined(name: str):
            parts = [getattr(c, name) for c in chunks]
            return None if parts[0] is None else [v for part in parts for v in part]

        return replace(first, images=joined("images"), masks=joined("masks"), nucleus=joined("nucleus"),
                       ids=joined("ids"), sources=joined("sources"),
                       labels=None if first.labels is None else np.concatenate([c.labels for c in chunks]))

    def subset(self, indices) -> Dataset:
        idx = [int(i) for i in indices]
        return replace(
            self,
            images=[self.images[i] for i in idx],
            masks=None if self.masks is None else [self.masks[i] for i in idx],
            nucleus=None if self.nucleus is None else [self.nucleus[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            ids=[self.ids[i] for i in idx],
            sources=[self.sources[i] for i in idx] if self.sources else [],
        )

    @property
    def fingerprint(self) -> str:
        """sha256 over ids, pixels, masks and labels: equal content, equal fingerprint."""
        digest = hashlib.sha256()
        self.add_to_digest(digest)
        return digest.hexdigest()

    def add_to_digest(self, digest) -> None:
        """Feed the samples to a running fingerprint: a dataset's chunks, one after another, give
        the whole dataset's fingerprint (how the file writer computes it without holding them all)."""
        for i, image in enumerate(self.images):
            digest.update(self.ids[i].encode() + b"\0" + str(image.shape).encode())
            digest.update(np.ascontiguousarray(image).tobytes())
            if self.masks is not None:
                digest.update(b"\0no mask" if self.masks[i] is None else np.packbits(self.masks[i]).tobytes())
            if self.nucleus is not None and self.nucleus[i] is not None:
                digest.update(np.packbits(self.nucleus[i]).tobytes())
            if self.labels is not None:
                digest.update(int(self.labels[i]).to_bytes(4, "little", signed=True))

    @property
    def unmasked(self) -> int:
        """How many samples have no mask (all of them where the dataset has none)."""
        return len(self) if self.masks is None else sum(m is None for m in self.masks)

    def scored(self) -> Dataset:
        """The samples that have a mask: what evaluation scores (the others still train)."""
        if not self.unmasked:
            return self
        kept = [i for i, m in enumerate(self.masks or []) if m is not None]
        if not kept:
            raise DataError(f"{self.name}: none of its {len(self)} samples has a mask, there is nothing to score")
        return self.subset(kept)

    def target_masks(self, target: str = "cell") -> list[np.ndarray]:
        """Ground truth for a segmentation target: the whole cell, or the nucleus where recorded."""
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {list(TARGETS)}")
        masks = self.masks if target == "cell" else self.nucleus
        if masks is None:
            have = "no masks" if self.masks is None else "single-level masks (no nucleus level)"
            raise DataError(f"{self.name}: target {target!r} needs {target} masks, but the dataset has {have}")
        if self.unmasked:
            raise DataError(f"{self.name}: {self.unmasked} of {len(self)} samples have no mask; "
                            "score only those that do (Dataset.scored())")
        return masks

    def mask_levels(self) -> list[np.ndarray | None]:
        """uint8 masks as stored: 255 nucleus / 128 cytoplasm, or 255 cell; None where a sample has none."""
        if self.nucleus is None:
            return [None if m is None else m.astype(np.uint8) * 255 for m in self.masks]
        return [None if m is None else np.where(n, 255, np.where(m, 128, 0)).astype(np.uint8)
                for m, n in zip(self.masks, self.nucleus)]

