#!/usr/bin/env python3
"""Every read-out of the same weights as one fold trains: IoU at the ground truth's resolution,
per image at 64x64, and the authors' pooled 64x64 IoU, beside the threshold baselines.

One fold of the project's split (after the stratified holdout) trains to each epoch count in
turn, continuing from the previous one; epoch 0 is the untrained NCA (its state is the input).

    .venv/bin/python bench/readouts.py --data data/zheng2018-d1.parquet --config configs/paper.yaml \
        --epochs 0 6 12 24 --readouts readout mean_field authors authors_signed binarised
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

import ncawss
from ncawss.data import fold_splits
from ncawss.method.images import normalised_training_set
from ncawss.method.readout.thresholds import threshold_masks
from ncawss.method.scoring.evaluation import TestSet, evaluate
from ncawss.method.scoring.metrics import at_authors_size

CONFIGURED = "readout"  # the configured read-out, by its key in the configuration file


class Continue(ncawss.TrainingHooks):
    """Carries the fold's checkpoint from one train_fold call to the next."""

    def __init__(self):
        self.last = None

    def save_checkpoint(self, checkpoints: list[dict]) -> None:
        self.last = checkpoints

    def load_checkpoint(self) -> list[dict] | None:
        return self.last


def by_name(evaluations: ncawss.PerReadout) -> dict:
    return {CONFIGURED: evaluations.configured, **evaluations.variants}


def untrained(config, train, test) -> dict:
    """Every read-out of the untrained NCA (its hidden channels stay 0) on the test fold."""
    _, normalisation = normalised_training_set(train, config.image_size, config.normalise)
    prepared = TestSet.prepare(test, normalisation, config.image_size)
    return by_name(evaluate(ncawss.NCAClassifier.from_config(config, len(train.classes)), prepared, config))


def thresholds(test) -> tuple[dict[str, float], dict[str, float]]:
    """Each threshold baseline's mean IoU at the ground truth's resolution, and per image at 64x64
    (its mask and the truth resized nearest)."""
    at_gt: dict[str, list[float]] = {}
    at_64: dict[str, list[float]] = {}
    for image, truth in zip(test.images, test.masks):
        for name, mask in threshold_masks(image).items():
            at_gt.setdefault(name, []).append(ncawss.iou(mask, truth))
            at_64.setdefault(name, []).append(ncawss.iou(at_authors_size(mask), at_authors_size(truth)))
    return ({name: float(np.mean(v)) for name, v in at_gt.items()},
            {name: float(np.mean(v)) for name, v in at_64.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--config", default="configs/paper.yaml")
    p.add_argument("--epochs", type=int, nargs="+", default=[0, 12, 24, 36, 48])
    p.add_argument("--readouts", nargs="+", default=["readout", "mean_field", "authors", "authors_signed", "binarised"],
                   help="the config's read-outs: 'readout' (the configured one) and names of its variants")
    p.add_argument("--fold", type=int, default=0, help="which fold of --folds (0-based)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ncawss.load_config(args.config)
    known = {CONFIGURED: config.readout, **config.variant_readouts()}
    unknown = sorted(set(args.readouts) - set(known))
    if unknown:
        raise SystemExit(f"--readouts: {unknown} are not read-outs of {args.config}; it has {sorted(known)}")
    readouts = {name: known[name] for name in args.readouts}
    # the evaluations read out exactly the chosen read-outs (and always the configured one)
    config = config.replace(variants={name: r.model_dump() for name, r in readouts.items() if name != CONFIGURED})
    data = ncawss.read_dataset(args.data)
    kept, _ = ncawss.holdout_split(data.labels, args.holdout, args.seed)
    data = data.subset(kept)
    train_idx, test_idx = fold_splits(data.labels, args.folds, args.seed, config.split)[args.fold]
    train, test = data.subset(train_idx), data.subset(test_idx)
    print(f"{data.name}: fold {args.fold + 1} of {args.folds} after a {args.holdout} holdout, {len(train)} "
          f"training and {len(test)} test images; {args.config}; torch threads {torch.get_num_threads()}")
    print("cells: IoU % at the ground truth's resolution / per image at 64x64 / the authors' pooled 64x64")
    print("read-outs: " + "; ".join(f"{name} = {r.name}" for name, r in readouts.items()))
    at_gt, at_64 = thresholds(test)
    print("threshold baselines on the same test images, IoU % at the ground truth's resolution / per image at "
          "64x64: " + "; ".join(f"{name} {100 * at_gt[name]:.1f} / {100 * at_64[name]:.1f}" for name in at_64))
    hooks, rows = Continue(), []
    for epochs in sorted(args.epochs):
        started = time.perf_counter()
        if epochs == 0:
            found = untrained(config, train, test)
        else:
            found = by_name(ncawss.train_fold(config.replace(epochs=epochs), train, test, hooks).evaluations)
        evaluations = {name: found[name] for name in readouts}
        accuracy = next(iter(evaluations.values())).scores.accuracy
        cells = [f"{100 * e.scores.iou:.1f} / {100 * e.image_iou64.mean():.1f} / {100 * e.scores.iou64_pooled:.1f}"
                 for e in evaluations.values()]
        rows.append([str(epochs), f"{accuracy:.3f}", *cells, f"{time.perf_counter() - started:.0f}"])
        print(f"epoch {epochs}: accuracy {accuracy:.3f}; " + "; ".join(
            f"{name} {cell}" for name, cell in zip(readouts, cells)), flush=True)
    header = ["epochs", "accuracy", *readouts, "seconds"]
    print("\n| " + " | ".join(header) + " |\n|" + "---:|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
