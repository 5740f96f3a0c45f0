"""The NCA step loop with each step as one Triton kernel (`kernel: triton`): per pixel tile, the
reflect-padded 3x3 neighbourhood of the hidden channels, the fused first layer, bias, ReLU, the
output layer and the fire-masked update, reading the state once and writing it once; k folds by
a fold index in the launch grid, each with its own weights.

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
import triton.language as tl


@triton.jit
def _reflect(i, size):
    i = tl.where(i < 0, -i, i)
    return tl.where(i > size - 1, 2 * (size - 1) - i, i)


@triton.jit
def _bf16(x):
    """fp32 values rounded to bfloat16 (to nearest, ties to even), kept in fp32: by bits, because the
    interpreter's cast truncates where the GPU's rounds."""
    bits = x.to(tl.uint32, bitcast=True)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, BF16: tl.constexpr):
    """a @ b with fp32 accumulation; BF16: of a and b rounded to bfloat16 (the products of such
    values are exact in tf32, so the tensor cores' tf32 path gives bf16's result)."""
    if BF16:
        return tl.dot(_bf16(a), _bf16(b), input_precision="tf32")
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _hidden(state_ptr, base_ptr, kernel_ptr, f, image, pix, inside, H, W, M: tl.constexpr, HID: tl.constexpr,
            MP: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr, BF16: tl.constexpr):
    """The first layer before its ReLU, (BLOCK, HP): the 3x3 neighbourhood (reflect) of each pixel
    times the fused kernel's 9 taps, plus base."""
    y, x = pix // W, pix % W
    m, h = tl.arange(0, MP), tl.arange(0, HP)
    acc = tl.zeros((BLOCK, HP), dtype=tl.float32)
    for tap in tl.static_range(9):
        ny = _reflect(y + tap // 3 - 1, H)
        nx = _reflect(x + tap % 3 - 1, W)
        rows = (image + ny * W + nx) * M
        s = tl.load(state_ptr + rows[:, None] + m[None, :], mask=inside[:, None] & (m[None, :] < M), other=0.0)
        w = tl.load(kernel_ptr + ((f * 9 + tap) * M + m[:, None]) * HID + h[None, :],
                    mask=(m[:, None] < M) & (h[None, :] < HID), other=0.0)
        acc += _dot(s, w, BF16)
    return acc + tl.load(base_ptr + (image + pix)[:, None] * HID + h[None, :],
                         mask=inside[:, None] & (h[None, :] < HID), other=0.0)


@triton.jit
def _step_kernel(state_ptr, base_ptr, kernel_ptr, out_ptr, fire_ptr, new_ptr, fire_rate, H, W,
                 M: tl.constexpr, HID: tl.constexpr, MP: tl.constexpr, HP: tl.constexpr,
                 BLOCK: tl.constexpr, MASKED: tl.constexpr, BF16: tl.constexpr):
    """One step of one fold on one tile of BLOCK pixels of one image. Layouts (channels last):
    state/new (B, k, H, W, M), base (B, k, H, W, HID), kernel (k, 9, M, HID), out (k, HID, M),
    fire (B, k, H, W)."""
    tile, b, f = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pix = tile * BLOCK + tl.arange(0, BLOCK)
    inside = pix < H * W
    m, h = tl.arange(0, MP), tl.arange(0, HP)
    image = (b * tl.num_programs(2) + f).to(tl.int64) * H * W
    z = tl.maximum(_hidden(state_ptr, base_ptr, kernel_ptr, f, image, pix, inside, H, W, M, HID, MP, HP, BLOCK, BF16), 0.0)
    o = tl.load(out_ptr + (f * HID + h[:, None]) * M + m[None, :], mask=(h[:, None] < HID) & (m[None, :] < M),
                other=0.0)
    update = _dot(z, o, BF16)
    here = (image + pix)[:, None] * M + m[None, :]
    keep = inside[:, None] & (m[None, :] < M)
    s = tl.load(state_ptr + here, mask=keep, other=0.0)
    if MASKED:
        update = update * tl.load(fire_ptr + image + pix, mask=inside, other=0.0)[:, None]
    else:
        update = update * fire_rate
    tl.store(new_ptr + here, (s + update).to(new_ptr.dtype.element_ty), mask=keep)


@triton.jit
def _grad_kernel(state_ptr, base_ptr, kernel_ptr, out_ptr, fire_ptr, grad_ptr, dz_ptr, dout_ptr, fire_rate, H, W,
                 M: tl.constexpr, HID: tl.constexpr, MP: tl.constexpr, HP: tl.constexpr,
                 BLOCK: tl.constexpr, MASKED: tl.constexpr, BF16: tl.constexpr):
    """Backward of one step on one tile, the hidden layer recomputed, not stored: from the new
    state's gradient, the first layer's pre-ReLU gradient dz (B, k, H, W, HID) (also base's) and
    this tile's share of the output layer's gradient, (HP, MP) at dout[fold, b * tiles + tile]."""
    tile, b, f = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tiles, batch = tl.num_programs(0), tl.num_programs(1)
    pix = tile * BLOCK + tl.arange(0, BLOCK)
    inside = pix < H * W
    m, h = tl.arange(0, MP), tl.arange(0, HP)
    image = (b * tl.num_programs(2) + f).to(tl.int64) * H * W
    pre = _hidden(state_ptr, base_ptr, kernel_ptr, f, image, pix, inside, H, W, M, HID, MP, HP, BLOCK, BF16)
    z = tl.maximum(pre, 0.0)
    g = tl.load(grad_ptr + (image + pix)[:, None] * M + m[None, :], mask=inside[:, None] & (m[None, :] < M),
                other=0.0)
    if MASKED:
        du = g * tl.load(fire_ptr + image + pix, mask=inside, other=0.0)[:, None]
    else:
        du = g * fire_rate
    o = tl.load(out_ptr + (f * HID + h[:, None]) * M + m[None, :], mask=(h[:, None] < HID) & (m[None, :] < M),
                other=0.0)
    dz = tl.where(pre > 0, _dot(du, tl.trans(o), BF16), 0.0)
    tl.store(dz_ptr + (image + pix)[:, None] * HID + h[None, :], dz, mask=inside[:, None] & (h[None, :] < HID))
    part = _dot(tl.trans(z), du, BF16)
    slot = (f * batch + b) * tiles + tile
    tl.store(dout_ptr + slot.to(tl.int64) * HP * MP + h[:, None] * MP + m[None, :], part)


@triton.jit
def _source(p, d: tl.constexpr, extra: tl.constexpr, size):
    """The pixels q (along one axis) whose neighbour at offset d is p under reflect padding: q = p - d,
    or (extra) the border pixel that reflects onto p: q = 0 for p = 1 and d = -1, q = size - 1 for
    p = size - 2 and d = 1. Returns (q, valid)."""
    if extra:
        if d == -1:
            return tl.zeros_like(p), p == 1
        else:
            return tl.zeros_like(p) + size - 1, p == size - 2
    else:
        q = p - d
        return q, (q >= 0) & (q < size)


@triton.jit
def _input_grad_kernel(dz_ptr, kernel_ptr, grad_ptr, dstate_ptr, H, W, M: tl.constexpr, HID: tl.constexpr,
                       MP: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr, BF16: tl.constexpr):
    """The input state's gradient of one step on one tile: the new state's gradient (the identity
    path) plus, for each tap, dz at every pixel whose reflect-padded neighbour this pixel is, times
    the tap's weights. Gathered, not scattered: no atomics."""
    tile, b, f = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pix = tile * BLOCK + tl.arange(0, BLOCK)
    inside = pix < H * W
    y, x = pix // W, pix % W
    m, h = tl.arange(0, MP), tl.arange(0, HP)
    image = (b * tl.num_programs(2) + f).to(tl.int64) * H * W
    here = (image + pix)[:, None] * M + m[None, :]
    keep = inside[:, None] & (m[None, :] < M)
    acc = tl.load(grad_ptr + here, mask=keep, other=0.0)
    for tap in tl.static_range(9):
        dy: tl.constexpr = tap // 3 - 1
        dx: tl.constexpr = tap % 3 - 1
        w = tl.load(kernel_ptr + ((f * 9 + tap) * M + m[None, :]) * HID + h[:, None],
                    mask=(h[:, None] < HID) & (m[None, :] < M), other=0.0)  # (HP, MP): the tap transposed
        for ey in tl.static_range(1 + (dy != 0)):
            for ex in tl.static_range(1 + (dx != 0)):
                qy, vy = _source(y, dy, ey == 1, H)
                qx, vx = _source(x, dx, ex == 1, W)
                valid = inside & vy & vx
                d = tl.load(dz_ptr + (image + qy * W + qx)[:, None] * HID + h[None, :],
                            mask=valid[:, None] & (h[None, :] < HID), other=0.0)
                acc += _dot(d, w, BF16)
    tl.store(dstate_ptr + here, acc, mask=keep)


@triton.jit
def _kernel_grad_kernel(state_ptr, dz_ptr, shares_ptr, blocks, per_split, H, W, M: tl.constexpr,
                        HID: tl.constexpr, MP: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr,
                        BF16: tl.constexpr):
    """One tap's share of the 3x3 layer's weight gradient for one fold over one run of pixel
    blocks (`per_split` of the `blocks` blocks of BLOCK pixels of all images): the sum of the
    reflect-shifted state (BLOCK, MP) transposed times dz (BLOCK, HP), stored (MP, HP) at
    shares[fold, tap, split]. The splits are summed afterwards: deterministic, no atomics."""
    tap, f, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    folds, splits = tl.num_programs(1), tl.num_programs(2)
    tiles = tl.cdiv(H * W, BLOCK)
    m, h = tl.arange(0, MP), tl.arange(0, HP)
    acc = tl.zeros((MP, HP), dtype=tl.float32)
    for j in range(split * per_split, tl.minimum((split + 1) * per_split, blocks)):
        b, tile = j // tiles, j % tiles
        pix = tile * BLOCK + tl.arange(0, BLOCK)
        inside = pix < H * W
        image = (b * folds + f).to(tl.int64) * H * W
        ny = _reflect(pix // W + tap // 3 - 1, H)
        nx = _reflect(pix % W + tap % 3 - 1, W)
        s = tl.load(state_ptr + (image + ny * W + nx)[:, None] * M + m[None, :],
                    mask=inside[:, None] & (m[None, :] < M), other=0.0)
        d = tl.load(dz_ptr + (image + pix)[:, None] * HID + h[None, :], mask=inside[:, None] & (h[None, :] < HID),
                    other=0.0)
        acc += _dot(tl.trans(s), d, BF16)
    slot = ((f * 9 + tap) * splits + split).to(tl.int64)
    tl.store(shares_ptr + slot * MP * HP + m[:, None] * HP + h[None, :], acc)


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
        return cls(to_last(base.float(), folds), kernel.float().reshape(folds, hid, m, 9).permute(0, 3, 2, 1).contiguous(),
                   out.float().reshape(folds, m, hid).transpose(1, 2).contiguous())


def triton_step(state: torch.Tensor, weights: Weights, fire: torch.Tensor | float, bf16: bool = False,
                block: int = 64) -> torch.Tensor:
    """One step on the kernel's layout: state (B, k, H, W, M) fp32, fire (B, k, H, W) masks or a float;
    bf16: the matrix products' operands rounded to bfloat16 (fp32 accumulation and state)."""
    b, folds, h, w, m = state.shape
    hid = weights.out.shape[1]
    masked = isinstance(fire, torch.Tensor)
    new = torch.empty_like(state)
    grid = (triton.cdiv(h * w, block), b, folds)
    _step_kernel[grid](state, weights.base, weights.taps, weights.out, fire if masked else state, new,
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
    _grad_kernel[(tiles, b, folds)](state, weights.base, weights.taps, weights.out, fire if masked else state,
                                    grad, dz, shares, 0.0 if masked else float(fire), h, w,
                                    M=m, HID=hid, MP=_pow2(m), HP=_pow2(hid), BLOCK=block, MASKED=masked,
                                    BF16=bf16)
    d_out = shares.sum(1)[:, :hid, :m].transpose(1, 2).reshape(folds * m, hid, 1, 1)
    d_state = torch.empty_like(state)
    _input_grad_kernel[(tiles, b, folds)](dz, weights.taps, grad, d_state, h, w, M=m, HID=hid, MP=_pow2(m),
                                          HP=_pow2(hid), BLOCK=block, BF16=bf16)
    blocks = b * tiles
    per_split = triton.cdiv(blocks, min(blocks, splits))
    splits = triton.cdiv(blocks, per_split)
    kernel_shares = torch.empty(folds, 9, splits, _pow2(m), _pow2(hid), dtype=torch.float32, device=state.device)
    _kernel_grad_kernel[(9, folds, splits)](state, dz, kernel_shares, blocks, per_split, h, w, M=m, HID=hid,
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
