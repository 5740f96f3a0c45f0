#!/usr/bin/env python3
"""Training throughput of k folds of the paper configuration: one after another vs batched.

Same data, same seeds, same per-fold generators in every row; images/s counts
every fold's training images once per epoch. Rows:
- sequential: each fold trained alone (k = 1), one after another, eagerly;
- batched: the library's BatchedTrainer over FoldStack. On CPU by default fold by
  fold (each fold's batch its own forward, backward and optimiser step, inside one
  loop over the batches); one stacked pass of all folds (the folds' convolutions
  one after another, the default on GPUs), or grouped convolutions (groups = folds);
- on CPU also fold by fold under a bf16 autocast, bf16 with torch.compile, and what
  `precision: auto` and `compile: auto` choose there (the rows above run fp32, eagerly);
- on CUDA also both with the step loop replayed as a CUDA graph, bf16 autocast
  (with graph), the Triton step kernel (kernel: triton), fp32 and bf16, and torch.compile of the
  forward pass without the graph, fp32 and bf16 (`--skip compiled` leaves these out).
Each row's share of the device's limits: the paper's FLOPs over the measured
matmul rate (bf16 on GPUs, fp32 on CPU), and the bytes a once-per-step kernel
must move (common.fused_bytes_per_image) over the measured copy bandwidth.
Then the final evaluation (every read-out of configs/paper.yaml, both CNN
baselines' CAMs) of every fold's test images, beside one training epoch.

    python bench/cv_throughput.py [--device cpu|cuda] [--folds 5] [--epochs 2] [--data PARQUET]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import ncawss
from common import device_limits, fused_bytes_per_image, machine, paper_flops_per_image
from ncawss.method.baselines import CNN_WIDTHS
from ncawss.method.images import normalised_training_set
from ncawss.method.nca.model import FoldStack
from ncawss.method.scoring.evaluation import TestSet, evaluate
from ncawss.method.training.cnn import train_cnns
from ncawss.method.training.loop import BatchedTrainer, make_folds
from ncawss.method.training.plan import Execution

ROOT = Path(__file__).resolve().parent.parent


def synchronise(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_training(config, splits, device, epochs, grouped=None, fold_by_fold=None) -> float:
    """Seconds for `epochs` epochs of the given folds as one batched model (setup excluded)."""
    models = [ncawss.NCAClassifier.from_config(config, len(splits[0][0].classes)).to(device) for _ in splits]
    execution = Execution.plan(config, device, len(models), fold_by_fold=fold_by_fold, grouped=grouped,
                               images=max(len(train) for train, _ in splits))
    folds = make_folds(config, models, [train for train, _ in splits], device, fire=True)
    trainer = BatchedTrainer(FoldStack(models, execution.grouped), folds, config, execution, config.fire_rate,
                             config.steps)
    trainer.epoch()  # warm-up (graph capture, compilation), not timed
    synchronise(device)
    start = time.perf_counter()
    for _ in range(epochs):
        trainer.epoch()
    synchronise(device)
    return time.perf_counter() - start


def time_evaluation(config, dataset, splits, device) -> float:
    """Seconds of the final evaluation of every read-out with both CNN baselines' CAMs, all folds' test images."""
    cnn_config = config.replace(epochs=1)
    cnns = {size: train_cnns(cnn_config, [tr for tr, _ in splits], size, device) for size in CNN_WIDTHS}
    models = [ncawss.NCAClassifier.from_config(config, len(dataset.classes)).to(device) for _ in splits]
    synchronise(device)
    start = time.perf_counter()
    for i, ((train, test), model) in enumerate(zip(splits, models)):
        _, normalisation = normalised_training_set(train, config.image_size)
        prepared = TestSet.prepare(test, normalisation, config.image_size, {s: cnns[s][i] for s in CNN_WIDTHS},
                                   ("gradcam", "eigencam"), device)
        evaluate(model, prepared, config, device)
    synchronise(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per row, after one warm-up epoch")
    p.add_argument("--images", type=int, default=240, help="synthetic images in the folds (default 240)")
    p.add_argument("--data", help="a dataset Parquet file instead of synthetic images")
    p.add_argument("--skip", nargs="*", default=[], choices=["sequential", "grouped", "evaluation", "compiled"],
                   help="parts to leave out")
    args = p.parse_args()
    device = torch.device(args.device)
    config = ncawss.load_config(ROOT / "configs/paper.yaml")
    dataset = ncawss.read_dataset(args.data) if args.data else ncawss.make_synthetic(n=args.images, size=64)
    splits = [(dataset.subset(tr), dataset.subset(te))
              for tr, te in ncawss.stratified_folds(dataset.labels, args.folds, 0)]
    images = sum(len(tr) for tr, _ in splits) * args.epochs

    rows = []
    eager = config.replace(cuda_graph=False, precision="fp32", compile=False)
    if "sequential" not in args.skip:
        seconds = sum(time_training(eager, [s], device, args.epochs) for s in splits)
        rows.append(("sequential (one fold at a time)", seconds))
    if device.type == "cpu":
        rows.append(("batched, fold by fold (default)", time_training(eager, splits, device, args.epochs)))
    rows.append(("batched, one stacked pass", time_training(eager, splits, device, args.epochs, fold_by_fold=False)))
    if "grouped" not in args.skip:
        rows.append(("batched, grouped convolutions",
                     time_training(eager, splits, device, args.epochs, True, False)))
    if device.type == "cpu":
        bf16 = eager.replace(precision="bf16")
        rows.append(("fold by fold, bf16", time_training(bf16, splits, device, args.epochs)))
        rows.append(("fold by fold, bf16, compiled", time_training(bf16.replace(compile=True), splits, device,
                                                                   args.epochs)))
        auto = config.replace(precision="auto", compile="auto")
        plan = Execution.plan(auto, device, len(splits), images=max(len(tr) for tr, _ in splits))
        rows.append((f"auto: {plan.precision}{', compiled' if plan.compiled else ''}",
                     time_training(auto, splits, device, args.epochs)))
    if device.type == "cuda":
        rows.append(("batched + CUDA graph", time_training(config, splits, device, args.epochs)))
        rows.append(("batched grouped + CUDA graph", time_training(config, splits, device, args.epochs, True)))
        bf16 = config.replace(precision="bf16")
        rows.append(("batched + CUDA graph, bf16", time_training(bf16, splits, device, args.epochs)))
        triton = config.replace(kernel="triton")
        rows.append(("triton + CUDA graph", time_training(triton, splits, device, args.epochs)))
        rows.append(("triton + CUDA graph, bf16", time_training(triton.replace(precision="bf16"),
                                                               splits, device, args.epochs)))
        if "compiled" not in args.skip:  # what compile: auto would weigh on CUDA (it does not compile there)
            compiled = config.replace(cuda_graph=False, compile=True)
            rows.append(("batched, compiled, no CUDA graph", time_training(compiled, splits, device, args.epochs)))
            rows.append(("batched, compiled, no CUDA graph, bf16",
                         time_training(compiled.replace(precision="bf16"), splits, device, args.epochs)))
    epoch_seconds = min(s for _, s in rows) / args.epochs

    evaluation = None if "evaluation" in args.skip else time_evaluation(config, dataset, splits, device)

    limits = device_limits(device)
    print(f"machine: {machine(device)}; {limits}")
    print(f"paper configuration (32 ch, hidden 32, 32 steps, 64x64, batch 32 per fold), {args.folds} folds of "
          f"{dataset.name} ({sum(len(tr) for tr, _ in splits)} training images), {args.epochs} timed epochs\n")
    flops = paper_flops_per_image(config.channels, config.hidden, config.steps, config.image_size)
    traffic = fused_bytes_per_image(config.channels, config.hidden, config.steps, config.image_size)
    print("| path                             | seconds | images/s | vs sequential | share of the device's limits"
          "          |")
    print("|----------------------------------|--------:|---------:|--------------:|-----------------------------"
          "----------|")
    base = rows[0][1]
    for name, seconds in rows:
        print(f"| {name:<32} | {seconds:7.2f} | {images / seconds:8.0f} | {base / seconds:12.2f}x | "
              f"{limits.shares(images / seconds, flops, traffic):<37} |")
    if evaluation is None:
        return
    print(f"\nfinal evaluation ({1 + len(config.variants)} read-outs, intensity + 4 CAM baselines, "
          f"{sum(len(te) for _, te in splits)} test images of {args.folds} folds): {evaluation:.2f} s "
          f"= {evaluation / epoch_seconds:.2f} of one batched training epoch ({epoch_seconds:.2f} s)")


if __name__ == "__main__":
    main()
