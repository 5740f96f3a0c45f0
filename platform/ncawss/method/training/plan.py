"""How k folds' training batches run, chosen once per training: the execution plan, and the small
protocol the NCA and CNN stacks share.

- fold by fold: each fold's batch its own forward, backward and optimiser step, in one loop over
  the batches. The default on CPU, where one stacked pass of 5 folds measured 0.87x to 1.07x the
  folds trained one after another and fold by fold 1.13x (docs/PERFORMANCE.md);
- stacked: batch i of every fold as one forward and backward pass (the default elsewhere), its
  convolutions either one after another inside the pass or `grouped` as one convolution (grouped
  measured 0.65x of one after another on CPU and within 3% of it on an H200; the Triton step
  always takes every fold in one launch), and on CUDA full batches replayed as one CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..config import TrainConfig


class Stack(Protocol):
    """k models of one configuration run as one (nca.model.FoldStack, cnn.CNNStack)."""
    models: nn.ModuleList

    def __call__(self, x: torch.Tensor, *fire: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, k, 3, S, S) [, the NCA's fire masks] -> (logits (B, k, classes), features)."""

    def part(self, i: int) -> Stack:
        """Fold i alone, sharing its parameters."""

    def parameters(self):
        """Every fold's parameters."""


@dataclass(frozen=True)
class Execution:
    fold_by_fold: bool     # each fold its own forward, backward and step
    grouped: bool          # a stacked pass runs the folds' convolutions as one grouped convolution
    cuda_graph: bool       # full stacked batches replay one captured CUDA graph

    @classmethod
    def plan(cls, config: TrainConfig, device: torch.device | str, k: int, *, graphable: bool = True,
             fold_by_fold: bool | None = None, grouped: bool | None = None) -> Execution:
        """The defaults above for k folds of `config` on `device`; `graphable=False` for models whose
        step cannot be captured; fold_by_fold and grouped override the defaults (benchmarks, tests)."""
        device = torch.device(device)
        by_fold = device.type == "cpu" if fold_by_fold is None else fold_by_fold
        by_fold = by_fold and k > 1
        grouped = config.kernel == "triton" if grouped is None else grouped
        return cls(fold_by_fold=by_fold, grouped=grouped,
                   cuda_graph=graphable and config.cuda_graph and device.type == "cuda" and not by_fold)
