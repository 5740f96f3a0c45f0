"""The training loop shared by NCA-WSS and its CNN baselines, for k folds at once.

Each fold keeps its own model, Adam optimiser, learning-rate schedule, training
images, shuffling and augmentation generator and (for the NCA) fire-mask
generator; one batch of the loop holds batch i of every fold, run as one stacked
forward and backward pass. Fold i of a k-fold run therefore computes what it
would alone, step for step:
- a fold whose images ran out this epoch (193 and 192 images give 7 and 6
  batches of 32) takes no optimiser or scheduler step; its rows are padding;
- padded rows carry zero loss weight and, the models being per-image (no batch
  statistics), leave the real rows untouched;
- each fold's loss is its own batch mean, so the summed loss gives each fold's
  parameters exactly its own gradient.
How the batches run (fold by fold, stacked, grouped, CUDA graph) is the execution plan
(plan.py). On CUDA, full stacked batches (every fold with batch_size images) replay one CUDA
graph of the forward and backward pass (config.cuda_graph); the last, short batch of an epoch
runs eagerly.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...data import Dataset
from ..config import TrainConfig
from ..images import Normalisation, TrainingImages, training_images
from ..nca.model import N_INPUT, fire_masks
from .augment import augment_colours, random_rotations, warp
from .plan import Execution, Stack

log = logging.getLogger(__name__)


def focal_terms(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Per-sample focal loss -(1 - p_t)^gamma log p_t of logits (..., classes) and targets (...)."""
    log_pt = F.log_softmax(logits.float(), dim=-1).gather(-1, target[..., None]).squeeze(-1)
    return -(1.0 - log_pt.exp()) ** gamma * log_pt


def make_optimiser(model: nn.Module, config: TrainConfig):
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    return optimiser, torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=config.lr_decay)


