"""Evaluation: every read-out of trained fold models on images with masks, beside the baselines,
and the majority vote of k fold models on any dataset (held-out or another domain's images)."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .baselines import CNNBaseline, baseline_name, cam_maps
from .config import Readout, TrainConfig
from .data import Dataset
from .loop import build_model, normalise, resize_images
from .nca import NCAClassifier
from .segment import PCAOtsu, intensity_baseline, iou, masks_at, pca_otsu, post_process, read_response

if TYPE_CHECKING:
    from .train import FoldResult

log = logging.getLogger(__name__)

FOLD_WEIGHTS = "weights_fold{}.pt"  # one file per fold model, holding FoldModel.record's dict


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

    def summary(self) -> dict[str, float]:
        """Mean IoU of NCA-WSS and of each baseline, and the lift over the best baseline."""
        out = {"iou": float(self.iou.mean())}
        out.update({f"{name}_iou": float(v.mean()) for name, v in self.baseline_iou.items()})
        out["lift"] = out["iou"] - max(float(v.mean()) for v in self.baseline_iou.values())
        return out


@dataclass
class TestSet:
    """Images prepared once for evaluation: normalised at the training resolution, baselines' inputs."""
    dataset: Dataset
    x: torch.Tensor                     # (N, 3, S, S), normalised with the training fold's statistics
    intensity: list[np.ndarray]         # intensity baseline masks at the images' resolution
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
        return cls(dataset, normalise(raw, mean, std), [intensity_baseline(im) for im in dataset.images], cams)


