#!/usr/bin/env python3
"""NCA forward+backward throughput: ncawss's fused channels-first NCA vs a reference-style one.

Both run the same weights and draw the same fire masks; their outputs are
checked equal first. Default: 32 channels, hidden 32, 32 steps, 64x64, batch 32.

    python bench/nca_throughput.py [--device cpu|cuda] [--batch 32] [--size 64] [--repeats 3] [--triton]

--triton adds the rows of the Triton step kernel (kernel: triton), fp32 and under a bf16 autocast
(and on CUDA torch's path under bf16 too): a CUDA device, or on CPU Triton's interpreter with
TRITON_INTERPRET=1, which checks it but times nothing useful. Each row's share of the device's
limits: its paper FLOPs over the measured matmul rate (bf16 on GPUs, fp32 on CPU), and the bytes
a once-per-step kernel must move over the measured copy bandwidth.
"""
from __future__ import annotations

import argparse

import torch

from common import best_of, device_limits, fused_bytes_per_image, machine, paper_flops_per_image
from ncawss.method.nca.model import NCA, PARAMETERS, fused_weights, run_nca, stacked
from reference_nca import reference_forward


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

    def bf16(forward):
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return forward()
        return run

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
        implementations.append(("ncawss triton bf16", bf16(triton_forward)))
        if device.type == "cuda":
            implementations.append(("ncawss bf16", bf16(ours_forward)))

    limits = device_limits(device)
    flops = paper_flops_per_image(args.channels, args.hidden, args.steps, args.size)
    traffic = fused_bytes_per_image(args.channels, args.hidden, args.steps, args.size)
    rows = [(name, best_of(train_step(fn), args.repeats)) for name, fn in implementations]
    print(f"machine: {machine(device)}; {limits}")
    print(f"NCA {args.channels} ch, hidden {args.hidden}, {args.steps} steps, {args.size}x{args.size}, "
          f"batch {args.batch}, forward+backward; outputs equal (max |diff| {max_diff:.1e})")
    print(f"per image: {flops / 1e9:.3g} GFLOP (the paper's algorithm), {traffic / 1e6:.3g} MB (a step loop that "
          f"reads and writes each tensor once a step)\n")
    print("| implementation     | images/s | s/batch | GFLOP/s | share of the device's limits          | speed-up |")
    print("|--------------------|---------:|--------:|--------:|---------------------------------------|---------:|")
    base = rows[0][1]
    for name, seconds in rows:
        per_s = args.batch / seconds
        print(f"| {name:<18} | {per_s:8.1f} | {seconds:7.3f} | {per_s * flops / 1e9:7.0f} | "
              f"{limits.shares(per_s, flops, traffic):<37} | {base / seconds:7.2f}x |")

if __name__ == "__main__":
    main()
