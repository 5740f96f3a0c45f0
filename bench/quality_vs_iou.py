#!/usr/bin/env python3
"""How well label-free signals rank images by their true IoU, on predict.py's output for a
dataset with masks: the quality score, the fold agreement alone, and the agreement between the
predicted mask and the grayscale threshold's (a free competitor). Prints one row each.

    .venv/bin/python bench/quality_vs_iou.py --predictions DIR --data DATASET.parquet
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

import ncawss
from ncawss.method.quality import rank_by_score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="predict.py's output directory")
    p.add_argument("--data", required=True, help="the dataset (with masks) it predicted")
    p.add_argument("--target", default="cell", choices=["cell", "nucleus"])
    args = p.parse_args()
    data, out = ncawss.read_dataset(args.data), Path(args.predictions)
    with open(out / "predictions.csv") as handle:
        rows = {r["id"]: r for r in csv.DictReader(handle)}
    iou = np.array([float(rows[i]["iou"]) for i in data.ids])
    masks = [np.asarray(Image.open(out / "masks" / f"{i}.png")) > 0 for i in data.ids]
    thresholds = [ncawss.intensity_baseline(image) for image in data.images]
    signals = {
        "quality": np.array([float(rows[i]["quality"]) for i in data.ids]),
        "fold_agreement": np.array([float(rows[i]["fold_agreement"]) for i in data.ids]),
        "IoU with the threshold's mask": np.array([ncawss.iou(m, t) for m, t in zip(masks, thresholds)]),
    }
    worst = set(rank_by_score(iou, iou).lowest)
    print(f"{len(iou)} images, mean IoU {100 * iou.mean():.1f} (threshold alone: "
          f"{100 * np.mean([ncawss.iou(t, m) for t, m in zip(thresholds, data.target_masks(args.target))]):.1f})")
    print(f"{'signal':<30} {'Spearman':>8} {'IoU low quarter':>16} {'IoU high quarter':>17} "
          f"{'worst quarter caught':>21}")
    for name, signal in signals.items():
        ranking = rank_by_score(signal, iou)
        caught = f"{len(worst & set(ranking.lowest))}/{len(worst)}"
        print(f"{name:<30} {ranking.spearman:>8.2f} {100 * ranking.low_iou:>16.1f} {100 * ranking.high_iou:>17.1f} "
              f"{caught:>21}")


if __name__ == "__main__":
    main()
