"""The NCA step loop with each step as one Triton kernel (`kernel: triton`; the kernels are in
triton_kernels.py): per pixel tile, the reflect-padded 3x3 neighbourhood of the hidden channels,
the fused first layer, bias, ReLU, the output layer and the fire-masked update, reading the state
once and writing it once; k folds by a fold index in the launch grid, each with its own weights.

Backward runs three Triton kernels a step from the states saved before it (one state per step,
no hidden layer kept): the first recomputes the hidden layer and gives the ReLU's and the output
layer's gradients, the second gathers the input state's gradient through the reflect padding, the
third gives the 3x3 layer's weight gradient. Every weight gradient is a sum of partial sums in a
fixed order (no atomics), so backward is deterministic.

Precision: fp32 (ieee products), or bf16 under a bfloat16 autocast: every matrix product's
operands rounded to bfloat16, products and sums in fp32, the state kept in fp32. The rounding is
done by bits and the rounded operands multiplied on the tf32 path (exact for them): Triton 3.9's
interpreter computes a bfloat16 tl.dot wrongly and truncates where GPUs round, so a native bf16
product could not be tested without a GPU. Runs on CUDA, and on CPU under Triton's interpreter
(TRITON_INTERPRET=1), which is how the tests run it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from .triton_kernels import grad_kernel, input_grad_kernel, kernel_grad_kernel, step_kernel

KERNEL_GRAD_SPLITS = 32  # runs of pixel blocks per fold and tap, summed after the kernel


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot takes blocks of at least 16


def to_last(t: torch.Tensor, folds: int) -> torch.Tensor:
    """(B, k*C, H, W) -> (B, k, H, W, C), contiguous: the kernel's layout."""
    b, kc, h, w = t.shape
    return t.reshape(b, folds, kc // folds, h, w).permute(0, 1, 3, 4, 2).contiguous()


def to_first(t: torch.Tensor) -> torch.Tensor:
    """(B, k, H, W, C) -> (B, k*C, H, W)."""
    b, k, h, w, c = t.shape
    return t.permute(0, 1, 4, 2, 3).reshape(b, k * c, h, w)


class Weights(NamedTuple):
    """A step's weights in the kernel's layout."""
    base: torch.Tensor         # (B, k, H, W, HID): the RGB share of the first layer and its bias
    taps: torch.Tensor         # (k, 9, M, HID)
    out: torch.Tensor          # (k, HID, M)

    @classmethod
    def of(cls, base: torch.Tensor, kernel: torch.Tensor, out: torch.Tensor, folds: int) -> Weights:
        hid, m = kernel.shape[0] // folds, kernel.shape[1]
        taps = kernel.float().reshape(folds, hid, m, 9).permute(0, 3, 2, 1).contiguous()
        return cls(to_last(base.float(), folds), taps, out.float().reshape(folds, m, hid).transpose(1, 2).contiguous())


def triton_step(state: torch.Tensor, weights: Weights, fire: torch.Tensor | float, bf16: bool = False,
                block: int = 64) -> torch.Tensor:
    """One step on the kernel's layout: state (B, k, H, W, M) fp32, fire (B, k, H, W) masks or a float;
    bf16: the matrix products' operands rounded to bfloat16 (fp32 accumulation and state)."""
    b, folds, h, w, m = state.shape
    hid = weights.out.shape[1]
    masked = isinstance(fire, torch.Tensor)
    new = torch.empty_like(state)
    grid = (triton.cdiv(h * w, block), b, folds)
    step_kernel[grid](state, weights.base, weights.taps, weights.out, fire if masked else state, new,
                       0.0 if masked else float(fire), h, w, M=m, HID=hid, MP=_pow2(m), HP=_pow2(hid),
                       BLOCK=block, MASKED=masked, BF16=bf16)
    return new


def step_gradients(state: torch.Tensor, weights: Weights, fire: torch.Tensor | float, grad: torch.Tensor,
                   folds: int, bf16: bool = False, block: int = 64,
                   splits: int = KERNEL_GRAD_SPLITS) -> tuple[torch.Tensor, ...]:
    """Backward of one step from its input `state` and the new state's gradient `grad` (both in the
    kernel's layout): the state's gradient (kernel layout) and base's, kernel's and out's (channel
    first). Three Triton kernels: one recomputes the hidden layer and gives the pre-ReLU gradient
    and the output layer's (a deterministic sum of per-tile shares), one gathers the input state's,
    one gives the 3x3 layer's per tap (a deterministic sum over `splits` runs of pixel blocks)."""
    b, _, h, w, m = state.shape
    hid = weights.out.shape[1]
    tiles, masked = triton.cdiv(h * w, block), isinstance(fire, torch.Tensor)
    dz = torch.empty(b, folds, h, w, hid, dtype=torch.float32, device=state.device)
    shares = torch.empty(folds, b * tiles, _pow2(hid), _pow2(m), dtype=torch.float32, device=state.device)
    grad_kernel[(tiles, b, folds)](state, weights.base, weights.taps, weights.out, fire if masked else state,
                                    grad, dz, shares, 0.0 if masked else float(fire), h, w,
                                    M=m, HID=hid, MP=_pow2(m), HP=_pow2(hid), BLOCK=block, MASKED=masked,
                                    BF16=bf16)
    d_out = shares.sum(1)[:, :hid, :m].transpose(1, 2).reshape(folds * m, hid, 1, 1)
    d_state = torch.empty_like(state)
    input_grad_kernel[(tiles, b, folds)](dz, weights.taps, grad, d_state, h, w, M=m, HID=hid, MP=_pow2(m),
                                          HP=_pow2(hid), BLOCK=block, BF16=bf16)
    blocks = b * tiles
    per_split = triton.cdiv(blocks, min(blocks, splits))
    splits = triton.cdiv(blocks, per_split)
    kernel_shares = torch.empty(folds, 9, splits, _pow2(m), _pow2(hid), dtype=torch.float32, device=state.device)
    kernel_grad_kernel[(9, folds, splits)](state, dz, kernel_shares, blocks, per_split, h, w, M=m, HID=hid,
                                           MP=_pow2(m), HP=_pow2(hid), BLOCK=block, BF16=bf16)
    d_kernel = kernel_shares.sum(2)[:, :, :m, :hid].permute(0, 3, 2, 1).reshape(folds * hid, m, 3, 3)
    return d_state, to_first(dz), d_kernel, d_out


class _Steps(torch.autograd.Function):
    """`steps` Triton steps forward, one saved state per step; backward three Triton kernels a step."""

    @staticmethod
    def forward(ctx, state, base, kernel, out, fire, fire_rate, steps, folds, bf16):
        weights = Weights.of(base, kernel, out, folds)
        last = to_last(state, folds)
        masks = None if fire is None else fire.reshape(steps, *last.shape[:4]).to(torch.float32).contiguous()
        inputs = []
        for step in range(steps):
            inputs.append(last)
            last = triton_step(last, weights, fire_rate if masks is None else masks[step], bf16)
        ctx.save_for_backward(*weights, masks, *inputs)  # the weights as the kernels read them
        ctx.fire_rate, ctx.folds, ctx.bf16 = fire_rate, folds, bf16
        ctx.shapes = [t.shape for t in (base, kernel, out)]
        return to_first(last)

    @staticmethod
    def backward(ctx, grad):
        *layers, masks = ctx.saved_tensors[:4]
        weights, inputs = Weights(*layers), ctx.saved_tensors[4:]
        totals = [grad.new_zeros(shape, dtype=torch.float32) for shape in ctx.shapes]
        grad = to_last(grad, ctx.folds)
        for step in reversed(range(len(inputs))):
            fire = ctx.fire_rate if masks is None else masks[step]
            grad, *parts = step_gradients(inputs[step], weights, fire, grad.float(), ctx.folds, ctx.bf16)
            for total, part in zip(totals, parts):
                total += part
        return to_first(grad), *totals, None, None, None, None, None


def triton_steps(state: torch.Tensor, base: torch.Tensor, kernel: torch.Tensor, out: torch.Tensor,
                 fire: torch.Tensor | float, steps: int, folds: int, bf16: bool = False) -> torch.Tensor:
    """run_nca's step loop on channel-first tensors (state (B, k*M, H, W), base (B, k*HID, H, W),
    kernel (k*HID, M, 3, 3), out (k*M, HID, 1, 1), fire (steps, B, k, 1, H, W) or a float), each
    step one Triton kernel; differentiable in state, base, kernel and out. bf16: see triton_step."""
    masks = fire if isinstance(fire, torch.Tensor) else None
    return _Steps.apply(state, base, kernel, out, masks, 0.0 if masks is not None else float(fire), steps, folds,
                        bf16)