@dataclass(kw_only=True)
class Fold:
    """One fold's share of a batched training: its model, optimisation state, data and generators."""
    model: nn.Module
    train: TrainingImages              # the training images in [0, 1], read a batch at a time
    y: torch.Tensor                    # (N,) labels
    normalisation: Normalisation       # how the images are normalised (evaluation and the fold model do the same)
    device: torch.device               # where the model trains
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sample_gen: torch.Generator        # shuffling and augmentation (CPU)
    fire_gen: torch.Generator | None   # fire masks (on the device); None for models without them
    history: list[dict] = field(default_factory=list)
    epoch: int = 0

    def __len__(self) -> int:
        return len(self.train)

    def images(self, rows: torch.Tensor, config: TrainConfig) -> torch.Tensor:
        """The fold's training images `rows` as the model sees them, colour-augmented where configured,
        on the device. Normalised as drawn: the values of the whole fold normalised, then indexed."""
        raw = self.train.take(rows)
        if config.augments_colour:
            raw = augment_colours(raw, config.stain_jitter, config.colour_jitter, self.sample_gen)
        return self.normalisation(raw).to(self.device)

    def checkpoint(self) -> dict:
        return {"epoch": self.epoch, "model": self.model.state_dict(), "optimiser": self.optimiser.state_dict(),
                "scheduler": self.scheduler.state_dict(), "sample_rng": self.sample_gen.get_state(),
                "fire_rng": self.fire_gen.get_state() if self.fire_gen is not None else None,
                "history": list(self.history)}

    def restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimiser.load_state_dict(checkpoint["optimiser"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.sample_gen.set_state(checkpoint["sample_rng"])
        if self.fire_gen is not None:
            self.fire_gen.set_state(checkpoint["fire_rng"])
        self.history, self.epoch = list(checkpoint["history"]), checkpoint["epoch"]


def make_folds(config: TrainConfig, models: list[nn.Module], trains: list[Dataset | TrainingImages],
               device: torch.device | str, fire: bool) -> list[Fold]:
    """Each training set's fold state: its images resized and their normalisation as config says,
    labels, and the generators a fold trained alone would have (seeded by config.seed)."""
    folds = []
    for model, train in zip(models, trains):
        images, normalisation = training_images(train, config.image_size, config.normalise)
        optimiser, scheduler = make_optimiser(model, config)
        fire_gen = torch.Generator(device).manual_seed(config.seed + 1) if fire else None
        folds.append(Fold(model=model, train=images, y=torch.as_tensor(images.labels, dtype=torch.long),
                          normalisation=normalisation, device=torch.device(device), optimiser=optimiser,
                          scheduler=scheduler, sample_gen=torch.Generator().manual_seed(config.seed),
                          fire_gen=fire_gen))
    return folds


def precision_context(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def forward(stack: Stack, x: torch.Tensor, *fire: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return stack(x, *fire)


class GraphedStep:
    """Forward + backward of a fixed-shape batch captured once as a CUDA graph, then replayed.

    The inputs are copied into static buffers; the parameters' .grad tensors are
    the graph's own and are overwritten (not accumulated) by every replay.
    """

    def __init__(self, compute: Callable, params: list[torch.Tensor], example: tuple[torch.Tensor, ...]):
        # compute(*inputs) -> (loss, ...); None inputs (no fire masks) stay None
        self.inputs = tuple(None if t is None else t.clone() for t in example)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph, as CUDA graph capture requires
            for _ in range(2):
                compute(*self.inputs)[0].backward()
        torch.cuda.current_stream().wait_stream(side)
        for p in params:
            p.grad = None
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            outputs = compute(*self.inputs)
            outputs[0].backward()
        # Detached: the captured autograd graph must not outlive the capture.
        self.outputs = tuple(o.detach() for o in outputs)
        # An eager backward between replays may swap a .grad for a new tensor: point them back.
        self.params, self.grads = params, [p.grad for p in params]

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for static, value in zip(self.inputs, inputs):
            if static is not None:
                static.copy_(value)
        self.graph.replay()
        for p, g in zip(self.params, self.grads):
            p.grad = g
        return self.outputs


def hits(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per fold, the real rows (weight > 0) of logits (B, k, C) that the labels y (B, k) agree with."""
    with torch.no_grad():
        return ((logits.argmax(-1) == y) & (weight > 0)).sum(0)


class BatchedTrainer:
    """Runs epochs of k folds as one stack of models, as its execution plan says (plan.py)."""

    def __init__(self, stack: Stack, folds: list[Fold], config: TrainConfig, execution: Execution,
                 fire_rate: float | None = None, steps: int = 0):
        self.stack, self.folds, self.config, self.execution = stack, folds, config, execution
        self.fire_rate, self.steps = fire_rate, steps     # fire_rate None: the model draws no fire masks
        self.device = folds[0].device
        self.graphed: GraphedStep | None = None
        self.parts = [stack.part(i) for i in range(len(folds))] if execution.fold_by_fold else None
        # One compiled graph serves every fold (their parameters are its inputs); batches are padded
        # to one shape so that an epoch's short last batch compiles nothing new.
        self.forward = torch.compile(forward) if execution.compiled else forward

    def loss(self, x, y, weight, fire, stack: Stack | None = None):
        """(summed loss, each fold's batch-mean loss (k,), logits (B, k, C)) of `stack` (default: all folds)."""
        with precision_context(self.execution.precision, self.device):
            logits = self.forward(stack or self.stack, x, *([] if fire is None else [fire]))[0]  # fire: NCA only
        per_fold = (focal_terms(logits, y, self.config.focal_gamma) * weight).sum(0)
        return per_fold.sum(), per_fold, logits

    def epoch(self) -> list[dict]:
        """One epoch of every fold; per fold its mean training loss, accuracy and last learning rate."""
        cfg, k, device = self.config, len(self.folds), self.device
        orders = [torch.randperm(len(f), generator=f.sample_gen) for f in self.folds]  # rows of host memory
        loss_sum = torch.zeros(k, device=device)
        correct = torch.zeros(k, device=device)
        for start in range(0, max(len(f) for f in self.folds), cfg.batch_size):
            idx = [order[start:start + cfg.batch_size] for order in orders]
            sizes = [len(i) for i in idx]
            per_fold, hits = (self.stacked if self.parts is None else self.fold_by_fold)(idx, sizes)
            loss_sum += per_fold * torch.tensor(sizes, device=device)
            correct += hits
        n = torch.tensor([len(f) for f in self.folds], device=device)
        losses, accuracies = (loss_sum / n).tolist(), (correct / n).tolist()
        return [{"train_loss": losses[i], "train_accuracy": accuracies[i],
                 "lr": fold.scheduler.get_last_lr()[0]} for i, fold in enumerate(self.folds)]

    def stacked(self, idx: list[torch.Tensor], sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of every fold as one stacked forward and backward: (batch-mean losses, hits) (k,)."""
        x, y, weight, fire = self.batch(idx, sizes)
        if self.execution.cuda_graph and min(sizes) == self.config.batch_size:
            if self.graphed is None:
                self.graphed = GraphedStep(self.loss, list(self.stack.parameters()), (x, y, weight, fire))
            _, per_fold, logits = self.graphed(x, y, weight, fire)
        else:
            for fold in self.folds:
                fold.optimiser.zero_grad(set_to_none=self.graphed is None)
            loss, per_fold, logits = self.loss(x, y, weight, fire)
            loss.backward()
        for fold, size in zip(self.folds, sizes):
            if size:  # a fold whose images ran out takes no step, as it would alone
                fold.optimiser.step()
                fold.scheduler.step()
        return per_fold.detach(), hits(logits, y, weight)

    def fold_by_fold(self, idx: list[torch.Tensor], sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of each fold as its own forward, backward and step: (batch-mean losses, hits) (k,)."""
        losses, correct = torch.zeros(len(self.folds)), torch.zeros(len(self.folds))
        for i, (fold, part, rows, n) in enumerate(zip(self.folds, self.parts, idx, sizes)):
            if not n:  # a fold whose images ran out takes no step, as it would alone
                continue
            x, y, weight, fire = self.batch([rows], [n], [fold])
            fold.optimiser.zero_grad()
            loss, _, logits = self.loss(x, y, weight, fire, part)
            loss.backward()
            fold.optimiser.step()
            fold.scheduler.step()
            losses[i], correct[i] = loss.detach(), hits(logits, y, weight)[0]
        return losses, correct

    def batch(self, idx: list[torch.Tensor], sizes: list[int], folds: list[Fold] | None = None):
        """Stacked, augmented inputs (B, k, 3, S, S), labels and loss weights (B, k), fire masks
        of `folds` (default: all)."""
        cfg, folds = self.config, folds or self.folds
        k, width = len(folds), cfg.batch_size if self.execution.compiled else max(sizes)
        size = folds[0].train.size
        x = torch.zeros(width, k, N_INPUT, size, size, device=self.device)
        y = torch.zeros(width, k, dtype=torch.long, device=self.device)
        weight = torch.zeros(width, k, device=self.device)
        theta = torch.eye(2, 3).repeat(width, k, 1, 1)
        for i, (fold, rows, n) in enumerate(zip(folds, idx, sizes)):
            if n:
                x[:n, i], y[:n, i], weight[:n, i] = fold.images(rows, cfg), fold.y[rows], 1.0 / n
                if cfg.augment:
                    theta[:n, i] = random_rotations(n, fold.sample_gen)
        if cfg.augment:
            x = warp(x.view(width * k, N_INPUT, size, size), theta.view(-1, 2, 3)).view(x.shape)
        fire = None
        if self.fire_rate is not None:
            fire = fire_masks([f.fire_gen for f in folds], sizes, self.steps, width, size, size,
                              self.fire_rate, self.device)
        return x, y, weight, fire
