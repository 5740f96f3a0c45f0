#!/usr/bin/env python3
"""NCA forward+backward throughput: ncawss's fused channels-first NCA vs a reference-style one.

Both run the same weights and draw the same fire masks; their outputs are
checked equal first. Default: 32 channels, hidden 32, 32 steps, 64x64, batch 32.

    python bench/nca_throughput.py [--device cpu|cuda] [--batch 32] [--size 64] [--repeats 3] [--triton]

--triton adds the row of the Triton step kernel (kernel: triton; a CUDA device, or on CPU
Triton's interpreter with TRITON_INTERPRET=1, which checks it but times nothing useful).
"""
from __future__ import annotations

import argparse

import torch

from common import best_of, machine, matmul_gflops
from ncawss.method.nca import NCA, PARAMETERS, fused_weights, run_nca, stacked
from reference_nca import reference_forward


def paper_flops_per_image(channels: int, hidden: int, steps: int, size: int) -> float:
    """Forward+backward FLOPs of the published algorithm (not of the fused form): backward ~ 2x forward."""
    per_pixel_step = 2 * (2 * channels * 9 + 3 * channels * hidden + hidden * channels)
    return 3 * per_pixel_step * size * size * steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--triton", action="store_true", help="also the Triton step kernel")
    args = p.parse_args()
    device = torch.device(args.device)

    nca = NCA(args.channels, args.hidden, args.steps)
    with torch.no_grad():  # non-zero output layer, or both would compute the identity
        nca.fc1.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    nca = nca.to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)

    def ours_forward():
        return nca(x, generator=torch.Generator(device).manual_seed(2))

    def triton_forward():
        steps, fire = nca.fire(x, None, None, torch.Generator(device).manual_seed(2), False)
        return run_nca(fused_weights(stacked([nca], PARAMETERS)), x[:, None], steps, fire, kernel="triton")[:, 0]

    def reference_forward_():
        return reference_forward(nca, x, args.steps, nca.fire_rate, generator=torch.Generator(device).manual_seed(2))

    def train_step(forward):
        def step():
            nca.zero_grad()
            forward().square().mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
        return step

    with torch.no_grad():
        a, b = ours_forward(), reference_forward_()
    max_diff = (a - b).abs().max().item()
    # CUDA convolutions run in TF32 by default (10-bit mantissa): a looser tolerance there.
    tolerance = 1e-2 if device.type == "cuda" else 1e-4
    torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    implementations = [("reference-style", reference_forward_), ("ncawss", ours_forward)]
    if args.triton:
        with torch.no_grad():
            torch.testing.assert_close(triton_forward(), a, rtol=tolerance, atol=tolerance)
        implementations.append(("ncawss triton", triton_forward))

    peak = matmul_gflops(8192 if device.type == "cuda" else 2048, device=device)
    flops = paper_flops_per_image(args.channels, args.hidden, args.steps, args.size) * args.batch
    rows = [(name, best_of(train_step(fn), args.repeats)) for name, fn in implementations]
    print(f"machine: {machine(device)}; fp32 matmul {peak:.0f} GFLOP/s")
    print(f"NCA {args.channels} ch, hidden {args.hidden}, {args.steps} steps, {args.size}x{args.size}, "
          f"batch {args.batch}, forward+backward; outputs equal (max |diff| {max_diff:.1e})\n")
    print("| implementation  | images/s | s/batch | GFLOP/s (paper FLOPs) | % of matmul rate | speed-up |")
    print("|-----------------|---------:|--------:|----------------------:|-----------------:|---------:|")
    base = rows[0][1]
    for name, seconds in rows:
        rate = flops / seconds / 1e9
        print(f"| {name:<15} | {args.batch / seconds:8.1f} | {seconds:7.2f} | {rate:21.1f} | "
              f"{100 * rate / peak:15.0f}% | {base / seconds:7.2f}x |")


if __name__ == "__main__":
    main()
