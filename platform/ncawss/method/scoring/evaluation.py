"""Evaluation: a fold model's read-outs on images with masks, beside every baseline's masks on
the same images and target."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ...data import Dataset
from ..baselines import THRESHOLD_BASELINES, cam_baseline
from ..config import Readout, TrainConfig
from ..images import Normalisation, resize_images
from ..nca.model import NCAClassifier
from ..readout.components import post_process
from ..readout.pca_otsu import PCAOtsu, masks_at, pca_otsu, read_response
from ..readout.states import read_out
from ..readout.thresholds import threshold_masks
from ..training.cnn import CNNBaseline, cam_maps
from .metrics import AUTHORS_SIZE, at_authors_size, iou_each, pooled_iou
from .scores import PerReadout, Scores

log = logging.getLogger(__name__)

# How a CAM kind's maps become a response: Grad-CAM's map is one; EigenCAM is PCA-Otsu itself on
# the last block's activations.
CAM_READERS = {
    "gradcam": lambda maps, r: read_response(maps, smooth=r.smooth, orient=r.orient),
    "eigencam": lambda maps, r: pca_otsu(maps, smooth=r.smooth, orient=r.orient),
}


@dataclass(kw_only=True)
class Evaluation:
    """One read-out of a fold's model on its test images, and the baselines' masks on the same
    images and target; `scores` holds their means."""
    predictions: np.ndarray
    masks: list[np.ndarray]                    # NCA-WSS masks at the ground truth's resolution
    image_iou: np.ndarray                      # per test image, at the ground truth's resolution
    baseline_masks: dict[str, list[np.ndarray]]
    baseline_image_iou: dict[str, np.ndarray]  # per baseline (intensity, gradcam, ...), same images and target
    image_iou64: np.ndarray                    # per image at 64x64 against the nearest-resized ground truth
    responses: np.ndarray                      # (N, S, S) oriented response at training resolution
    degenerate: int
    scores: Scores


@dataclass(kw_only=True)
class TestSet:
    """Images prepared once for evaluation: normalised at the training resolution, baselines' inputs."""
    dataset: Dataset
    x: torch.Tensor                     # (N, 3, S, S), normalised as the model's training images were
    thresholds: dict[str, list[np.ndarray]]  # threshold baselines' masks at the images' resolution
    cams: dict[str, tuple[str, torch.Tensor]]  # CAM baseline name (gradcam, eigencam_large, ...) -> kind, maps
    # Baseline masks per (smooth, orient, post): they never change while the NCA trains.
    baseline_cache: dict[tuple, dict[str, list[np.ndarray]]] = field(default_factory=dict)

    @classmethod
    def prepare(cls, dataset: Dataset, normalisation: Normalisation, size: int,
                cnns: dict[str, CNNBaseline] | None = None, cam_kinds: tuple[str, ...] = (),
                device: str | torch.device = "cpu") -> TestSet:
        if dataset.masks is None:
            raise ValueError(f"{dataset.name}: evaluation needs ground-truth masks")
        raw = resize_images(dataset.images, size)
        cams = {}
        for cnn in (cnns or {}).values():
            maps = cam_maps(cnn.model().to(device), cnn.normalisation(raw).to(device))
            cams.update({cam_baseline(kind, cnn.size): (kind, getattr(maps, kind)) for kind in cam_kinds})
        per_image = [threshold_masks(image) for image in dataset.images]
        thresholds = {name: [masks[name] for masks in per_image] for name in THRESHOLD_BASELINES}
        return cls(dataset=dataset, x=normalisation(raw), thresholds=thresholds, cams=cams)

    def baseline_masks(self, readout: Readout) -> dict[str, list[np.ndarray]]:
        """Every baseline's masks at the images' resolution under a read-out's smoothing, orientation
        and post-processing (computed once per such choice)."""
        key = (readout.smooth, readout.orient, readout.post)
        if key not in self.baseline_cache:
            shapes = [m.shape for m in self.dataset.masks]
            out = {name: [post_process(m, readout.post) for m in masks] for name, masks in self.thresholds.items()}
            for name, (kind, maps) in self.cams.items():
                out[name] = masks_at(CAM_READERS[kind](maps, readout), shapes, readout.post)
            self.baseline_cache[key] = out
        return self.baseline_cache[key]


@torch.inference_mode()
def evaluate(model: NCAClassifier, test: TestSet, config: TrainConfig, device: str | torch.device = "cpu",
             variants: bool = True) -> PerReadout[Evaluation]:
    """Accuracy, NCA-WSS masks and IoU of the configured read-out and (with `variants`) of every
    variant, with every baseline's IoU on the same images and target. Masks are compared at the
    ground truth's resolution (pca_otsu.masks_at). Read-outs sharing a forward pass share its states."""
    model.eval()
    wanted = config.variant_readouts() if variants else {}
    for name, r in list(wanted.items()):
        if r.target == "nucleus" and test.dataset.nucleus is None:
            log.warning("%s: read-out %r skipped: no nucleus masks", test.dataset.name, name)
            del wanted[name]
    readouts = [config.readout, *wanted.values()]
    segments, predictions = read_out(model, test.x, readouts, config, device)
    done = [evaluation(test, r, result, pred) for r, result, pred in zip(readouts, segments, predictions)]
    return PerReadout(done[0], dict(zip(wanted, done[1:])))


def evaluation(test: TestSet, readout: Readout, result: PCAOtsu, predictions: np.ndarray) -> Evaluation:
    """One read-out's masks and IoU on the test images, beside the baselines' under its options."""
    truth = test.dataset.target_masks(readout.target)
    masks = masks_at(result, [t.shape for t in truth], readout.post, readout.upsample)
    baselines = test.baseline_masks(readout)
    labels = test.dataset.labels if test.dataset.labels is not None else np.full(len(test.dataset), -1)
    known = labels >= 0
    image_iou = iou_each(masks, truth)
    baseline_iou = {b: iou_each(m, truth) for b, m in baselines.items()}
    image_iou64, iou64_pooled = authors_iou(result, truth, readout.post, readout.upsample)
    scores = Scores(iou=float(image_iou.mean()), baselines={b: float(v.mean()) for b, v in baseline_iou.items()},
                    iou64_pooled=iou64_pooled,
                    accuracy=float((predictions[known] == labels[known]).mean()) if known.any() else float("nan"))
    return Evaluation(predictions=predictions, masks=masks, image_iou=image_iou, baseline_masks=baselines,
                      baseline_image_iou=baseline_iou, image_iou64=image_iou64,
                      responses=result.response.cpu().numpy(), degenerate=int(result.degenerate.sum()), scores=scores)


def authors_iou(result: PCAOtsu, truth: list[np.ndarray], post: str,
                upsample: str = "response") -> tuple[np.ndarray, float]:
    """Masks at 64x64 against the ground truth resized (nearest) to 64x64: per image, and as the
    authors' `pooled_iou` over batches of 32."""
    masks = masks_at(result, [(AUTHORS_SIZE, AUTHORS_SIZE)] * len(truth), post, upsample)
    small = [at_authors_size(t) for t in truth]
    return iou_each(masks, small), pooled_iou(masks, small)
