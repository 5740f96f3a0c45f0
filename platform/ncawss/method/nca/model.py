"""The NCA-WSS backbone and classifier, for one model or for k folds at once.

One step of the automaton, as in the paper: perception by two learned depthwise
3x3 filters (reflect padding), concat(S, p0(S), p1(S)) -> MLP (3n -> hidden -> n,
last layer zero-initialised and bias-free) -> stochastic per-pixel update.

The parameters are stored in that published form (so weights load into a
reference implementation), but the forward pass runs a fused equivalent:
identity + depthwise filters + first MLP layer are one dense 3x3 convolution,
and the contribution of the fixed RGB channels is computed once, not every step.

The k folds of a cross-validation share every hyperparameter and array shape, so
`FoldStack` runs k classifiers as one model: one forward pass over (B, k, 3, H, W)
inputs, their states side by side on the channel axis, (B, k * channels, H, W),
the convolutions grouped by fold or run fold by fold (the default). A single
`NCAClassifier` is the same code with k = 1. Fire masks are drawn before
the step loop (one draw per fold and batch, from that fold's generator), so the
loop itself holds no random number generation and can be captured as a CUDA graph.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ..config import TrainConfig

N_INPUT = 3  # RGB channels, held fixed at every step


class NCA(nn.Module):
    """Neural cellular automaton on a (B, channels, H, W) state."""

    def __init__(self, channels: int = 32, hidden: int = 32, steps: int = 32, fire_rate: float = 0.5):
        super().__init__()
        if channels <= N_INPUT:
            raise ValueError(f"channels must exceed {N_INPUT} (the RGB input), got {channels}")
        if not 0.0 <= fire_rate <= 1.0:
            raise ValueError(f"fire_rate must lie in [0, 1], got {fire_rate}")
        self.channels, self.hidden, self.steps, self.fire_rate = channels, hidden, steps, fire_rate
        self.p0 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", groups=channels)
        self.p1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", groups=channels)
        self.fc0 = nn.Linear(3 * channels, hidden)
        self.fc1 = nn.Linear(hidden, channels, bias=False)
        nn.init.zeros_(self.fc1.weight)  # the untrained NCA is the identity

    def forward(self, rgb: torch.Tensor, steps: int | None = None, fire_rate: float | None = None,
                generator: torch.Generator | None = None, mean_field: bool = False) -> torch.Tensor:
        """Run the automaton from a (B, 3, H, W) input; returns the (B, channels, H, W) state.

        mean_field=True replaces the random fire mask by its expectation
        (S <- S + fire_rate * dS): a deterministic read-out of the same weights.
        """
        steps, fire = self.fire(rgb, steps, fire_rate, generator, mean_field)
        return run_nca(fused_weights(stacked([self], PARAMETERS)), rgb[:, None], steps, fire)[:, 0]

    def fire(self, x: torch.Tensor, steps: int | None, fire_rate: float | None, generator: torch.Generator | None,
             mean_field: bool) -> tuple[int, torch.Tensor | float]:
        """(steps, fire) for one forward pass over x (B, 3, H, W): the defaults filled in, and the
        fire masks drawn from `generator`, or with mean_field the fire rate itself."""
        steps = self.steps if steps is None else steps
        fire_rate = self.fire_rate if fire_rate is None else fire_rate
        b, _, h, w = x.shape
        return steps, fire_rate if mean_field else fire_masks([generator], [b], steps, b, h, w, fire_rate, x.device)


class Fused(NamedTuple):
    """The published parameters of k NCAs as the grouped convolutions the step loop runs."""
    rgb_kernel: torch.Tensor   # (k * hidden, 3, 3, 3): the fixed RGB channels' share of the first layer
    kernel: torch.Tensor       # (k * hidden, channels - 3, 3, 3)
    bias: torch.Tensor         # (k * hidden,)
    out: torch.Tensor          # (k * (channels - 3), hidden, 1, 1): RGB rows would be discarded anyway


PARAMETERS = ("p0.weight", "p0.bias", "p1.weight", "p1.bias", "fc0.weight", "fc0.bias", "fc1.weight")
HEAD = ("0.weight", "0.bias", "2.weight", "2.bias")


def stacked(modules: list[nn.Module], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Parameters `names` of k modules with a leading fold axis (differentiable). Attribute look-up,
    not get_parameter, so that torch.func.functional_call's substituted tensors are seen too."""
    return {name: torch.stack([functools.reduce(getattr, name.split("."), m) for m in modules]) for name in names}


