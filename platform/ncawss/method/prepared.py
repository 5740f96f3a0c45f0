"""A dataset prepared once for every training on it (a sweep's trials): its images resized to each
training resolution, its masks packed as bits, and the threshold baselines' per-image IoU under
every post-processing; full-resolution pixels only of the few samples a gallery shows.

Built chunk by chunk (a file's pixels are never all in memory at once), it is what a sweep shares
through Ray's object store: at 256 x 256 px, about 12 KB an image at 32 px training resolution
plus 8 KB a mask, where the image alone takes 196 KB. Folds cut it by index: training images
(`training`) and test folds (`test_fold`), which evaluation reads chunk by chunk with the values
the full images give."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..data import TARGETS, DataError, Dataset
from .baselines import THRESHOLD_BASELINES
from .images import Normalisation, TrainingImages, resize_images
from .readout.components import POSTS, post_process
from .readout.thresholds import threshold_masks
from .scoring.evaluation import TestSet, cam_inputs, chunk_size
from .scoring.metrics import iou
from .training.cnn import CNNBaseline


@dataclass(frozen=True)
class PackedMasks:
    """Bool masks of any sizes, 8 pixels a byte, one after another; None where a sample has none."""
    bits: np.ndarray                    # uint8
    offsets: np.ndarray                 # int64 (N + 1,): sample i's bytes are bits[offsets[i]:offsets[i + 1]]
    shapes: np.ndarray                  # int64 (N, 2); (-1, -1) where a sample has no mask

    @classmethod
    def pack(cls, masks: Sequence[np.ndarray | None]) -> PackedMasks:
        parts = [np.empty(0, np.uint8) if m is None else np.packbits(m) for m in masks]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])
        shapes = np.array([(-1, -1) if m is None else m.shape for m in masks], dtype=np.int64).reshape(-1, 2)
        return cls(np.concatenate(parts) if parts else np.empty(0, np.uint8), offsets, shapes)

    @classmethod
    def join(cls, parts: list[PackedMasks]) -> PackedMasks:
        starts = np.cumsum([0] + [len(p.bits) for p in parts[:-1]])
        return cls(np.concatenate([p.bits for p in parts]),
                   np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, starts)]).astype(np.int64),
                   np.concatenate([p.shapes for p in parts]))

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> np.ndarray | None:
        h, w = (int(v) for v in self.shapes[i])
        if h < 0:
            return None
        return np.unpackbits(self.bits[self.offsets[i]:self.offsets[i + 1]], count=h * w).reshape(h, w).view(bool)

    def present(self) -> np.ndarray:
        return self.shapes[:, 0] >= 0


@dataclass(frozen=True, kw_only=True)
class PreparedSet:
    """A dataset as every training on it needs it, with no full-resolution image but those kept."""
    name: str
    classes: list[str]
    ids: list[str]
    labels: np.ndarray                  # int (N,), -1 where unlabelled
    fingerprint: str                    # Dataset.fingerprint of the same samples
    inputs: dict[int, np.ndarray]       # training size S -> float32 (N, 3, S, S) in [0, 1], resize_images'
    masks: PackedMasks                  # cell masks
    nucleus: PackedMasks | None         # where masks have two levels
    posts: tuple[str, ...]              # the post-processings threshold_iou holds, of POSTS
    threshold_iou: np.ndarray           # (N, THRESHOLD_BASELINES, posts, TARGETS); NaN where not defined
    images: dict[int, np.ndarray]       # full-resolution images of the samples asked to keep

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_chunks(cls, chunks: Iterable[Dataset], sizes: Iterable[int], keep_images: Iterable[int] = (),
                    posts: Iterable[str] = POSTS, run: ChunkRunner | None = None) -> PreparedSet:
        """Prepare a dataset given as chunks in order (iter_dataset), at each training size in
        `sizes`, keeping the full images of samples `keep_images` (indices into the whole), with
        the threshold baselines' IoU under each post-processing in `posts`. `run` prepares the
        chunks (prepare_chunk) and gives their parts in order: by default one after another here;
        a sweep runs them as Ray tasks."""
        sizes, keep_images, posts = tuple(sorted(set(sizes))), tuple(keep_images), tuple(posts)
        digest, seen = hashlib.sha256(), 0

        def jobs() -> Iterator[tuple[Dataset, dict[int, int]]]:
            nonlocal seen
            for chunk in chunks:
                chunk.add_to_digest(digest)
                yield chunk, kept_in(keep_images, seen, len(chunk))
                seen += len(chunk)

        parts = list((run or prepare_each)(jobs(), sizes, posts))
        return cls.join(parts, digest.hexdigest())  # the digest is whole once every chunk was read

    @classmethod
    def join(cls, parts: list[PreparedSet], fingerprint: str) -> PreparedSet:
        """Chunks prepared one by one (prepare_chunk) as one set; `fingerprint`: their samples'."""
        if not parts:
            raise DataError("nothing to prepare: the dataset holds no samples")
        first = parts[0]
        return cls(name=first.name, classes=first.classes, ids=[i for p in parts for i in p.ids],
                   labels=np.concatenate([p.labels for p in parts]), fingerprint=fingerprint,
                   inputs={s: np.concatenate([p.inputs[s] for p in parts]) for s in first.inputs},
                   masks=PackedMasks.join([p.masks for p in parts]),
                   nucleus=None if first.nucleus is None else PackedMasks.join([p.nucleus for p in parts]),
                   posts=first.posts, threshold_iou=np.concatenate([p.threshold_iou for p in parts]),
                   images={i: image for p in parts for i, image in p.images.items()})

    def sized(self, size: int) -> np.ndarray:
        if size not in self.inputs:
            raise ValueError(f"{self.name}: image_size {size} was not prepared (prepared: {sorted(self.inputs)})")
        return self.inputs[size]

    def training(self, indices: Sequence[int], size: int) -> TrainingImages:
        """Samples `indices` as training images at `size`."""
        idx = np.asarray(indices, dtype=np.int64)
        return TrainingImages(pixels=self.sized(size), rows=idx, labels=self.labels[idx],
                              classes=self.classes, ids=[self.ids[i] for i in idx], name=self.name)

    def test_fold(self, indices: Sequence[int]) -> TestFold:
        return TestFold(self, np.asarray(indices, dtype=np.int64))


