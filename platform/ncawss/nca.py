"""The NCA-WSS backbone and classifier.

One step of the automaton, as in the paper: perception by two learned depthwise
3x3 filters (reflect padding), concat(S, p0(S), p1(S)) -> MLP (3n -> hidden -> n,
last layer zero-initialised and bias-free) -> stochastic per-pixel update.

The parameters are stored in that published form (so weights load into a
reference implementation), but the forward pass runs a fused equivalent:
identity + depthwise filters + first MLP layer are one dense 3x3 convolution,
and the contribution of the fixed RGB channels is computed once, not every step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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

    def fused_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dense 3x3 kernel hidden x channels, its bias, 1x1 output kernel for hidden channels)."""
        n = self.channels
        w_id, w_p0, w_p1 = self.fc0.weight.split(n, dim=1)  # each (hidden, n)
        identity = torch.zeros(3, 3, dtype=w_id.dtype, device=w_id.device)
        identity[1, 1] = 1.0
        kernel = (w_id[:, :, None, None] * identity
                  + w_p0[:, :, None, None] * self.p0.weight[:, 0]
                  + w_p1[:, :, None, None] * self.p1.weight[:, 0])
        bias = self.fc0.bias + w_p0 @ self.p0.bias + w_p1 @ self.p1.bias
        out = self.fc1.weight[N_INPUT:, :, None, None]  # RGB rows would be discarded anyway
        return kernel, bias, out

    def forward(self, rgb: torch.Tensor, steps: int | None = None, fire_rate: float | None = None,
                generator: torch.Generator | None = None, mean_field: bool = False) -> torch.Tensor:
        """Run the automaton from a (B, 3, H, W) input; returns the (B, channels, H, W) state.

        mean_field=True replaces the random fire mask by its expectation
        (S <- S + fire_rate * dS): a deterministic read-out of the same weights.
        """
        steps = self.steps if steps is None else steps
        fire_rate = self.fire_rate if fire_rate is None else fire_rate
        kernel, bias, out = self.fused_weights()
        b, _, h, w = rgb.shape
        # The RGB channels never change, so their share of the first layer is constant.
        base = F.conv2d(F.pad(rgb, (1, 1, 1, 1), mode="reflect"), kernel[:, :N_INPUT], bias)
        k_hidden = kernel[:, N_INPUT:]
        state = rgb.new_zeros(b, self.channels - N_INPUT, h, w)
        for _ in range(steps):
            z = F.relu(base + F.conv2d(F.pad(state, (1, 1, 1, 1), mode="reflect"), k_hidden))
            if mean_field:
                fire = fire_rate
            else:
                fire = torch.rand(b, 1, h, w, generator=generator, device=rgb.device, dtype=rgb.dtype) < fire_rate
            state = state + F.conv2d(z, out) * fire
        return torch.cat([rgb, state], dim=1)


class NCAClassifier(nn.Module):
    """NCA backbone + average pooling + MLP head (n -> 128 -> classes)."""

    def __init__(self, channels: int = 32, hidden: int = 32, steps: int = 32, fire_rate: float = 0.5,
                 n_classes: int = 5, head_hidden: int = 128):
        super().__init__()
        self.nca = NCA(channels, hidden, steps, fire_rate)
        self.head = nn.Sequential(nn.Linear(channels, head_hidden), nn.ReLU(), nn.Linear(head_hidden, n_classes))

    def forward(self, x: torch.Tensor, steps: int | None = None, fire_rate: float | None = None,
                generator: torch.Generator | None = None,
                mean_field: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x: normalised (B, 3, H, W) -> (logits (B, classes), state (B, channels, H, W))."""
        state = self.nca(x, steps, fire_rate, generator, mean_field)
        return self.head(state.mean(dim=(2, 3))), state


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss -(1 - p_t)^gamma log p_t over the batch."""
    log_pt = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    return (-(1.0 - log_pt.exp()) ** gamma * log_pt).mean()