def run_means(model: NCAClassifier, x: torch.Tensor, generators: list,
              wanted: set[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Stochastic runs one after another, run r drawing from generators[r]: for each R in
    `wanted`, the (logits, state) averaged over runs 0..R-1 (running sums: one run in memory)."""
    out, total = {}, None
    for run, generator in enumerate(generators, start=1):
        logits, state = model(x, generator=generator)
        total = (logits, state) if total is None else (total[0] + logits, total[1] + state)
        if run in wanted:
            out[run] = (total[0] / run, total[1] / run)
    return out


def read_state(model: NCAClassifier, x: torch.Tensor, readout: Readout, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, state) of one read-out; `runs` stochastic runs (one after another) averaged."""
    if readout.inference == "mean_field":
        return model(x, mean_field=True)
    return run_means(model, x, [generator] * readout.runs, {readout.runs})[readout.runs]


def concat(results: list[PCAOtsu]) -> PCAOtsu:
    return PCAOtsu(*(torch.cat([getattr(r, f).cpu() for r in results]) for f in PCAOtsu._fields))


def baseline_masks(test: TestSet, readout: Readout) -> dict[str, list[np.ndarray]]:
    """Every baseline's masks at the images' resolution under a read-out's smoothing, orientation, post."""
    shapes = [m.shape for m in test.dataset.masks]
    out = {"intensity": [post_process(m, readout.post) for m in test.intensity]}
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
        masks = masks_at(result, [t.shape for t in truth], r.post)
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
            responses=result.response.numpy(), degenerate=int(result.degenerate.sum()))
    return out


def read_out(model: NCAClassifier, x: torch.Tensor, readouts: dict[str, Readout], config: TrainConfig,
             device) -> tuple[dict[str, PCAOtsu], dict[str, np.ndarray]]:
    """Per read-out, the PCA-Otsu result (on CPU) and the class predictions of normalised images x,
    read in fixed chunks of config.batch_size images (the noise does not depend on `runs`)."""
    generators = stochastic_generators(readouts, config, device)
    parts = [read_chunk(model, x[start:start + config.batch_size].to(device), readouts, generators)
             for start in range(0, len(x), config.batch_size)]
    return ({name: concat([p[0][name] for p in parts]) for name in readouts},
            {name: torch.cat([p[1][name].argmax(1).cpu() for p in parts]).numpy() for name in readouts})


def stochastic_generators(readouts: dict[str, Readout], config: TrainConfig, device) -> list[torch.Generator]:
    """Run r of every image draws from its own generator (seed + 2 + r), so a read-out of R runs
    averages runs 0..R-1 and gets the same noise whatever else is asked."""
    runs = max((r.runs for r in readouts.values() if r.inference == "stochastic"), default=0)
    return [torch.Generator(device).manual_seed(config.seed + 2 + r) for r in range(runs)]


def read_chunk(model: NCAClassifier, chunk: torch.Tensor, readouts: dict[str, Readout],
               generators: list[torch.Generator]) -> tuple[dict[str, PCAOtsu], dict[str, torch.Tensor]]:
    """Per read-out, the PCA-Otsu result and the logits of one chunk of normalised images. One
    forward pass serves every mean-field read-out, one set of stochastic runs every stochastic one;
    the generators carry on from chunk to chunk."""
    wanted = {r.runs for r in readouts.values() if r.inference == "stochastic"}
    states = {("stochastic", runs): v for runs, v in run_means(model, chunk, generators, wanted).items()}
    if any(r.inference == "mean_field" for r in readouts.values()):
        states["mean_field", 1] = model(chunk, mean_field=True)
    segments, logits = {}, {}
    for name, r in readouts.items():
        logits[name], state = states[r.inference, r.runs if r.inference == "stochastic" else 1]
        segments[name] = segment_state(state, r)
    return segments, logits


def segment_state(state: torch.Tensor, readout: Readout) -> PCAOtsu:
    """PCA-Otsu of NCA states (B, channels, H, W) under a read-out's channels, smoothing and orientation."""
    features = state if readout.channels == "all" else state[:, 3:]
    return pca_otsu(features, smooth=readout.smooth, orient=readout.orient, details=True)


def iou_each(masks: list[np.ndarray], truth: list[np.ndarray]) -> np.ndarray:
    return np.array([iou(m, t) for m, t in zip(masks, truth)])


def majority_vote(fold_masks: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per image, the pixels that more than half of the folds' masks mark."""
    k = len(fold_masks)
    return [np.sum(stack, axis=0) * 2 > k for stack in zip(*fold_masks)]


@dataclass
class FoldModel:
    """What segmenting new images needs from one trained fold: NCA weights, normalisation, CNNs."""
    state_dict: dict
    norm_mean: list[float]
    norm_std: list[float]
    n_classes: int
    cnns: dict[str, CNNBaseline] | None = None

    @classmethod
    def of(cls, fold: FoldResult, n_classes: int) -> FoldModel:
        return cls(fold.state_dict, fold.norm_mean, fold.norm_std, n_classes, fold.cnns)

    def nca(self, config: TrainConfig) -> NCAClassifier:
        """The fold's trained NCA classifier (on CPU)."""
        model = build_model(config, self.n_classes)
        model.load_state_dict(self.state_dict)
        return model

    def record(self, config: TrainConfig, classes: list[str], fold: int, test_ids: list[str], source: dict,
               cam_kinds: tuple[str, ...] | list[str] = ()) -> dict:
        """The dict saved as weights_fold<fold>.pt: everything segmenting new images needs."""
        return {"state_dict": self.state_dict, "norm_mean": self.norm_mean, "norm_std": self.norm_std,
                "n_classes": self.n_classes, "classes": list(classes), "config": config.model_dump(),
                "fold": fold, "test_ids": list(test_ids), "source": source, "cam_kinds": list(cam_kinds),
                "cnns": {size: dataclasses.asdict(cnn) for size, cnn in (self.cnns or {}).items()}}

    @classmethod
    def from_record(cls, record: dict) -> FoldModel:
        """From the dict a sweep saves as weights_fold<r>.pt."""
        cnns = {size: CNNBaseline(**values) for size, values in record.get("cnns", {}).items()} or None
        return cls(record["state_dict"], record["norm_mean"], record["norm_std"], record["n_classes"], cnns)


def read_fold_records(folder: str | Path) -> list[dict]:
    """The weights_fold<i>.pt dicts under `folder` (a sweep's best_model/, a cross_validate.py
    --save folder, a downloaded MLflow model), in fold order, on CPU."""
    return [torch.load(path, map_location="cpu", weights_only=False)
            for path in sorted(Path(folder).rglob(FOLD_WEIGHTS.format("*")))]


def score_dataset(config: TrainConfig, folds: list[FoldModel], dataset: Dataset, device: str | torch.device = "cpu",
                  cam_kinds: tuple[str, ...] = ()) -> dict[str, dict]:
    """Every fold's model segments `dataset` (held-out or another domain's images; labels optional).

    Per read-out: "iou" of the folds' majority-vote masks, "fold_iou" of each fold alone,
    "<baseline>_iou" of each baseline's majority vote over the folds' CNNs (intensity needs
    no training), and "lift" over the best baseline, all on the same images and target.
    """
    per_fold = []
    for fold in folds:
        test = TestSet.prepare(dataset, fold.norm_mean, fold.norm_std, config.image_size, fold.cnns, cam_kinds, device)
        per_fold.append(evaluate(fold.nca(config).to(device), test, config, device))
    readouts = config.readouts()
    scores = {}
    for name, evaluations in ((n, [f[n] for f in per_fold]) for n in per_fold[0]):
        truth = dataset.target_masks(readouts[name].target)
        score = {"iou": float(iou_each(majority_vote([e.masks for e in evaluations]), truth).mean()),
                 "fold_iou": [float(e.iou.mean()) for e in evaluations]}
        for baseline in evaluations[0].baseline_masks:
            vote = majority_vote([e.baseline_masks[baseline] for e in evaluations])
            score[f"{baseline}_iou"] = float(iou_each(vote, truth).mean())
        score["lift"] = score["iou"] - max(v for k, v in score.items() if k.endswith("_iou") and k != "fold_iou")
        scores[name] = score
    return scores
