#!/usr/bin/env python3
"""The threshold baselines on every image of a dataset with masks: per-image Otsu on gray (dark
side) and on each colour channel (side by the border rule), mean IoU at the ground truth's
resolution and per image at 64x64 (the ground truth resized nearest). No training.

    .venv/bin/python bench/thresholds.py --data data/zheng2018-d1.parquet
"""
from __future__ import annotations

import argparse

import numpy as np

import ncawss
from ncawss.method.readout.thresholds import threshold_masks
from ncawss.method.scoring.metrics import at_authors_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="dataset files with masks")
    p.add_argument("--target", default="cell", choices=["cell", "nucleus"])
    args = p.parse_args()
    rows = {}
    for path in args.data:
        try:
            data = ncawss.read_dataset(path)
        except ncawss.DataError as exc:
            raise SystemExit(f"error: {exc}") from None
        truth = data.target_masks(args.target)
        per_image = [threshold_masks(image) for image in data.images]
        small = [at_authors_size(t) for t in truth]
        rows[data.name] = {name: (np.mean([ncawss.iou(m[name], t) for m, t in zip(per_image, truth)]),
                                  np.mean([ncawss.iou(at_authors_size(m[name]), t) for m, t in zip(per_image, small)]))
                           for name in per_image[0]}
        print(f"{data.name}: {len(data)} images, target {args.target}", flush=True)
    names = list(next(iter(rows.values())))
    print("\nIoU % of each threshold on all images: at the ground truth's resolution / per image at 64x64")
    print("| dataset | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for dataset, values in rows.items():
        best = max(values, key=lambda n: values[n][0])
        print(f"| {dataset} | " + " | ".join(("**{:.1f}** / {:.1f}" if n == best else "{:.1f} / {:.1f}").format(
            100 * values[n][0], 100 * values[n][1]) for n in names) + " |")


if __name__ == "__main__":
    main()
