#!/usr/bin/env python3
"""How well each label-free quality signal, and the combined quality score, ranks images by
their true IoU: Spearman, and the mean true IoU of the quarter each ranks lowest and highest.

On predict.py's output for a dataset with masks (the model trained on one domain, the images
from another):

    .venv/bin/python bench/quality_vs_iou.py --predictions DIR [DIR ...] [--candidates]

or in one run on synthetic data: a model trained on domain a, scored on domain b with planted
hard images (the white cell faded into the background, as a weak stain would leave it):

    .venv/bin/python bench/quality_vs_iou.py --synthetic [--epochs 20] [--smooth 1 --post largest]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

SIGNALS_FIRST = ("quality", "stability", "fold_agreement")


def candidates(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The fixed combinations the quality score was chosen from (docs/RESULTS.md section 11)."""
    colour = np.array([v for name, v in c.items() if name.startswith("agree_")])
    best, mean = colour.max(0), colour.mean(0)
    stability = np.where(np.isnan(c["stability"]), c["fold_agreement"], c["stability"])
    shape = [c["solidity"], 1 - c["centre_offset"]]
    return {
        "= best agreement": best,
        "= mean agreement": mean,
        "= mean(stab, folds, best)": (stability + c["fold_agreement"] + best) / 3,
        "= stab x best": stability * best,
        "= best x solidity": best * c["solidity"],
        "= mean(agree 3, shape)": np.mean([stability, c["fold_agreement"], best, *shape], axis=0),
        "= mean(.., separability)": np.mean([stability, c["fold_agreement"], best, *shape, c["separability"]], axis=0),
        "= geomean(stab, best, shape)": np.prod([stability, best, *shape], axis=0) ** 0.25,
        "= stab x best x solidity": stability * best * c["solidity"],
        "= best x raw solidity": best * c["raw_solidity"],
        "= best x sqrt(sol x raw sol)": best * np.sqrt(c["solidity"] * c["raw_solidity"]),
    }


def read_predictions(folder: Path) -> dict[str, np.ndarray]:
    """predictions.csv's numeric columns of the rows with a true IoU."""
    with open(folder / "predictions.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("iou")]
    if not rows:
        raise SystemExit(f"{folder}/predictions.csv: no row has a true IoU (predict a dataset with masks)")
    skip = {"id", "source", "label", "error"}
    return {name: np.array([float(r[name]) for r in rows]) for name in rows[0] if name not in skip}


def table(columns: dict[str, np.ndarray], title: str, with_candidates: bool = False) -> None:
    from ncawss.method.inference.quality import rank_by_score

    iou = columns["iou"]
    worst = set(rank_by_score(iou, iou).lowest)
    print(f"\n{title}: {len(iou)} images, mean IoU {100 * iou.mean():.1f}")
    print(f"| {'signal':<28} | Spearman | IoU lowest quarter | IoU highest quarter | worst quarter caught |")
    print("|------------------------------|---------:|-------------------:|--------------------:|---------------------:|")
    names = [n for n in SIGNALS_FIRST if n in columns] + sorted(set(columns) - set(SIGNALS_FIRST) - {"iou"})
    if with_candidates:
        extra = candidates(columns)
        columns, names = {**columns, **extra}, names + list(extra)
    for name in names:
        signal = columns[name]
        if np.isnan(signal).all() or np.ptp(signal) == 0:
            print(f"| {name:<28} |        - |                  - |                   - |                    - |")
            continue
        r = rank_by_score(signal, iou)
        caught = f"{len(worst & set(r.lowest))}/{len(worst)}"
        print(f"| {name:<28} | {r.spearman:8.2f} | {100 * r.low_iou:18.1f} | {100 * r.high_iou:19.1f} | {caught:>20} |")


def fade(image: np.ndarray, mask: np.ndarray, amount: float) -> np.ndarray:
    """The cell blended into the median background colour: a planted hard image."""
    background = np.median(image[~mask], axis=0)
    out = image.astype(float)
    out[mask] = (1 - amount) * out[mask] + amount * background
    return out.round().astype(np.uint8)


def synthetic_columns(epochs: int, smooth: float = 0.0, post: str = "none") -> dict[str, np.ndarray]:
    """Train on synthetic domain a (2 folds), predict domain b with a third of it faded; the
    quick start's configuration, its mean-field read-out with `smooth` and `post`."""
    import ncawss
    from ncawss import predict

    config = ncawss.load_config(Path(__file__).resolve().parents[1] / "configs/quickstart.yaml")
    readout = config.readout.replace(smooth=smooth, post=post)
    config = config.replace(epochs=epochs, variants={}, readout=readout)
    train = ncawss.make_synthetic(n=120, size=32, seed=1, domain="a")
    result = ncawss.cross_validate(config, train, k=2, seed=0)
    ensemble = ncawss.Ensemble(config, [f.model for f in result.folds], train.classes)
    target = ncawss.make_synthetic(n=60, size=32, seed=2, domain="b")
    truth = target.target_masks("cell")
    amounts = [0.0] * 40 + list(np.linspace(0.4, 0.9, 20))
    images = [fade(image, mask, a) for image, mask, a in zip(target.images, truth, amounts)]
    predictions = predict(ensemble, images, runs=4)
    columns: dict[str, list[float]] = {"quality": [], "iou": []}
    for p, t in zip(predictions, truth):
        columns["quality"].append(p.quality)
        columns["iou"].append(ncawss.iou(p.mask, t))
        for name, value in p.signals.columns().items():
            columns.setdefault(name, []).append(value)
    return {name: np.array(values) for name, values in columns.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", nargs="*", default=[], help="predict.py output directories")
    p.add_argument("--synthetic", action="store_true", help="train on synthetic a, score synthetic b (one run)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of --synthetic (default 20)")
    p.add_argument("--candidates", action="store_true", help="also the combinations the score was chosen from")
    p.add_argument("--smooth", type=float, default=0.0, help="--synthetic: the read-out's smoothing (default 0)")
    p.add_argument("--post", default="none", choices=["none", "largest", "centre"],
                   help="--synthetic: the read-out's post-processing (default none)")
    args = p.parse_args()
    if not args.predictions and not args.synthetic:
        p.error("give --predictions DIR or --synthetic")
    for folder in args.predictions:
        table(read_predictions(Path(folder)), folder, args.candidates)
    if args.synthetic:
        table(synthetic_columns(args.epochs, args.smooth, args.post),
              f"trained on synthetic a, scored on synthetic b (20 of 60 faded); read-out smooth {args.smooth}, "
              f"post {args.post}", args.candidates)


if __name__ == "__main__":
    main()