def fused_weights(p: dict[str, torch.Tensor]) -> Fused:
    """Identity + both depthwise filters + the first MLP layer as one dense 3x3 kernel per fold."""
    k, hidden, three_n = p["fc0.weight"].shape
    n = three_n // 3
    w_id, w_p0, w_p1 = p["fc0.weight"].split(n, dim=2)                # each (k, hidden, n)
    kernel = (F.pad(w_id[..., None, None], (1, 1, 1, 1))                # identity: the centre tap only
              + w_p0[..., None, None] * p["p0.weight"][:, None, :, 0]
              + w_p1[..., None, None] * p["p1.weight"][:, None, :, 0])  # (k, hidden, n, 3, 3)
    bias = (p["fc0.bias"] + torch.einsum("khn,kn->kh", w_p0, p["p0.bias"])
            + torch.einsum("khn,kn->kh", w_p1, p["p1.bias"]))
    kernel = kernel.reshape(k * hidden, n, 3, 3)
    out = p["fc1.weight"][:, N_INPUT:].reshape(k * (n - N_INPUT), hidden, 1, 1)
    return Fused(kernel[:, :N_INPUT], kernel[:, N_INPUT:], bias.reshape(-1), out)


def fire_masks(generators: list[torch.Generator | None], sizes: list[int], steps: int, batch: int,
               height: int, width: int, fire_rate: float, device: torch.device | str) -> torch.Tensor:
    """0/1 float (steps, batch, k, 1, H, W) fire masks: fold i's first sizes[i] rows drawn from its
    generator in one call, rows beyond them (padding) never fire."""
    out = torch.zeros(steps, batch, len(sizes), 1, height, width, device=device)
    for i, (generator, size) in enumerate(zip(generators, sizes)):
        if size:
            draw = torch.rand(steps, size, 1, height, width, generator=generator, device=device)
            out[:, :size, i] = (draw < fire_rate).float()
    return out


KERNELS = ("torch", "triton")


def run_nca(weights: Fused, rgb: torch.Tensor, steps: int, fire: torch.Tensor | float,
            align: int = 1, kernel: str = "torch") -> torch.Tensor:
    """k NCAs on (B, k, 3, H, W) inputs -> (B, k, channels, H, W) states.

    fire: (steps, B, k, 1, H, W) masks, or a float that scales every update (mean field).
    align: the hidden channels are padded with channels that stay zero up to a multiple of
    `align` (8 lets GPU convolution kernels use tensor cores: 29 hidden channels become 32).
    Channels-last layout: measured 1.15x faster than channels-first on CPU (oneDNN).
    kernel: "torch" (these convolutions) or "triton" (each step one fused kernel, triton_step.py).
    """
    b, k, _, h, w = rgb.shape
    n = weights.out.shape[0] // k
    m = -(-n // align) * align                                          # padded hidden channels
    hidden = weights.kernel.shape[0] // k
    layout = torch.channels_last
    kernel_w = F.pad(weights.kernel, (0, 0, 0, 0, 0, m - n)).contiguous(memory_format=layout)
    out = F.pad(weights.out.view(k, n, hidden), (0, 0, 0, m - n)).view(k * m, hidden, 1, 1)
    out = out.contiguous(memory_format=layout)
    x = rgb.reshape(b, k * N_INPUT, h, w).contiguous(memory_format=layout)
    # The RGB channels never change, so their share of the first layer is constant.
    base = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), weights.rgb_kernel, weights.bias, groups=k)
    state = x.new_zeros(b, k * m, h, w).contiguous(memory_format=layout)
    if kernel == "triton":
        from .triton_step import triton_steps  # imports Triton only where it runs

        # As torch's convolutions do, the kernel honours a bfloat16 autocast around it.
        bf16 = torch.is_autocast_enabled(x.device.type) and torch.get_autocast_dtype(x.device.type) == torch.bfloat16
        state = triton_steps(state, base, kernel_w, out, fire, steps, k, bf16)
    else:
        for step in range(steps):
            z = F.conv2d(F.pad(state, (1, 1, 1, 1), mode="reflect"), kernel_w, groups=k).add_(base).relu_()
            update = F.conv2d(z, out, groups=k).to(state.dtype)
            if isinstance(fire, torch.Tensor):
                state = torch.addcmul(state.view(b, k, m, h, w), update.view(b, k, m, h, w), fire[step])
                state = state.view(b, k * m, h, w)
            else:
                state = state.add(update, alpha=fire)
    return torch.cat([rgb, state.reshape(b, k, m, h, w)[:, :, :n].to(rgb.dtype)], dim=2)


