"""The Triton kernels of one NCA step (triton_step.py launches them): forward, and backward's
three (pre-ReLU and output-layer gradients, the input state's gradient, the 3x3 layer's weight
gradient). Layouts are channels last, one program per tile of BLOCK pixels of one image of one
fold (or, for the weight gradient, per tap, fold and run of pixel blocks); channel counts are
padded to MP, HP (powers of two, at least 16) with masks.
"""
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
def _shifted(state_ptr, image, pix, inside, tap, H, W, M: tl.constexpr, MP: tl.constexpr):
    """The state (BLOCK, MP) at each pixel's neighbour `tap` (0..8, row-major 3x3), reflect padding."""
    ny = _reflect(pix // W + tap // 3 - 1, H)
    nx = _reflect(pix % W + tap % 3 - 1, W)
    m = tl.arange(0, MP)
    return tl.load(state_ptr + (image + ny * W + nx)[:, None] * M + m[None, :],
                   mask=inside[:, None] & (m[None, :] < M), other=0.0)


@triton.jit
def _hidden(state_ptr, base_ptr, kernel_ptr, f, image, pix, inside, H, W, M: tl.constexpr, HID: tl.constexpr,
            MP: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr, BF16: tl.constexpr):
    """The first layer before its ReLU, (BLOCK, HP): the 3x3 neighbourhood (reflect) of each pixel
    times the fused kernel's 9 taps, plus base."""
    m, h = tl.arange(0, MP), tl.arange(0, HP)
    acc = tl.zeros((BLOCK, HP), dtype=tl.float32)
    for tap in tl.static_range(9):
        s = _shifted(state_ptr, image, pix, inside, tap, H, W, M, MP)
        w = tl.load(kernel_ptr + ((f * 9 + tap) * M + m[:, None]) * HID + h[None, :],
                    mask=(m[:, None] < M) & (h[None, :] < HID), other=0.0)
        acc += _dot(s, w, BF16)
    return acc + tl.load(base_ptr + (image + pix)[:, None] * HID + h[None, :],
                         mask=inside[:, None] & (h[None, :] < HID), other=0.0)


@triton.jit
def _tile(H, W, BLOCK: tl.constexpr):
    """This program's fold, its BLOCK pixels, which of them lie inside the image, and the offset
    of its image's first pixel in the (B, k, H, W) layout (grid: tiles, batch, folds)."""
    tile, b, f = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pix = tile * BLOCK + tl.arange(0, BLOCK)
    return f, pix, pix < H * W, (b * tl.num_programs(2) + f).to(tl.int64) * H * W


@triton.jit
def _out_weights(out_ptr, f, M: tl.constexpr, HID: tl.constexpr, MP: tl.constexpr, HP: tl.constexpr):
    """Fold f's output layer, (HP, MP), zero in the padding."""
    m, h = tl.arange(0, MP), tl.arange(0, HP)
    return tl.load(out_ptr + (f * HID + h[:, None]) * M + m[None, :], mask=(h[:, None] < HID) & (m[None, :] < M),
                   other=0.0)


@triton.jit
def step_kernel(state_ptr, base_ptr, kernel_ptr, out_ptr, fire_ptr, new_ptr, fire_rate, H, W,
                 M: tl.constexpr, HID: tl.constexpr, MP: tl.constexpr, HP: tl.constexpr,
                 BLOCK: tl.constexpr, MASKED: tl.constexpr, BF16: tl.constexpr):
    """One step of one fold on one tile of BLOCK pixels of one image. Layouts (channels last):
    state/new (B, k, H, W, M), base (B, k, H, W, HID), kernel (k, 9, M, HID), out (k, HID, M),
    fire (B, k, H, W)."""
    f, pix, inside, image = _tile(H, W, BLOCK)
    m = tl.arange(0, MP)
    pre = _hidden(state_ptr, base_ptr, kernel_ptr, f, image, pix, inside, H, W, M, HID, MP, HP, BLOCK, BF16)
    update = _dot(tl.maximum(pre, 0.0), _out_weights(out_ptr, f, M, HID, MP, HP), BF16)
    here = (image + pix)[:, None] * M + m[None, :]
    keep = inside[:, None] & (m[None, :] < M)
    s = tl.load(state_ptr + here, mask=keep, other=0.0)
    if MASKED:
        update = update * tl.load(fire_ptr + image + pix, mask=inside, other=0.0)[:, None]
    else:
        update = update * fire_rate
    tl.store(new_ptr + here, (s + update).to(new_ptr.dtype.element_ty), mask=keep)


@triton.jit
def grad_kernel(state_ptr, base_ptr, kernel_ptr, out_ptr, fire_ptr, grad_ptr, dz_ptr, dout_ptr, fire_rate, H, W,
                 M: tl.constexpr, HID: tl.constexpr, MP: tl.constexpr, HP: tl.constexpr,
                 BLOCK: tl.constexpr, MASKED: tl.constexpr, BF16: tl.constexpr):
    """Backward of one step on one tile, the hidden layer recomputed, not stored: from the new
    state's gradient, the first layer's pre-ReLU gradient dz (B, k, H, W, HID) (also base's) and
    this tile's share of the output layer's gradient, (HP, MP) at dout[fold, b * tiles + tile]."""
    f, pix, inside, image = _tile(H, W, BLOCK)
    m, h = tl.arange(0, MP), tl.arange(0, HP)
    pre = _hidden(state_ptr, base_ptr, kernel_ptr, f, image, pix, inside, H, W, M, HID, MP, HP, BLOCK, BF16)
    z = tl.maximum(pre, 0.0)
    g = tl.load(grad_ptr + (image + pix)[:, None] * M + m[None, :], mask=inside[:, None] & (m[None, :] < M),
                other=0.0)
    if MASKED:
        du = g * tl.load(fire_ptr + image + pix, mask=inside, other=0.0)[:, None]
    else:
        du = g * fire_rate
    dz = tl.where(pre > 0, _dot(du, tl.trans(_out_weights(out_ptr, f, M, HID, MP, HP)), BF16), 0.0)
    tl.store(dz_ptr + (image + pix)[:, None] * HID + h[None, :], dz, mask=inside[:, None] & (h[None, :] < HID))
    part = _dot(tl.trans(z), du, BF16)
    slot = (f * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(0) + tl.program_id(0)
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
def input_grad_kernel(dz_ptr, kernel_ptr, grad_ptr, dstate_ptr, H, W, M: tl.constexpr, HID: tl.constexpr,
                       MP: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr, BF16: tl.constexpr):
    """The input state's gradient of one step on one tile: the new state's gradient (the identity
    path) plus, for each tap, dz at every pixel whose reflect-padded neighbour this pixel is, times
    the tap's weights. Gathered, not scattered: no atomics."""
    f, pix, inside, image = _tile(H, W, BLOCK)
    y, x = pix // W, pix % W
    m, h = tl.arange(0, MP), tl.arange(0, HP)
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
def kernel_grad_kernel(state_ptr, dz_ptr, shares_ptr, blocks, per_split, H, W, M: tl.constexpr,
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
        s = _shifted(state_ptr, image, pix, inside, tap, H, W, M, MP)
        d = tl.load(dz_ptr + (image + pix)[:, None] * HID + h[None, :], mask=inside[:, None] & (h[None, :] < HID),
                    other=0.0)
        acc += _dot(tl.trans(s), d, BF16)
    slot = ((f * 9 + tap) * splits + split).to(tl.int64)
    tl.store(shares_ptr + slot * MP * HP + m[:, None] * HP + h[None, :], acc)
