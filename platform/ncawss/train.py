"""One fold of NCA-WSS start to end, and sequential k-fold cross-validation."""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import Dataset, stratified_folds
from .nca import NCAClassifier, focal_loss
from .segment import intensity_baseline, iou, pca_otsu

log = logging.getLogger(__name__)

READOUTS = ("stochastic", "mean_field")


class FoldHooks:
    """Callbacks of train_fold; subclass and override what you need."""

    def on_epoch(self, epoch: int, metrics: dict) -> None:
        """Called after each epoch (1-based) with its training (and evaluation) metrics."""

    def save_checkpoint(self, checkpoint: dict) -> None:
        """Called after each epoch with a self-contained checkpoint (a copy, safe to keep)."""

    def load_checkpoint(self) -> dict | None:
        """Called once at the start: a checkpoint to continue from, or None."""
        return None


@dataclass
class Evaluation:
    accuracy: float
    iou: np.ndarray             # per test image, at the ground truth's resolution
    baseline_iou: np.ndarray    # intensity baseline on the same images
    predictions: np.ndarray
    masks: list[np.ndarray]     # NCA-WSS masks at the ground truth's resolution
    responses: np.ndarray       # (N, S, S) oriented PC1 response at training resolution
    degenerate: int


@dataclass
class FoldResult:
    accuracy: float
    iou: float
    baseline_iou: float
    readout_iou: dict[str, float]  # mean IoU of each read-out of the same weights
    evaluation: Evaluation
    test_ids: list[str]
    history: list[dict]
    state_dict: dict
    norm_mean: list[float]
    norm_std: list[float]
    epochs: int
    seconds: float


@dataclass
class CVResult:
    folds: list[FoldResult] = field(default_factory=list)

    @property
    def fold_iou(self) -> list[float]:
        return [f.iou for f in self.folds]

    @property
    def fold_baseline_iou(self) -> list[float]:
        return [f.baseline_iou for f in self.folds]

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.fold_iou))

    @property
    def std_iou(self) -> float:
        return float(np.std(self.fold_iou))

    @property
    def mean_baseline_iou(self) -> float:
        return float(np.mean(self.fold_baseline_iou))

    @property
    def std_baseline_iou(self) -> float:
        return float(np.std(self.fold_baseline_iou))

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean([f.accuracy for f in self.folds]))


def resize_images(images: list[np.ndarray], size: int) -> torch.Tensor:
    """uint8 (H, W, 3) images of any size -> float (N, 3, size, size) in [0, 1], antialiased."""
    out = torch.empty(len(images), 3, size, size)
    for i, image in enumerate(images):
        x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255.0
        out[i] = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation in [0, 360) degrees and random horizontal/vertical flips, one resampling."""
    b = x.shape[0]
    angle = torch.rand(b, generator=generator) * 2 * math.pi
    flip = torch.randint(0, 2, (b, 2), generator=generator) * 2 - 1
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip[:, 0], -sin * flip[:, 1]
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip[:, 0], cos * flip[:, 1]
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def build_model(config: TrainConfig, n_classes: int) -> NCAClassifier:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        return NCAClassifier(config.channels, config.hidden, config.steps, config.fire_rate,
                             n_classes, config.head_hidden)


def train_fold(config: TrainConfig, train: Dataset, test: Dataset, hooks: FoldHooks | None = None,
               device: str | torch.device = "cpu") -> FoldResult:
    """Train NCA-WSS on `train` (image labels only), evaluate on `test`. Deterministic given config.seed."""
    hooks = hooks or FoldHooks()
    started = time.perf_counter()
    if train.labels is None or (train.labels < 0).any():
        raise ValueError(f"{train.name}: every training image needs a label")
    raw = resize_images(train.images, config.image_size)
    mean, std = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3)).clamp_min(1e-6)  # training fold only
    x_train = ((raw - mean[:, None, None]) / std[:, None, None]).to(device)
    y_train = torch.as_tensor(train.labels, dtype=torch.long, device=device)
    test_set = TestSet.prepare(test, mean, std, config.image_size)

    model = build_model(config, len(train.classes)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=config.lr_decay)
    sample_gen = torch.Generator().manual_seed(config.seed)  # shuffling and augmentation
    fire_gen = torch.Generator(device).manual_seed(config.seed + 1)  # fire masks
    history: list[dict] = []
    start_epoch = 0
    checkpoint = hooks.load_checkpoint()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        sample_gen.set_state(checkpoint["sample_rng"])
        fire_gen.set_state(checkpoint["fire_rng"])
        history, start_epoch = list(checkpoint["history"]), checkpoint["epoch"]
        log.info("resuming fold from epoch %d", start_epoch)

    for epoch in range(start_epoch + 1, config.epochs + 1):
        metrics = train_epoch(model, optimiser, scheduler, x_train, y_train, config, sample_gen, fire_gen)
        metrics["epoch"] = epoch
        if config.eval_every and epoch % config.eval_every == 0 and epoch < config.epochs:
            ev = evaluate(model, test_set, config, device)
            metrics.update(test_accuracy=ev.accuracy, test_iou=float(ev.iou.mean()))
        history.append(metrics)
        log.info("epoch %d/%d %s", epoch, config.epochs,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"))
        hooks.on_epoch(epoch, metrics)
        hooks.save_checkpoint(copy.deepcopy({
            "epoch": epoch, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(), "sample_rng": sample_gen.get_state(),
            "fire_rng": fire_gen.get_state(), "history": history}))

    # Both read-outs of the same weights: the configured one is the fold's result.
    evaluations = {r: evaluate(model, test_set, config.model_copy(update={"readout": r}), device)
                   for r in READOUTS}
    ev = evaluations[config.readout]
    return FoldResult(
        accuracy=ev.accuracy, iou=float(ev.iou.mean()), baseline_iou=float(ev.baseline_iou.mean()),
        readout_iou={r: float(e.iou.mean()) for r, e in evaluations.items()},
        evaluation=ev, test_ids=list(test.ids), history=history,
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        norm_mean=mean.tolist(), norm_std=std.tolist(), epochs=config.epochs,
        seconds=time.perf_counter() - started)


def train_epoch(model, optimiser, scheduler, x, y, config: TrainConfig, sample_gen, fire_gen) -> dict:
    model.train()
    order = torch.randperm(len(x), generator=sample_gen).to(x.device)
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), config.batch_size):
        idx = order[start:start + config.batch_size]
        batch = augment(x[idx], sample_gen) if config.augment else x[idx]
        logits, _ = model(batch, generator=fire_gen)
        loss = focal_loss(logits, y[idx], config.focal_gamma)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y[idx]).sum())
    return {"train_loss": total_loss / len(x), "train_accuracy": correct / len(x),
            "lr": scheduler.get_last_lr()[0]}


@dataclass
class TestSet:
    """A fold's test images prepared once: normalised at the training resolution, baseline scored."""
    dataset: Dataset
    x: torch.Tensor               # (N, 3, S, S), normalised with the training fold's statistics
    baseline_iou: np.ndarray      # intensity baseline per image, at the ground truth's resolution

    @classmethod
    def prepare(cls, dataset: Dataset, mean: torch.Tensor, std: torch.Tensor, size: int) -> TestSet:
        if dataset.masks is None:
            raise ValueError(f"{dataset.name}: evaluation needs ground-truth masks")
        x = (resize_images(dataset.images, size) - mean[:, None, None]) / std[:, None, None]
        baseline = np.array([iou(intensity_baseline(im), gt) for im, gt in zip(dataset.images, dataset.masks)])
        return cls(dataset, x, baseline)


