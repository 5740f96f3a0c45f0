"""CAM baselines: a small plain-torch CNN classifier, read out by Grad-CAM or EigenCAM.

The CNN is trained like the NCA (same folds, labels, focal loss, augmentation,
optimiser and epoch budget), from scratch: no pretrained weights.
- gradcam: captum's LayerGradCam for the predicted class on the last conv block
  (ReLU applied, as in the original Grad-CAM), upsampled to the training
  resolution, then the same read-out (smoothing, orientation, Otsu,
  post-processing) as NCA-WSS;
- eigencam: EigenCAM is the first principal component of the last conv block's
  activations, so it is `pca_otsu` itself on those activations, upsampled to
  the training resolution: the NCA-WSS read-out on another backbone.
Two sizes: "small" has about the parameter count of the paper's NCA classifier
(~10k), "large" about ten times more.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ...data import Dataset
from ..baselines import CNN_WIDTHS
from ..config import TrainConfig
from ..images import Normalisation, TrainingImages
from ..nca.model import stacked
from .loop import BatchedTrainer, make_folds
from .plan import Execution

log = logging.getLogger(__name__)

# TrainConfig fields a CNN baseline's training uses: its cache key, never the NCA's settings.
CNN_SETTINGS = ("epochs", "batch_size", "lr", "betas", "lr_decay", "focal_gamma", "normalise", "split", "image_size",
                "augment", "stain_jitter", "colour_jitter", "seed")


def cnn_settings(config: TrainConfig) -> dict:
    """The training options a CNN baseline depends on (never NCA hyperparameters)."""
    return {key: getattr(config, key) for key in CNN_SETTINGS}


class CNNClassifier(nn.Module):
    """Three conv blocks (3x3 conv + ReLU, 2x2 max-pool between blocks), average pool, linear head."""

    def __init__(self, width: int, n_classes: int):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width]
        blocks = []
        for i in range(3):
            layers = [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1), nn.ReLU(),
                      nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(chans[-1], n_classes)

    @property
    def last_block(self) -> nn.Module:
        return self.blocks[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: normalised (B, 3, H, W) -> (logits, last block's activations)."""
        features = self.blocks(x)
        return self.head(features.mean(dim=(2, 3))), features


class CNNStack(nn.Module):
    """k CNNs of one architecture (one per fold) as one batched model: their parameters stacked
    on a leading fold axis, the forward pass vmapped over it (convolutions become grouped ones)."""

    def __init__(self, models: list[CNNClassifier]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def part(self, i: int) -> CNNStack:
        """Fold i alone, sharing its parameters."""
        return CNNStack(list(self.models[i:i + 1]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, k, 3, H, W) -> (logits (B, k, classes), last block's activations (B, k, C, h, w))."""
        params = stacked(self.models, tuple(name for name, _ in self.models[0].named_parameters()))
        return vmap(lambda p, xi: functional_call(self.models[0], p, (xi,)), in_dims=(0, 1), out_dims=1)(params, x)


@dataclass(kw_only=True)
class CNNBaseline:
    """A CAM baseline's CNN trained on one fold: what evaluation on any images needs."""
    size: str                 # a key of CNN_WIDTHS
    n_classes: int
    state_dict: dict
    norm_mean: list[float]
    norm_std: list[float]
    seconds: float = 0.0
    norm_per_image: bool = False   # normalise: image (norm_mean and norm_std then unused)

    @property
    def normalisation(self) -> Normalisation:
        return Normalisation(tuple(self.norm_mean), tuple(self.norm_std), self.norm_per_image)

    def model(self) -> CNNClassifier:
        model = CNNClassifier(CNN_WIDTHS[self.size], self.n_classes)
        model.load_state_dict(self.state_dict)
        return model


def train_cnns(config: TrainConfig, trains: list[Dataset | TrainingImages], size: str = "small",
               device: str | torch.device = "cpu") -> list[CNNBaseline]:
    """Train one CAM baseline CNN per training fold, all folds batched, like the NCA: same labels,
    loss, augmentation, optimiser, epochs and per-fold generators."""
    started = time.perf_counter()
    config = config.replace(precision="fp32")  # baselines never change with the NCA's precision
    models = []
    for train in trains:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            models.append(CNNClassifier(CNN_WIDTHS[size], len(train.classes)).to(device))
    folds = make_folds(config, models, trains, device, fire=False)
    # No CUDA graph: vmap's dispatch is not graph-safe in every torch release; a CNN step has few launches.
    execution = Execution.plan(config, device, len(models), graphable=False)
    trainer = BatchedTrainer(CNNStack(models), folds, config, execution)
    for epoch in range(1, config.epochs + 1):
        metrics = trainer.epoch()
        log.debug("cnn %s epoch %d/%d loss %s", size, epoch, config.epochs, [m["train_loss"] for m in metrics])
    log.info("cnn %s: %d folds, %d epochs, train accuracy %s", size, len(trains), config.epochs,
             " ".join(f"{m['train_accuracy']:.3f}" for m in metrics))
    seconds = time.perf_counter() - started
    return [CNNBaseline(size=size, n_classes=len(train.classes),
                        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                        norm_mean=list(fold.normalisation.mean), norm_std=list(fold.normalisation.std),
                        norm_per_image=fold.normalisation.per_image, seconds=seconds)
            for model, train, fold in zip(models, trains, folds)]


def train_cnn(config: TrainConfig, train: Dataset, size: str = "small",
              device: str | torch.device = "cpu") -> CNNBaseline:
    """One fold's CAM baseline CNN: `train_cnns` with one fold."""
    return train_cnns(config, [train], size, device)[0]


@dataclass
class CAMMaps:
    """One CNN's maps of a set of images, at the training resolution."""
    gradcam: torch.Tensor     # (N, S, S), Grad-CAM of the predicted class, ReLU applied
    eigencam: torch.Tensor    # (N, C, S, S), last-block activations, for pca_otsu
    predictions: torch.Tensor  # (N,)


def cam_maps(model: CNNClassifier, x: torch.Tensor, batch_size: int = 32) -> CAMMaps:
    """Grad-CAM and EigenCAM inputs of normalised images x (N, 3, S, S); runs on x's device."""
    model.eval()
    size = x.shape[-2:]
    from captum.attr import LayerGradCam  # here: a worker without CAM baselines starts without captum

    gradcam = LayerGradCam(lambda inputs: model(inputs)[0], model.last_block)
    grads, acts, preds = [], [], []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        with torch.no_grad():
            logits, features = model(batch)
        pred = logits.argmax(1)
        with torch.enable_grad():
            cam = gradcam.attribute(batch, target=pred, relu_attributions=True)
        grads.append(F.interpolate(cam.detach(), size=size, mode="bilinear", align_corners=False)[:, 0].cpu())
        acts.append(F.interpolate(features, size=size, mode="bilinear", align_corners=False).cpu())
        preds.append(pred.cpu())
    if not grads:
        return CAMMaps(x.new_zeros(0, *size), x.new_zeros(0, 1, *size), torch.zeros(0, dtype=torch.long))
    return CAMMaps(torch.cat(grads), torch.cat(acts), torch.cat(preds))
