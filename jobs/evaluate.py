#!/usr/bin/env python3
"""Cross-domain evaluation: trained fold models segment other datasets.

--model takes sweep output directories (their best configuration's fold models,
OUTPUT/best_model), folders of fold weights (cross_validate.py --save), MLflow run
ids of trials (their logged fold weights) or MLflow model URIs (models:/NAME/VERSION,
runs:/ID/model: a sweep's registered model). Each
model's k fold models segment each --data dataset (masks needed, labels not):
on the dataset a model was trained on, every fold scores its own test fold (the
sweep's cross-validation numbers); on any other, the folds' masks are combined
by majority vote. Each dataset file is read a chunk at a time (memory does not grow
with its size). Prints a table (rows: trained on, columns: tested on; cells:
NCA-WSS IoU / best baseline IoU) and logs it to MLflow with a heat map.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import ncawss
from ncawss import environment
from ncawss.data import dataset_metadata, iter_dataset
from ncawss.method.scoring.ensemble import own_fold_scores, score_chunks
from ncawss.tracking.sources import load_records
from ncawss.tracking.tracker import SweepTracker, TrackingError


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, metavar="RUN",
                   help="sweep output directory, folder of fold weights, MLflow run id of a trial, "
                        "or MLflow model URI (models:/NAME/VERSION, models:/<logged model id>, runs:/ID/model)")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH", help="datasets to segment")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI for run ids and for logging the table "
                                        "(default: the sweep directory's store, else $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="cross_domain", help="MLflow experiment of the table (default cross_domain)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args()


def score(records: list[ncawss.FoldRecord], path: str, fingerprint: str, device: str) -> tuple[str, ncawss.Scores]:
    """How one model was scored on one dataset file, and its NCA-WSS and baseline IoU (see the
    module doc). The file is read a chunk at a time."""
    ensemble = ncawss.Ensemble.from_records(records)
    kinds = records[0].cam_kinds
    if fingerprint != records[0].source["fingerprint"]:
        return "majority vote", score_chunks(ensemble, iter_dataset(path), device, kinds).configured
    return "own test folds", own_fold_scores(ensemble, [r.test_ids for r in records], iter_dataset(path), device,
                                             kinds)


def heat_map(table: dict, rows: list[str], columns: list[str]) -> bytes:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.array([[100 * table[r][c]["iou"] for c in columns] for r in rows])
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(columns), 1.2 + 0.8 * len(rows)))
    ax.imshow(values, cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(columns)), columns, rotation=20)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            cell = table[r][c]
            ax.text(j, i, f"{values[i, j]:.1f}\n({100 * cell['best_baseline']:.1f})", ha="center", va="center",
                    color="white" if values[i, j] < 60 else "black", fontsize=9)
    ax.set_title("NCA-WSS IoU (best baseline, chosen in hindsight)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def main() -> int:
    args = parse_args()
    environment.for_job()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    table: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        try:
            datasets = [dataset_metadata(path) for path in args.data]
            uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
            models = [load_records(spec, uri, scratch) for spec in args.model]
        except (ncawss.DataError, TrackingError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    for path, meta in zip(args.data, datasets):
        if meta.get("mask_levels") is None:
            print(f"error: {path}: evaluation needs ground-truth masks, the dataset has none", file=sys.stderr)
            return 2
    rows, columns = [], [meta["name"] for meta in datasets]
    for spec, (records, _) in zip(args.model, models):
        row = f"{records[0].source['name']} [{Path(spec).name if Path(spec).is_dir() else spec}]"
        rows.append(row)
        table[row] = {}
        for path, meta in zip(args.data, datasets):
            print(f"scoring {row} on {meta['name']} ({meta['rows']} samples) ...", file=sys.stderr, flush=True)
            try:
                mode, scores = score(records, path, meta["fingerprint"], args.device)
            except ncawss.DataError as exc:
                print(f"error: {path}: {exc}", file=sys.stderr)
                return 2
            table[row][meta["name"]] = {"mode": mode, **scores.as_dict(), "best_baseline_name": scores.best_baseline,
                                        "best_baseline": scores.baselines[scores.best_baseline]}
    lines = print_table(table, rows, columns)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    uri = args.mlflow_uri or next((u for _, u in models if u), None)
    if uri:
        tracker = SweepTracker(uri, args.experiment)
        metrics = {f"{r.split(' [')[0]}.{c}.{k}": v for r in rows for c in columns
                   for k, v in table[r][c].items() if isinstance(v, float)}
        run_id = tracker.log_run("cross-domain", {"models": " ".join(args.model), "data": " ".join(columns)}, metrics,
                                 {"cross_domain.txt": "\n".join(lines) + "\n",
                                  "cross_domain.json": json.dumps(table, indent=1),
                                  "cross_domain.png": heat_map(table, rows, columns)})
        print(f"\nlogged to MLflow {uri}: experiment {args.experiment}, run {run_id}")
    return 0


def print_table(table: dict, rows: list[str], columns: list[str]) -> list[str]:
    cells = {(r, c): f"{100 * table[r][c]['iou']:.1f} / {100 * table[r][c]['best_baseline']:.1f} "
                     f"({table[r][c]['best_baseline_name']})" for r in rows for c in columns}
    width = max(len(text) for text in [*columns, *cells.values()]) + 2
    corner = "trained on \\ tested on"
    lines = ["IoU in % at the ground truth's resolution: NCA-WSS / best baseline (which); on a model's own "
             "training data each fold scores its own test fold, elsewhere the folds vote; the best colour "
             "threshold (otsu_*) is chosen in hindsight on the test masks",
             f"{corner:<40}" + "".join(f"{c:>{width}}" for c in columns)]
    for r in rows:
        lines.append(f"{r:<40}" + "".join(f"{cells[r, c]:>{width}}" for c in columns))
        for c in columns:
            if "fold_iou" in table[r][c]:
                lines.append(f"  {c}: per fold " + ", ".join(f"{100 * v:.2f}" for v in table[r][c]["fold_iou"]))
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    sys.exit(main())