POOLS = ("mean", "max")


class NCAClassifier(nn.Module):
    """NCA backbone + pooling over pixels (mean as in the paper, or max) + MLP head (n -> 128 -> classes)."""

    def __init__(self, channels: int = 32, hidden: int = 32, steps: int = 32, fire_rate: float = 0.5,
                 n_classes: int = 5, head_hidden: int = 128, pool: str = "mean", kernel: str = "torch"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {list(POOLS)}")
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {list(KERNELS)}")
        self.pool, self.kernel = pool, kernel
        self.nca = NCA(channels, hidden, steps, fire_rate)
        self.head = nn.Sequential(nn.Linear(channels, head_hidden), nn.ReLU(), nn.Linear(head_hidden, n_classes))

    @classmethod
    def from_config(cls, config: TrainConfig, n_classes: int) -> NCAClassifier:
        """A new classifier of `config`'s shape, its initial weights seeded by config.seed (the
        caller's random state untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return cls(config.channels, config.hidden, config.steps, config.fire_rate, n_classes,
                       config.head_hidden, config.pool, config.kernel)

    def forward(self, x: torch.Tensor, steps: int | None = None, fire_rate: float | None = None,
                generator: torch.Generator | None = None,
                mean_field: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x: normalised (B, 3, H, W) -> (logits (B, classes), state (B, channels, H, W))."""
        steps, fire = self.nca.fire(x, steps, fire_rate, generator, mean_field)
        logits, state = FoldStack([self])(x[:, None], fire, steps)
        return logits[:, 0], state[:, 0]


class FoldStack(nn.Module):
    """k NCA classifiers of one configuration (one per fold) run as one batched model.

    Each fold keeps its own parameters (its own module, optimiser and scheduler);
    the forward pass stacks them, so fold i computes exactly what it would alone.
    """

    def __init__(self, models: list[NCAClassifier], grouped: bool = False):
        super().__init__()
        self.models = nn.ModuleList(models)
        # grouped: the folds' convolutions as one grouped convolution, else one after another
        # inside the one forward pass (training/plan.py chooses; the Triton step is always grouped).
        self.grouped = grouped

    def part(self, i: int) -> FoldStack:
        """Fold i alone, sharing its parameters."""
        return FoldStack(list(self.models[i:i + 1]), self.grouped)

    def forward(self, x: torch.Tensor, fire: torch.Tensor | float,
                steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, k, 3, H, W); fire: see run_nca -> (logits (B, k, classes), state (B, k, channels, H, W))."""
        steps = self.models[0].nca.steps if steps is None else steps
        if not self.grouped and len(self.models) > 1:
            parts = [classify(self.models[i:i + 1], x[:, i:i + 1],
                              fire[:, :, i:i + 1] if isinstance(fire, torch.Tensor) else fire, steps)
                     for i in range(len(self.models))]
            return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)
        return classify(self.models, x, fire, steps)


def classify(models, x: torch.Tensor, fire: torch.Tensor | float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NCA states and head logits of k classifiers stacked (see FoldStack.forward)."""
    align = 1 if x.device.type == "cpu" else 8  # padded channels cost CPUs 10% and buy GPUs tensor cores
    state = run_nca(fused_weights(stacked([m.nca for m in models], PARAMETERS)), x, steps, fire, align,
                    models[0].kernel)
    head = stacked([m.head for m in models], HEAD)
    pooled = state.mean(dim=(3, 4)) if models[0].pool == "mean" else state.amax(dim=(3, 4))  # (B, k, n)
    hidden = F.relu(torch.einsum("bkn,khn->bkh", pooled, head["0.weight"]) + head["0.bias"])
    return torch.einsum("bkh,kch->bkc", hidden, head["2.weight"]) + head["2.bias"], state
