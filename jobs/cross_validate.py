#!/usr/bin/env python3
"""k-fold cross-validation of NCA-WSS on one dataset, sequential, no Ray.

With no arguments: 2 folds on built-in synthetic data with configs/quickstart.yaml.
Prints per-fold and mean IoU beside the intensity baseline's on the same images.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import sys
from pathlib import Path

import numpy as np
import torch

import ncawss
from ncawss.train import READOUTS

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset file or URI written by jobs/prepare_data.py (default: synthetic)")
    p.add_argument("--config", default=str(ROOT / "configs/quickstart.yaml"), help="training options (YAML)")
    p.add_argument("--folds", type=int, default=2, help="k of k-fold (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold split (default 0)")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        config = ncawss.load_config(args.config)
        if args.epochs is not None:
            config = config.model_copy(update={"epochs": args.epochs})
        dataset = ncawss.read_dataset(args.data) if args.data else ncawss.make_synthetic(n=200, size=config.image_size)
    except (ncawss.ConfigError, ncawss.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"NCA-WSS {args.folds}-fold cross-validation on {dataset.name} ({len(dataset)} images)")
    print("config:", config.model_dump_json())
    result = ncawss.cross_validate(config, dataset, k=args.folds, seed=args.seed, device=args.device)

    other = [r for r in READOUTS if r != config.readout]
    print(f"\nIoU in %, at the ground truth's resolution; NCA-WSS read-out: {config.readout} "
          f"(also shown: {', '.join(other)} of the same weights)")
    print(f"{'fold':>4} {'test':>5} {'accuracy':>9} {'NCA-WSS':>8} {'intensity':>10} {'lift':>6}"
          + "".join(f" {r:>11}" for r in other))
    for i, fold in enumerate(result.folds, start=1):
        print(f"{i:>4} {len(fold.test_ids):>5} {fold.accuracy:>9.3f} {100 * fold.iou:>8.1f} "
              f"{100 * fold.baseline_iou:>10.1f} {100 * (fold.iou - fold.baseline_iou):>+6.1f}"
              + "".join(f" {100 * fold.readout_iou[r]:>11.1f}" for r in other))
    print(f"mean IoU {100 * result.mean_iou:.1f} ± {100 * result.std_iou:.1f} (NCA-WSS) vs "
          f"{100 * result.mean_baseline_iou:.1f} ± {100 * result.std_baseline_iou:.1f} (intensity baseline); "
          f"accuracy {result.mean_accuracy:.3f}; {config.epochs} epochs per fold")
    if args.json:
        write_json(args, config, dataset, result)
    return 0


def write_json(args, config, dataset, result) -> None:
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {args.device}",
        "dataset": dataset.name, "fingerprint": dataset.fingerprint, "folds": args.folds, "seed": args.seed,
        "config": config.model_dump(),
        "fold_iou": result.fold_iou, "fold_baseline_iou": result.fold_baseline_iou,
        "readout": config.readout,
        "fold_readout_iou": [f.readout_iou for f in result.folds],
        "fold_accuracy": [f.accuracy for f in result.folds], "fold_seconds": [f.seconds for f in result.folds],
        "mean_iou": result.mean_iou, "std_iou": result.std_iou,
        "mean_baseline_iou": result.mean_baseline_iou, "std_baseline_iou": result.std_baseline_iou,
        "mean_accuracy": result.mean_accuracy,
        "history": [f.history for f in result.folds],
    }
    Path(args.json).write_text(json.dumps(record, indent=1, default=lambda v: np.asarray(v).tolist()))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
