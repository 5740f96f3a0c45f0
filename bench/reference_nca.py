"""A reference-style NCA step, written the way published NCA code commonly is.

Channels-last state, transposes around the convolutions, torch.concat of the
perception vector, a clone and a concat of the fixed input channels every step.
It reads the weights of ncawss.method.nca.model.NCA, so both compute the same function and
their outputs can be compared; it draws its fire masks from the same generator
in the same order (all steps' masks in one draw before the loop).
"""
from __future__ import annotations

import torch

from ncawss.method.nca.model import N_INPUT, NCA


def reference_forward(nca: NCA, rgb: torch.Tensor, steps: int, fire_rate: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    b, _, h, w = rgb.shape
    hidden = torch.zeros(b, nca.channels - N_INPUT, h, w, dtype=rgb.dtype, device=rgb.device)
    x = torch.cat([rgb, hidden], 1).permute(0, 2, 3, 1)  # (B, H, W, n)
    fire = torch.rand(steps, b, 1, h, w, generator=generator, device=rgb.device) < fire_rate
    for step in range(steps):
        x2 = reference_update(nca, x, fire[step].permute(0, 2, 3, 1)).clone()
        x = torch.concat((x[..., :N_INPUT], x2[..., N_INPUT:]), 3)
    return x.permute(0, 3, 1, 2)


def reference_update(nca: NCA, x: torch.Tensor, fire: torch.Tensor) -> torch.Tensor:
    x_cf = x.transpose(1, 3)                                   # (B, n, W, H)
    # The published code applies the filters on a transposed image; transposing
    # the kernels keeps the maths identical to ncawss's (B, n, H, W) layout.
    p0 = torch.nn.functional.conv2d(torch.nn.functional.pad(x_cf, (1, 1, 1, 1), mode="reflect"),
                                    nca.p0.weight.transpose(2, 3), nca.p0.bias, groups=nca.channels)
    p1 = torch.nn.functional.conv2d(torch.nn.functional.pad(x_cf, (1, 1, 1, 1), mode="reflect"),
                                    nca.p1.weight.transpose(2, 3), nca.p1.bias, groups=nca.channels)
    dx = torch.cat((x_cf, p0, p1), 1).transpose(1, 3)        # (B, H, W, 3n)
    dx = nca.fc1(torch.relu(nca.fc0(dx)))
    return x + dx * fire