ChunkRunner = Callable[[Iterable[tuple[Dataset, dict[int, int]]], tuple[int, ...], tuple[str, ...]],
                       Iterable["PreparedSet"]]


def prepare_each(jobs: Iterable[tuple[Dataset, dict[int, int]]], sizes: tuple[int, ...],
                 posts: tuple[str, ...]) -> Iterator[PreparedSet]:
    """prepare_chunk of each (chunk, kept images) in turn, in this process."""
    for chunk, keep in jobs:
        yield prepare_chunk(chunk, sizes, keep, posts)


def kept_in(keep: Iterable[int], start: int, rows: int) -> dict[int, int]:
    """Of the samples `keep` (indices into the whole), those in the chunk of `rows` from `start`:
    index in the chunk -> index in the whole."""
    return {i - start: i for i in keep if start <= i < start + rows}


def prepare_chunk(chunk: Dataset, sizes: Iterable[int], keep: dict[int, int],
                  posts: Iterable[str] = POSTS) -> PreparedSet:
    """One chunk prepared, with no fingerprint (`keep`: index in the chunk -> index in the whole,
    of the images kept)."""
    posts = tuple(p for p in POSTS if p in set(posts))
    return PreparedSet(
        name=chunk.name, classes=list(chunk.classes), ids=list(chunk.ids),
        labels=np.full(len(chunk), -1) if chunk.labels is None else np.asarray(chunk.labels),
        fingerprint="", inputs={s: resize_images(chunk.images, s).numpy() for s in sorted(set(sizes))},
        masks=PackedMasks.pack(chunk.masks or [None] * len(chunk)),
        nucleus=None if chunk.nucleus is None else PackedMasks.pack(chunk.nucleus), posts=posts,
        threshold_iou=threshold_ious(chunk, posts), images={whole: chunk.images[i] for i, whole in keep.items()})


def threshold_ious(chunk: Dataset, posts: tuple[str, ...]) -> np.ndarray:
    """Per sample with a mask, each threshold baseline's IoU under each post-processing against
    every target it has (what TestSet.baseline_iou computes from the masks)."""
    out = np.full((len(chunk), len(THRESHOLD_BASELINES), len(posts), len(TARGETS)), np.nan)
    for i, image in enumerate(chunk.images):
        truth = [chunk.masks[i] if chunk.masks else None, chunk.nucleus[i] if chunk.nucleus else None]
        if truth[0] is None:
            continue
        masks = threshold_masks(image)
        for b, name in enumerate(THRESHOLD_BASELINES):
            for p, post in enumerate(posts):
                mask = post_process(masks[name], post)
                for t, target in enumerate(truth):
                    if target is not None:
                        out[i, b, p, t] = iou(mask, target)
    return out


@dataclass(frozen=True)
class TestFold:
    """A fold's test samples of a prepared set, by index."""
    prepared: PreparedSet
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def ids(self) -> list[str]:
        return [self.prepared.ids[i] for i in self.indices]

    @property
    def labels(self) -> np.ndarray:
        return self.prepared.labels[self.indices]

    def scored(self) -> TestFold:
        """The samples that have a mask (as Dataset.scored)."""
        kept = self.indices[self.prepared.masks.present()[self.indices]]
        if not len(kept):
            raise DataError(f"{self.prepared.name}: none of its {len(self)} test samples has a mask, "
                            "there is nothing to score")
        return TestFold(self.prepared, kept)

    def shown(self, rows: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The full images and masks of the first `rows` samples, as far as their images were kept."""
        images = []
        for i in self.indices[:rows]:
            if int(i) not in self.prepared.images:
                break
            images.append(self.prepared.images[int(i)])
        return images, [self.prepared.masks[int(i)] for i in self.indices[:len(images)]]

    def test_sets(self, normalisation: Normalisation, size: int, batch_size: int,
                  cnns: dict[str, CNNBaseline] | None = None, cam_kinds: tuple[str, ...] = (),
                  device: str | torch.device = "cpu") -> Iterator[TestSet]:
        """The fold as TestSets of evaluation.chunk_size(batch_size) images (the last fewer)."""
        step = chunk_size(batch_size)
        prepared, targets = self.prepared, {"cell": self.prepared.masks, "nucleus": self.prepared.nucleus}
        for start in range(0, len(self), step):
            idx = self.indices[start:start + step]
            raw = torch.from_numpy(prepared.sized(size)[idx])
            truth = {t: [masks[int(i)] for i in idx] for t, masks in targets.items() if masks is not None}
            ious = prepared.threshold_iou[idx]
            yield TestSet(name=prepared.name, ids=[prepared.ids[i] for i in idx], labels=prepared.labels[idx],
                          truth=truth, x=normalisation(raw), thresholds={},
                          cams=cam_inputs(raw, cnns, cam_kinds, device),
                          threshold_iou={(post, target): {name: ious[:, b, p, t]
                                                          for b, name in enumerate(THRESHOLD_BASELINES)}
                                         for p, post in enumerate(prepared.posts)
                                         for t, target in enumerate(TARGETS)
                                         if target in truth})
