"""Evaluation: a fold model's read-outs on images with masks, beside every baseline's masks on
the same images and target, and the majority vote of several folds' masks."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Dataset
from .baselines import CNNBaseline, baseline_name, cam_maps
from .components import post_process
from .config import Readout, TrainConfig
from .loop import normalise, resize_images
from .nca import NCAClassifier
from .readout import read_out
from .scores import Scores
from .segment import iou, masks_at, pca_otsu, pooled_iou, read_response
from .thresholds import THRESHOLD_BASELINES, threshold_masks

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """One read-out of a fold's model on its test images, and the baselines' masks on the same images."""
    accuracy: float
    iou: np.ndarray                    # per test image, at the ground truth's resolution
    baseline_iou: dict[str, np.ndarray]  # per baseline (intensity, gradcam, ...), same images and target
    predictions: np.ndarray
    masks: list[np.ndarray]            # NCA-WSS masks at the ground truth's resolution
    baseline_masks: dict[str, list[np.ndarray]]
    responses: np.ndarray              # (N, S, S) oriented response at training resolution
    degenerate: int
    iou64: np.ndarray | None = None    # per test image at 64x64 against the nearest-resized ground truth
    iou64_pooled: float = float("nan")  # the authors' metric: the same masks, pooled over batches of 32

    def scores(self) -> Scores:
        """Mean IoU of NCA-WSS and of each baseline on these images."""
        return Scores(float(self.iou.mean()), {name: float(v.mean()) for name, v in self.baseline_iou.items()},
                      iou64_pooled=self.iou64_pooled)


@dataclass
class TestSet:
    """Images prepared once for evaluation: normalised at the training resolution, baselines' inputs."""
    dataset: Dataset
    x: torch.Tensor                     # (N, 3, S, S), normalised with the training fold's statistics
    thresholds: dict[str, list[np.ndarray]]  # threshold baselines' masks at the images' resolution
    cams: dict[str, torch.Tensor]       # baseline name (gradcam, eigencam_large, ...) -> its maps
    # Baseline masks per (smooth, orient, post): they never change while the NCA trains.
    baseline_cache: dict[tuple, dict[str, list[np.ndarray]]] = field(default_factory=dict)

    @classmethod
    def prepare(cls, dataset: Dataset, mean, std, size: int, cnns: dict[str, CNNBaseline] | None = None,
                cam_kinds: tuple[str, ...] = (), device: str | torch.device = "cpu") -> TestSet:
        if dataset.masks is None:
            raise ValueError(f"{dataset.name}: evaluation needs ground-truth masks")
        raw = resize_images(dataset.images, size)
        cams = {}
        for cnn in (cnns or {}).values():
            maps = cam_maps(cnn.model().to(device), normalise(raw, cnn.norm_mean, cnn.norm_std).to(device))
            cams.update({baseline_name(kind, cnn.size): getattr(maps, kind) for kind in cam_kinds})
        per_image = [threshold_masks(image) for image in dataset.images]
        thresholds = {name: [masks[name] for masks in per_image] for name in THRESHOLD_BASELINES}
        return cls(dataset, normalise(raw, mean, std), thresholds, cams)


def baseline_masks(test: TestSet, readout: Readout) -> dict[str, list[np.ndarray]]:
    """Every baseline's masks at the images' resolution under a read-out's smoothing, orientation, post."""
    shapes = [m.shape for m in test.dataset.masks]
    out = {name: [post_process(m, readout.post) for m in masks] for name, masks in test.thresholds.items()}
    for name, maps in test.cams.items():
        if name.startswith("gradcam"):
            result = read_response(maps, smooth=readout.smooth, orient=readout.orient)
        else:
            result = pca_otsu(maps, smooth=readout.smooth, orient=readout.orient, details=True)
        out[name] = masks_at(result, shapes, readout.post)
    return out


@torch.inference_mode()
def evaluate(model: NCAClassifier, test: TestSet, config: TrainConfig, device: str | torch.device = "cpu",
             readouts: dict[str, Readout] | None = None) -> dict[str, Evaluation]:
    """Accuracy, NCA-WSS masks and IoU of each read-out (default: config.readouts()), with every
    baseline's IoU on the same images and target. Masks are compared at the ground truth's
    resolution (segment.masks_at). Read-outs sharing a forward pass share its states."""
    model.eval()
    readouts = readouts or config.readouts()
    segments, predictions = read_out(model, test.x, readouts, config, device)
    labels = test.dataset.labels if test.dataset.labels is not None else np.full(len(test.dataset), -1)
    known = labels >= 0
    out = {}
    for name, r in readouts.items():
        if r.target == "nucleus" and test.dataset.nucleus is None and name != "readout":
            log.warning("%s: read-out %r skipped: no nucleus masks", test.dataset.name, name)
            continue
        truth = test.dataset.target_masks(r.target)
        result = segments[name]
        masks = masks_at(result, [t.shape for t in truth], r.post, r.upsample)
        key = (r.smooth, r.orient, r.post)
        if key not in test.baseline_cache:
            test.baseline_cache[key] = baseline_masks(test, r)
        baselines = test.baseline_cache[key]
        pred = predictions[name]
        out[name] = Evaluation(
            accuracy=float((pred[known] == labels[known]).mean()) if known.any() else float("nan"),
            iou=iou_each(masks, truth),
            baseline_iou={b: iou_each(m, truth) for b, m in baselines.items()},
            predictions=pred, masks=masks, baseline_masks=baselines,
            responses=result.response.cpu().numpy(), degenerate=int(result.degenerate.sum()),
            **authors_iou(result, truth, r.post, r.upsample))
    return out


AUTHORS_SIZE, AUTHORS_BATCH = 64, 32


def authors_iou(result, truth: list[np.ndarray], post: str,
                upsample: str = "response") -> dict[str, float | np.ndarray]:
    """Masks at 64x64 against the ground truth resized (nearest) to 64x64: per image (`iou64`)
    and as the authors' `pooled_iou` over batches of 32 (`iou64_pooled`)."""
    masks = masks_at(result, [(AUTHORS_SIZE, AUTHORS_SIZE)] * len(truth), post, upsample)
    small = [at_authors_size(t) for t in truth]
    return {"iou64": iou_each(masks, small), "iou64_pooled": pooled_iou(masks, small, AUTHORS_BATCH)}


def at_authors_size(mask: np.ndarray) -> np.ndarray:
    """A bool mask resized (nearest) to the authors' 64x64."""
    size = (AUTHORS_SIZE, AUTHORS_SIZE)
    return F.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="nearest")[0, 0].bool().numpy()


def iou_each(masks: list[np.ndarray], truth: list[np.ndarray]) -> np.ndarray:
    """Per image IoU of bool masks of any sizes: one vectorised `iou` per distinct size."""
    out = np.empty(len(masks))
    by_shape: dict[tuple, list[int]] = {}
    for i, (m, t) in enumerate(zip(masks, truth)):
        by_shape.setdefault((m.shape, t.shape), []).append(i)
    for indices in by_shape.values():
        out[indices] = iou(np.stack([masks[i] for i in indices]), np.stack([truth[i] for i in indices]))
    return out


def majority_vote(fold_masks: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per image, the pixels that more than half of the folds' masks mark."""
    k = len(fold_masks)
    return [np.sum(stack, axis=0) * 2 > k for stack in zip(*fold_masks)]
