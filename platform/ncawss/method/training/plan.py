"""How k folds' training batches run, chosen once per training: the execution plan, and the small
protocol the NCA and CNN stacks share.

- fold by fold: each fold's batch its own forward, backward and optimiser step, in one loop over
  the batches. The default on CPU, where one stacked pass of 5 folds measured 0.87x to 1.07x the
  folds trained one after another and fold by fold 1.13x (docs/PERFORMANCE.md);
- stacked: batch i of every fold as one forward and backward pass (the default elsewhere), its
  convolutions either one after another inside the pass or `grouped` as one convolution (grouped
  measured 0.65x of one after another on CPU and within 3% of it on an H200; the Triton step
  always takes every fold in one launch), and on CUDA full batches replayed as one CUDA graph.

Precision and compilation are chosen here too (`auto`, the default, measured in docs/PERFORMANCE.md):
bf16 autocast on CPUs that compute bfloat16 natively (1.5x to 1.75x fp32 on an AMX CPU, from the
quick start's shapes to the paper's), fp32 elsewhere; torch.compile of the forward pass on a CPU
where a fold's training is long enough to repay its compilation (a minute or two on 2 cores).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..config import TrainConfig

log = logging.getLogger(__name__)

PAPER_SHAPE = 32 * 32 * 32 * 64 * 64   # channels x hidden x steps x pixels of the paper's NCA
COMPILE_PAYS_AFTER = 20_000            # a fold's training images x epochs at the paper's shape


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), where a bf16 autocast pays."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own, private: absent reads as no
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(config: TrainConfig, device: torch.device) -> str:
    if config.precision != "auto":
        return config.precision
    return "bf16" if device.type == "cpu" and native_bf16() else "fp32"


def compile_pays(config: TrainConfig, device: torch.device, images: int) -> bool:
    """compile: auto. On a CPU, when a fold trains at least COMPILE_PAYS_AFTER paper-shape images
    (compiling costs a minute or two and saves about a quarter of each bf16 step); never on CUDA, where
    the CUDA graph already removes the launch overhead and no compiled run has been measured."""
    if config.compile != "auto":
        return bool(config.compile)
    work = images * config.epochs * config.channels * config.hidden * config.steps * config.image_size ** 2
    return device.type == "cpu" and work >= COMPILE_PAYS_AFTER * PAPER_SHAPE


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
    precision: str = "fp32"  # the forward passes' precision: fp32, or bf16 (autocast)
    compiled: bool = False   # the forward pass runs torch.compile'd (batches padded to one shape)

    @classmethod
    def plan(cls, config: TrainConfig, device: torch.device | str, k: int, *, graphable: bool = True,
             fold_by_fold: bool | None = None, grouped: bool | None = None, images: int = 0) -> Execution:
        """The defaults above for k folds of `config` on `device`, each training on about `images`
        images; `graphable=False` for models whose step cannot be captured or compiled;
        fold_by_fold and grouped override the defaults (benchmarks, tests)."""
        device = torch.device(device)
        by_fold = device.type == "cpu" if fold_by_fold is None else fold_by_fold
        by_fold = by_fold and k > 1
        grouped = config.kernel == "triton" if grouped is None else grouped
        execution = cls(fold_by_fold=by_fold, grouped=grouped,
                        cuda_graph=graphable and config.cuda_graph and device.type == "cuda" and not by_fold,
                        precision=resolve_precision(config, device),
                        compiled=graphable and config.kernel == "torch" and compile_pays(config, device, images))
        log.info("training %d fold(s) on %s: %s, %s%s", k, device, "fold by fold" if by_fold else "stacked",
                 execution.precision, ", compiled" if execution.compiled else "")
        return execution
