"""Evaluation: a fold model's read-outs on images with masks, beside every baseline's masks on
the same images and target."""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Iterable

import numpy as np
import torch

from ...data import DataError, Dataset
from ..baselines import THRESHOLD_BASELINES, cam_baseline
from ..config import Readout, TrainConfig
from ..images import Normalisation, resize_images
from ..nca.model import NCAClassifier
from ..readout.components import post_process
from ..readout.pca_otsu import PCAOtsu, masks_at, pca_otsu, read_response
from ..readout.states import read_out, stochastic_generators
from ..readout.thresholds import threshold_masks
from ..training.cnn import CNNBaseline, cam_maps
from .metrics import AUTHORS_BATCH, AUTHORS_SIZE, at_authors_size, batch_iou, iou_each
from .scores import PerReadout, Scores

log = logging.getLogger(__name__)

CHUNK = 256  # test images evaluated at once, about (chunk_size)

# How a CAM kind's maps become a response: Grad-CAM's map is one; EigenCAM is PCA-Otsu itself on
# the last block's activations.
CAM_READERS = {
    "gradcam": lambda maps, r: read_response(maps, smooth=r.smooth, orient=r.orient),
    "eigencam": lambda maps, r: pca_otsu(maps, smooth=r.smooth, orient=r.orient),
}


@dataclass(kw_only=True)
class Evaluation:
    """One read-out of a fold's model on its test images, and the baselines' masks on the same
    images and target; `scores` holds their means. Evaluated in chunks (TestSet chunks), the
    per-image values cover every image, the masks and responses the first chunk's only."""
    predictions: np.ndarray
    labels: np.ndarray                         # the images' labels, -1 where unknown
    masks: list[np.ndarray]                    # NCA-WSS masks at the ground truth's resolution
    image_iou: np.ndarray                      # per test image, at the ground truth's resolution
    baseline_masks: dict[str, list[np.ndarray]]  # those computed here (not a prepared set's thresholds)
    baseline_image_iou: dict[str, np.ndarray]  # per baseline (intensity, gradcam, ...), same images and target
    image_iou64: np.ndarray                    # per image at 64x64 against the nearest-resized ground truth
    batch_iou64: np.ndarray                    # the authors' pooled IoU of each batch of 32 (metrics.batch_iou)
    responses: np.ndarray                      # (N, S, S) oriented response at training resolution
    degenerate: int

    @property
    def scores(self) -> Scores:
        known = self.labels >= 0
        return Scores(iou=float(self.image_iou.mean()),
                      baselines={b: float(v.mean()) for b, v in self.baseline_image_iou.items()},
                      iou64_pooled=float(self.batch_iou64.mean()) if len(self.batch_iou64) else float("nan"),
                      accuracy=float((self.predictions[known] == self.labels[known]).mean()) if known.any()
                      else float("nan"))

    @classmethod
    def join(cls, parts: list[Evaluation]) -> Evaluation:
        """Chunks' evaluations as one: per-image values in order, the first chunk's masks."""
        if len(parts) == 1:
            return parts[0]

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        first = parts[0]
        return cls(predictions=cat("predictions"), labels=cat("labels"), masks=first.masks,
                   image_iou=cat("image_iou"), baseline_masks=first.baseline_masks,
                   baseline_image_iou={b: np.concatenate([p.baseline_image_iou[b] for p in parts])
                                       for b in first.baseline_image_iou},
                   image_iou64=cat("image_iou64"), batch_iou64=cat("batch_iou64"), responses=first.responses,
                   degenerate=sum(p.degenerate for p in parts))


