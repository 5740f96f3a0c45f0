#!/usr/bin/env python3
"""k-fold cross-validation of NCA-WSS on one dataset, no Ray: the k folds train as one batched
model (--sequential: one after another).

With no arguments: 2 folds on built-in synthetic data with configs/quickstart.yaml.
A stratified holdout (--holdout, default 0.2) is set aside before the folds are
built; after cross-validation the k fold models segment it (majority vote).
Every IoU is printed beside each baseline's on the same images: the threshold
baselines (intensity and the colour channels otsu_*) always, and with --baselines
gradcam and eigencam (a CNN trained per fold).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ncawss
from ncawss.data import DataFile, write_chunks
from ncawss.method.baselines import CAM_KINDS
from ncawss.method.config import override
from ncawss.method.prepared import PreparedSet
from ncawss.method.scoring.ensemble import score_chunks
from ncawss.method.scoring.scores import HINDSIGHT

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset file or URI written by jobs/prepare_data.py (default: synthetic)")
    p.add_argument("--config", default=str(ROOT / "configs/quickstart.yaml"), help="training options (YAML)")
    p.add_argument("--folds", type=int, default=2, help="k of k-fold (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the holdout and fold split (default 0)")
    p.add_argument("--holdout", type=float, default=0.2, help="stratified share set aside (default 0.2; 0: none)")
    p.add_argument("--baselines", nargs="+", default=[], choices=CAM_KINDS,
                   help="CAM baselines beside NCA-WSS, a CNN trained per fold (the thresholds, intensity and "
                        "otsu_*, are always on)")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="override the config's precision")
    p.add_argument("--kernel", choices=["torch", "triton"], help="override the config's NCA step kernel")
    p.add_argument("--no-cuda-graph", action="store_true", help="on CUDA, run every batch eagerly")
    p.add_argument("--sequential", action="store_true", help="train the folds one after another")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--save", metavar="DIR", help="write the fold models (weights_fold<i>.pt, for jobs/predict.py and "
                                                  "jobs/evaluate.py) and the held-out images (holdout.parquet) to DIR")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.folds < 2:
            raise ValueError(f"--folds {args.folds}: k-fold cross-validation needs at least 2 folds")
        if not 0.0 <= args.holdout < 1.0:
            raise ValueError(f"--holdout {args.holdout}: the held-out share must lie in [0, 1)")
        config = ncawss.load_config(args.config)
        overrides = {"epochs": args.epochs, "precision": args.precision, "kernel": args.kernel,
                     "cuda-graph": False if args.no_cuda_graph else None}
        for option, value in overrides.items():
            if value is not None:
                config = override(config, option, value)
        source = DataFile.open(args.data) if args.data else \
            DataFile.of(ncawss.make_synthetic(n=200, size=config.image_size), "synthetic:n=200,seed=0")
        kept, held = ncawss.holdout_split(source.labels, args.holdout, args.seed)
        print(f"preparing {len(kept)} images of {source.name} at {config.image_size} px, a chunk at a time")
        dataset = prepared(source, kept, config)
    except (ncawss.ConfigError, ncawss.DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cam_kinds = tuple(b for b in CAM_KINDS if b in args.baselines)
    print(f"NCA-WSS {args.folds}-fold cross-validation on {source.name}: {len(kept)} images in the folds, "
          f"{len(held)} held out")
    print("config:", config.model_dump_json())
    started = time.perf_counter()
    result = ncawss.cross_validate(config, dataset, k=args.folds, seed=args.seed,
                                   device=args.device, cam_kinds=cam_kinds, batched=not args.sequential)
    seconds = time.perf_counter() - started
    holdout = None
    if len(held):
        ensemble = ncawss.Ensemble(config=config, folds=[f.model for f in result.folds], classes=source.classes)
        holdout = score_chunks(ensemble, source.rows(held), args.device, cam_kinds)
    print_report(config, result, holdout)
    execution = result.folds[0].execution
    print(f"\ncross-validation wall time: {seconds:.1f} s ({'sequential' if args.sequential else 'batched'} folds, "
          f"{args.device}, {execution.precision}{', compiled' if execution.compiled else ''} (precision: "
          f"{config.precision}, compile: {config.compile}), baselines trained and every read-out evaluated included)")
    if args.json:
        write_json(args, config, source, result, holdout, seconds)
    if args.save:
        save_models(Path(args.save), config, source, result, held, cam_kinds)
    return 0


def prepared(source: DataFile, indices, config) -> PreparedSet:
    """The samples `indices` at the training resolution, with the thresholds' IoU under every
    post-processing of the read-outs: what the folds train and are scored on, with the values the
    full images give and a chunk of them in memory at a time."""
    return PreparedSet.from_chunks(source.rows(indices), [config.image_size], posts=config.posts)


def save_models(folder: Path, config, source: DataFile, result, held, cam_kinds) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, fold in enumerate(result.folds):
        ncawss.FoldRecord(model=fold.model, config=config, classes=source.classes, fold=i, test_ids=fold.test_ids,
                          source={"name": source.name, "fingerprint": source.fingerprint},
                          cam_kinds=cam_kinds).save(folder)
    if len(held):
        write_chunks(source.rows(held), folder / "holdout.parquet")
    print(f"wrote {len(result.folds)} fold models{' and holdout.parquet' if len(held) else ''} to {folder}")


def print_report(config, result: ncawss.CVResult, holdout: ncawss.PerReadout | None) -> None:
    baselines = list(result.folds[0].scores.baselines)
    col = max(len(b) for b in baselines) + 1
    print(f"\nIoU in %, at the ground truth's resolution; NCA-WSS read-out: {config.readout.name}; "
          f"{config.epochs} epochs per fold; iou64p: the authors' metric (64x64, pooled over batches of 32); "
          f"{HINDSIGHT}")
    print(f"{'fold':>4} {'test':>5} {'accuracy':>9} {'NCA-WSS':>8} {'iou64p':>7}"
          + "".join(f"{b:>{col}}" for b in baselines) + f" {'lift':>6}")
    for i, fold in enumerate(result.folds, start=1):
        s = fold.scores
        print(f"{i:>4} {len(fold.test_ids):>5} {s.accuracy:>9.3f} {100 * s.iou:>8.1f} {100 * s.iou64_pooled:>7.1f}"
              + "".join(f"{100 * s.baselines[b]:>{col}.1f}" for b in baselines) + f" {100 * s.lift:>+6.1f}")
    mean = result.scores
    print(f"mean {100 * mean.iou:.1f} ± {100 * result.std():.1f} (NCA-WSS); "
          + "; ".join(f"{b} {100 * mean.baselines[b]:.1f} ± {100 * result.std(b):.1f}" for b in baselines)
          + f"; accuracy {mean.accuracy:.3f}")
    print("\nRead-out variants (same weights; mean over folds; baselines under the same smoothing, "
          "orientation, post-processing and target):")
    rows = variant_table(config, result)
    width = max(len(name) for name in [*rows, "variant"])
    print(f"{'variant':<{width}} {'NCA-WSS':>8} {'iou64p':>7}" + "".join(f"{b:>{col}}" for b in baselines))
    for name, row in rows.items():
        print(f"{name:<{width}} {100 * row.iou:>8.1f} {100 * row.iou64_pooled:>7.1f}"
              + "".join(f"{100 * row.baselines.get(b, np.nan):>{col}.1f}" for b in baselines))
    if holdout is not None:
        score = holdout.configured
        print(f"\nHeld-out images, majority vote of the {len(score.fold_iou)} fold models: NCA-WSS "
              f"{100 * score.iou:.1f} (folds alone: {', '.join(f'{100 * v:.1f}' for v in score.fold_iou)}); "
              + "; ".join(f"{b} {100 * score.baselines[b]:.1f}" for b in baselines) + f"; lift {100 * score.lift:+.1f}")
    else:
        print("\nNo holdout: the cross-validation number is the only one.")


def variant_table(config, result: ncawss.CVResult) -> dict[str, ncawss.Scores]:
    """The configured read-out (labelled by its config key, `readout`) and each variant: the mean
    over folds of NCA-WSS's and each baseline's IoU."""
    variants = config.variant_readouts()
    rows = {f"readout ({config.readout.name})": result.scores}
    rows.update({f"{name} ({variants[name].name})": ncawss.Scores.mean([f.evaluations.variants[name].scores
                                                                       for f in result.folds])
                 for name in result.folds[0].evaluations.variants})
    return rows


def write_json(args, config, source: DataFile, result, holdout, seconds: float) -> None:
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {args.device}",
        "dataset": source.name, "fingerprint": source.fingerprint, "folds": args.folds, "seed": args.seed,
        "holdout": args.holdout, "config": config.model_dump(), "epochs": config.epochs,
        "fold_iou": result.scores.fold_iou, "fold_baseline_iou": [f.scores.baselines for f in result.folds],
        "fold_accuracy": [f.scores.accuracy for f in result.folds], "wall_seconds": seconds,
        "mean_iou": result.scores.iou, "std_iou": result.std(), "mean_accuracy": result.scores.accuracy,
        "variants": {name: s.as_dict() for name, s in variant_table(config, result).items()},
        "holdout_scores": None if holdout is None else
        {"configured": holdout.configured.as_dict(), "variants": {n: s.as_dict() for n, s in holdout.variants.items()}},
        "history": [f.history for f in result.folds],
    }
    Path(args.json).write_text(json.dumps(record, indent=1, default=lambda v: np.asarray(v).tolist()))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