@torch.inference_mode()
def evaluate(model: NCAClassifier, test: TestSet, config: TrainConfig,
             device: str | torch.device = "cpu") -> Evaluation:
    """Accuracy, NCA-WSS masks and IoU, and the intensity baseline's IoU on the same images.

    Masks are compared at the ground truth's resolution: the PC1 response is
    upsampled bilinearly from the training resolution and cut at the threshold
    Otsu chose at the training resolution.
    """
    model.eval()
    dataset, x = test.dataset, test.x
    fire_gen = torch.Generator(device).manual_seed(config.seed + 2)
    predictions, responses, thresholds, degenerate = [], [], [], []
    for start in range(0, len(x), config.batch_size):
        logits, state = model(x[start:start + config.batch_size].to(device), generator=fire_gen,
                             mean_field=config.readout == "mean_field")
        seg = pca_otsu(state, details=True)
        predictions.append(logits.argmax(1).cpu())
        responses.append(seg.response.cpu())
        thresholds.append(seg.threshold.cpu())
        degenerate.append(seg.degenerate.cpu())
    predictions, responses = torch.cat(predictions).numpy(), torch.cat(responses)
    thresholds, degenerate = torch.cat(thresholds), torch.cat(degenerate)
    masks = [upsample_mask(r, t, d, gt.shape) for r, t, d, gt in zip(responses, thresholds, degenerate, dataset.masks)]
    labels = dataset.labels if dataset.labels is not None else np.full(len(dataset), -1)
    known = labels >= 0
    return Evaluation(
        accuracy=float((predictions[known] == labels[known]).mean()) if known.any() else float("nan"),
        iou=np.array([iou(m, gt) for m, gt in zip(masks, dataset.masks)]),
        baseline_iou=test.baseline_iou,
        predictions=predictions, masks=masks, responses=responses.numpy(), degenerate=int(degenerate.sum()))


def upsample_mask(response: torch.Tensor, threshold: torch.Tensor, degenerate: torch.Tensor,
                  shape: tuple[int, int]) -> np.ndarray:
    if degenerate:
        return np.zeros(shape, dtype=bool)
    up = F.interpolate(response[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
    return (up > threshold).numpy()


def cross_validate(config: TrainConfig, dataset: Dataset, k: int = 5, seed: int = 0,
                   device: str | torch.device = "cpu") -> CVResult:
    """Stratified k-fold cross-validation, folds trained one after another."""
    result = CVResult()
    for i, (train_idx, test_idx) in enumerate(stratified_folds(dataset.labels, k, seed)):
        log.info("fold %d/%d: %d train, %d test images", i + 1, k, len(train_idx), len(test_idx))
        fold = train_fold(config, dataset.subset(train_idx), dataset.subset(test_idx), device=device)
        log.info("fold %d/%d: IoU %.3f (intensity baseline %.3f), accuracy %.3f, %.0f s",
                 i + 1, k, fold.iou, fold.baseline_iou, fold.accuracy, fold.seconds)
        result.folds.append(fold)
    return result