@dataclass(kw_only=True)
class TestSet:
    """Test images prepared for evaluation: normalised at the training resolution, their ground
    truth, the baselines' inputs. The threshold baselines come as masks (`thresholds`), or, from a
    prepared set (prepared.py), as their per-image IoU already computed (`threshold_iou`)."""
    __test__ = False  # not a pytest class: tests import it
    name: str
    ids: list[str]
    labels: np.ndarray                  # -1 where unknown
    truth: dict[str, list[np.ndarray]]  # target (cell, nucleus where recorded) -> bool masks
    x: torch.Tensor                     # (N, 3, S, S), normalised as the model's training images were
    thresholds: dict[str, list[np.ndarray]]  # threshold baselines' masks at the images' resolution
    cams: dict[str, tuple[str, torch.Tensor]]  # CAM baseline name (gradcam, eigencam_large, ...) -> kind, maps
    threshold_iou: dict[tuple[str, str], dict[str, np.ndarray]] | None = None  # (post, target) -> name -> IoU
    # Baseline masks per (smooth, orient, post), the thresholds' per post: they never change while the NCA trains.
    baseline_cache: dict[tuple | str, dict[str, list[np.ndarray]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def target_masks(self, target: str) -> list[np.ndarray]:
        """Ground truth for a segmentation target; DataError where the images have none."""
        if target not in self.truth:
            raise DataError(f"{self.name}: target {target!r} needs {target} masks, but the dataset has "
                            "single-level masks (no nucleus level)")
        return self.truth[target]

    @classmethod
    def prepare(cls, dataset: Dataset, normalisation: Normalisation, size: int,
                cnns: dict[str, CNNBaseline] | None = None, cam_kinds: tuple[str, ...] = (),
                device: str | torch.device = "cpu") -> TestSet:
        if dataset.masks is None:
            raise ValueError(f"{dataset.name}: evaluation needs ground-truth masks")
        raw = resize_images(dataset.images, size)
        per_image = [threshold_masks(image) for image in dataset.images]
        truth = {"cell": dataset.target_masks("cell")}
        if dataset.nucleus is not None:
            truth["nucleus"] = dataset.target_masks("nucleus")
        return cls(name=dataset.name, ids=list(dataset.ids), labels=known_labels(dataset), truth=truth,
                   x=normalisation(raw), thresholds={name: [masks[name] for masks in per_image]
                                                     for name in THRESHOLD_BASELINES},
                   cams=cam_inputs(raw, cnns, cam_kinds, device))

    def baseline_masks(self, readout: Readout) -> dict[str, list[np.ndarray]]:
        """Every baseline's masks at the images' resolution under a read-out's smoothing, orientation
        and post-processing (computed once per such choice); none of the thresholds where their
        IoU came prepared."""
        key = (readout.smooth, readout.orient, readout.post)
        if key not in self.baseline_cache:
            if readout.post not in self.baseline_cache:  # the thresholds depend on the post-processing alone
                self.baseline_cache[readout.post] = {name: [post_process(m, readout.post) for m in masks]
                                                     for name, masks in self.thresholds.items()}
            shapes = [m.shape for m in self.truth["cell"]]
            self.baseline_cache[key] = {**self.baseline_cache[readout.post],
                                        **{name: masks_at(CAM_READERS[kind](maps, readout), shapes, readout.post)
                                           for name, (kind, maps) in self.cams.items()}}
        return self.baseline_cache[key]

    def baseline_iou(self, readout: Readout) -> dict[str, np.ndarray]:
        """Every baseline's per-image IoU under a read-out, thresholds first."""
        truth = self.target_masks(readout.target)
        prepared = {}
        if self.threshold_iou is not None:
            if (readout.post, readout.target) not in self.threshold_iou:
                raise ValueError(f"{self.name}: the thresholds' IoU was not prepared for post {readout.post!r}")
            prepared = self.threshold_iou[readout.post, readout.target]
        return {**prepared, **{b: iou_each(m, truth) for b, m in self.baseline_masks(readout).items()}}


def known_labels(dataset: Dataset) -> np.ndarray:
    return dataset.labels if dataset.labels is not None else np.full(len(dataset), -1)


def cam_inputs(raw: torch.Tensor, cnns: dict[str, CNNBaseline] | None, cam_kinds: tuple[str, ...],
               device: str | torch.device) -> dict[str, tuple[str, torch.Tensor]]:
    """Each CAM baseline's (kind, maps) of resized images `raw` (N, 3, S, S) in [0, 1]."""
    cams = {}
    for cnn in (cnns or {}).values():
        maps = cam_maps(cnn.model().to(device), cnn.normalisation(raw).to(device))
        cams.update({cam_baseline(kind, cnn.size): (kind, getattr(maps, kind)) for kind in cam_kinds})
    return cams


def chunk_size(batch_size: int) -> int:
    """Test images evaluated at once: about CHUNK, a whole number of `batch_size` and of the authors'
    batches (what chunked evaluation needs to equal evaluation at once)."""
    step = math.lcm(batch_size, AUTHORS_BATCH)
    return step * max(1, CHUNK // step)


class Evaluator:
    """A fold model's read-outs (the configured one and, with `variants`, every variant whose target
    the test images have) evaluated on test chunks in order. The stochastic read-outs' noise
    carries on from chunk to chunk, so chunks of a multiple of config.batch_size and of 32 images
    (but the last) give the values of the whole set at once."""

    def __init__(self, model: NCAClassifier, first: TestSet, config: TrainConfig,
                 device: str | torch.device = "cpu", variants: bool = True):
        model.eval()
        wanted = config.variant_readouts() if variants else {}
        for name, r in list(wanted.items()):
            if r.target not in first.truth:
                log.warning("%s: read-out %r skipped: no nucleus masks", first.name, name)
                del wanted[name]
        self.model, self.config, self.device = model, config, device
        self.names = list(wanted)
        self.readouts = [config.readout, *wanted.values()]
        self.generators = stochastic_generators(self.readouts, config, device)

    def __call__(self, test: TestSet) -> list[Evaluation]:
        """One chunk's evaluation under each read-out (the configured one first)."""
        with torch.inference_mode():
            segments, predictions = read_out(self.model, test.x, self.readouts, self.config, self.device,
                                             self.generators)
            return [evaluation(test, r, result, pred) for r, result, pred in zip(self.readouts, segments, predictions)]


def evaluate(model: NCAClassifier, tests: TestSet | Iterable[TestSet], config: TrainConfig,
             device: str | torch.device = "cpu", variants: bool = True) -> PerReadout[Evaluation]:
    """Accuracy, NCA-WSS masks and IoU of the configured read-out and (with `variants`) of every
    variant, with every baseline's IoU on the same images and target. Masks are compared at the
    ground truth's resolution (pca_otsu.masks_at). Read-outs sharing a forward pass share its states.

    `tests`: one TestSet, or its chunks in order, each a multiple of config.batch_size and of 32
    images but the last: the stochastic read-outs' noise carries on from chunk to chunk, so the
    values equal those of the whole set at once."""
    chunks = iter([tests] if isinstance(tests, TestSet) else tests)  # made outside inference mode: CAMs need grads
    first = next(chunks)
    evaluator = Evaluator(model, first, config, device, variants)
    parts = []
    for test in itertools.chain([first], chunks):
        parts.append(evaluator(test))
        if len(parts) > 1:  # the first chunk's masks only
            parts[-1] = [replace(e, masks=[], baseline_masks={}, responses=e.responses[:0]) for e in parts[-1]]
    done = [Evaluation.join([p[i] for p in parts]) for i in range(len(evaluator.readouts))]
    return PerReadout(done[0], dict(zip(evaluator.names, done[1:])))


def evaluation(test: TestSet, readout: Readout, result: PCAOtsu, predictions: np.ndarray) -> Evaluation:
    """One read-out's masks and IoU on the test images, beside the baselines' under its options."""
    truth = test.target_masks(readout.target)
    masks = masks_at(result, [t.shape for t in truth], readout.post, readout.upsample)
    image_iou64, batch_iou64 = authors_iou(result, truth, readout.post, readout.upsample)
    return Evaluation(predictions=predictions, labels=test.labels, masks=masks, image_iou=iou_each(masks, truth),
                      baseline_masks=test.baseline_masks(readout), baseline_image_iou=test.baseline_iou(readout),
                      image_iou64=image_iou64, batch_iou64=batch_iou64, responses=result.response.cpu().numpy(),
                      degenerate=int(result.degenerate.sum()))


def authors_iou(result: PCAOtsu, truth: list[np.ndarray], post: str,
                upsample: str = "response") -> tuple[np.ndarray, np.ndarray]:
    """Masks at 64x64 against the ground truth resized (nearest) to 64x64: per image, and the
    authors' pooled IoU of each batch of 32 (their `pooled_iou` is the mean of these)."""
    masks = masks_at(result, [(AUTHORS_SIZE, AUTHORS_SIZE)] * len(truth), post, upsample)
    small = [at_authors_size(t) for t in truth]
    return iou_each(masks, small), batch_iou(masks, small)
