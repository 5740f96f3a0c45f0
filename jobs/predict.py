#!/usr/bin/env python3
"""Masks for new images from a trained NCA-WSS model (the k fold models of one configuration).

MODEL: a sweep output directory (its best configuration), a folder of fold weights
(cross_validate.py --save), an MLflow trial run id, or an MLflow model URI
(models:/NAME/VERSION, models:/<logged model id>, runs:/ID/model). PATH: folders of images
(PNG, BMP, TIFF, JPEG), single image files, or dataset Parquet files (jobs/prepare_data.py).

For each image, at the image's own resolution, DIR gets masks/<id>.png (0/255: the
majority vote of the fold models under the configuration's read-out), overlays/<id>.png
(the mask's outline on the image) and one row of predictions.csv (id, source, class and
its probability (mean of the folds' softmax), the quality score and the label-free signals
it is drawn from, and the true IoU where the input has masks). contact_sheet.png shows the
lowest-quality images first.

Quality score (label-free): the mask's best agreement (IoU) with any threshold baseline's
mask of the image (grayscale or one colour channel), times the mask's solidity. Beside it:
stability (every fold model segments the image --runs more times with random fire masks:
the mean IoU over pairs of masks from two different folds), fold agreement, the agreement
with each threshold, PC1's variance share, Otsu's separability, the class margin and the
mask's shape (ncawss/method/inference/quality.py documents each). Low scores flag masks to check.
Where masks exist, the job prints the Spearman correlation between quality and true IoU,
so you can see whether to trust the score on your data.

Exit status: the number of inputs that failed (at most 254); 255 where nothing could
run (model not found, output not writable).
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

import ncawss
from ncawss import Ensemble, Predictor, environment
from ncawss.data import IMAGE_SUFFIXES, DataError, dataset_metadata, encode_png, iter_dataset, replace_atomically
from ncawss.method.inference.gallery import overlay
from ncawss.method.inference.predict import QUALITY_RUNS, decode_image
from ncawss.method.inference.quality import rank_by_score, signal_columns
from ncawss.tracking import TrackingError
from ncawss.tracking.sources import load_records

FATAL = 255
FAST = 1  # zlib compress_level of the masks and overlays written
COLUMNS = ["id", "source", "label", "probability", "quality", *signal_columns(), "iou", "error"]


@dataclass
class Item:
    id: str
    source: str
    image: np.ndarray | None = None
    truth: np.ndarray | None = None
    error: str | None = None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="sweep output directory, fold weights folder, MLflow trial run id, "
                                                  "or MLflow model URI (models:/NAME/VERSION, models:/<logged model "
                                                  "id>, runs:/ID/model)")
    p.add_argument("--images", nargs="+", required=True, metavar="PATH",
                   help="image folders, image files, or dataset Parquet files")
    p.add_argument("--output", required=True, metavar="DIR", help="where masks, overlays and predictions.csv go")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--read-out", metavar="NAME",
                   help="one of the configuration's read-out variants (default: its configured read-out)")
    p.add_argument("--runs", type=int, default=QUALITY_RUNS,
                   help=f"stochastic runs per fold for the stability signal (default {QUALITY_RUNS}; 0: none)")
    p.add_argument("--sheet", type=int, default=24, help="images on the contact sheet (default 24)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI for run ids and model URIs "
                                        "(default: $MLFLOW_TRACKING_URI)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    environment.for_job()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    output = Path(args.output)
    try:
        ensemble = load_ensemble(args)
        predictor = Predictor(ensemble, args.device, args.runs)  # a bad --device or --runs fails here
        output.mkdir(parents=True, exist_ok=True)
        (output / "masks").mkdir(exist_ok=True)
        (output / "overlays").mkdir(exist_ok=True)
    except (DataError, TrackingError, OSError, ValueError, RuntimeError, AssertionError) as exc:
        # AssertionError: what a CPU-only torch raises for --device cuda
        print(f"error: {exc}", file=sys.stderr)
        return FATAL
    config = ensemble.config
    print(f"model: {args.model}: {len(ensemble.folds)} fold models, classes {', '.join(ensemble.classes)}; "
          f"read-out {args.read_out or 'configured'} ({config.readout.name}); stability from {args.runs} runs per fold")
    rows, failed, started, writing = [], [], time.perf_counter(), []
    # A chunk's files are written in a second thread while the next chunk is predicted: PNG
    # encoding, a third of the job's time, releases the GIL, and prediction leaves a core idle
    # most of the time. At most two chunks are held.
    with tqdm(total=count_inputs(args.images), unit="image", desc="predict", file=sys.stderr) as bar, \
            ThreadPoolExecutor(1) as writer:
        for chunk in batched(inputs(args.images, ensemble.min_side, config.readout.target), predictor.batch_size):
            good = [item for item in chunk if item.error is None]
            failed += [{"id": item.id, "source": item.source, "error": item.error} for item in chunk if item.error]
            predictions = predictor.chunk([item.image for item in good]) if good else []
            rows += [future.result() for future in writing]
            writing = [writer.submit(write_outputs, output, item, prediction, ensemble.classes)
                       for item, prediction in zip(good, predictions)]
            bar.update(len(chunk))
        rows += [future.result() for future in writing]
    seconds = time.perf_counter() - started
    write_atomic(output / "predictions.csv", csv_text(rows + failed))
    if rows:
        write_atomic(output / "contact_sheet.png", contact_sheet(output, rows, "quality", args.sheet))
    report(rows, len(failed), output, seconds)
    return min(len(failed), FATAL - 1)


def load_ensemble(args) -> Ensemble:
    with tempfile.TemporaryDirectory() as scratch:
        records, _ = load_records(args.model, args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI"), scratch)
    ensemble = Ensemble.from_records(records, args.model)
    if args.read_out is None:
        return ensemble
    variants = ensemble.config.variant_readouts()
    if args.read_out not in variants:
        raise DataError(f"--read-out {args.read_out}: the model's configuration has the variants "
                        f"{', '.join(variants) or '(none)'}")
    return Ensemble(config=ensemble.config.replace(readout=variants[args.read_out]), folds=ensemble.folds,
                    classes=ensemble.classes)


def inputs(paths: list[str], min_side: int, target: str) -> Iterator[Item]:
    """Every input image, decoded one at a time as it is needed (or its one-line fault, printed);
    grayscale and RGBA converted, with a note. The same name in two folders: both kept."""
    seen: dict[str, int] = {}
    for item in (item for spec in paths for item in path_items(spec, min_side, target)):
        seen[item.id] = seen.get(item.id, 0) + 1
        if seen[item.id] > 1:
            item.id = f"{item.id}-{seen[item.id]}"
        if item.error:
            tqdm.write(f"error: {item.error}", file=sys.stderr)  # on its own line, above the progress bar
        yield item


def path_items(spec: str, min_side: int, target: str) -> Iterator[Item]:
    path = Path(spec)
    if "://" not in spec and not path.exists():
        yield Item(path.stem or spec, spec, error=f"{spec}: no such file or folder")
    elif path.suffix.lower() == ".parquet" or "://" in spec:
        yield from dataset_items(spec, target)
    elif path.is_dir():
        files = folder_files(path)
        if not files:
            yield Item(path.name or spec, spec, error=f"{spec}: empty folder, no images")
        yield from (file_item(p, min_side) for p in files)
    else:
        yield file_item(path, min_side)


def folder_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def count_inputs(paths: list[str]) -> int | None:
    """How many images the inputs hold, for the progress bar (None where a file cannot tell)."""
    total = 0
    for spec in paths:
        path = Path(spec)
        try:
            if path.suffix.lower() == ".parquet" or "://" in spec:
                total += dataset_metadata(spec)["rows"]
            else:
                total += len(folder_files(path)) if path.is_dir() else 1
        except (DataError, OSError):
            total += 1  # reported as one failed input
    return total


def batched(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    """Lists of `size` consecutive items (the last one shorter)."""
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def file_item(path: Path, min_side: int) -> Item:
    item = Item(path.stem, str(path))
    try:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: not an image file (expected .png, .bmp, .tif, .tiff, .jpg or .jpeg)")
        item.image, note = decode_image(path.read_bytes(), str(path), min_side)
        if note:
            tqdm.write(f"note: {note}", file=sys.stderr)
    except (DataError, OSError) as exc:
        item.error = str(exc)
    return item


def dataset_items(spec: str, target: str) -> Iterator[Item]:
    """A dataset file's samples, read chunk by chunk (memory holds one chunk)."""
    try:
        for dataset in iter_dataset(spec):
            if dataset.masks is None:
                truth = [None] * len(dataset)
            elif dataset.unmasked and target == "cell":  # some samples lack a mask: those are not scored
                truth = dataset.masks
            else:
                truth = dataset.target_masks(target)
            sources = dataset.sources or [f"{spec}#{i}" for i in dataset.ids]
            yield from (Item(i, s or f"{spec}#{i}", image, t)
                        for i, s, image, t in zip(dataset.ids, sources, dataset.images, truth))
    except DataError as exc:
        yield Item(Path(spec).stem, spec, error=str(exc))


def write_outputs(output: Path, item: Item, prediction, classes: list[str]) -> dict:
    name = safe_name(item.id)
    # zlib's fastest level: PNG encoding is the job's largest cost after the NCA, and level 1 takes
    # 40% less time than the default for 10% larger files.
    write_atomic(output / "masks" / f"{name}.png", encode_png(prediction.mask.astype(np.uint8) * 255, FAST))
    write_atomic(output / "overlays" / f"{name}.png", encode_png(overlay(item.image, prediction.mask), FAST))
    row = {"id": item.id, "source": item.source, "label": classes[prediction.label],
           "probability": round(prediction.probability, 4), "quality": round(prediction.quality, 4),
           **{name: round(value, 4) for name, value in prediction.signals.columns().items()}}
    if item.truth is not None:
        row["iou"] = round(ncawss.iou(prediction.mask, item.truth), 4)
    return row


def safe_name(image_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in image_id)


def write_atomic(path: Path, content: bytes | str) -> None:
    data = content.encode() if isinstance(content, str) else content
    replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def contact_sheet(output: Path, rows: list[dict], key: str, count: int, tile: int = 160, per_row: int = 6) -> bytes:
    """Overlays of the lowest-quality images first (`key`), each captioned with id, score and class."""
    ranked = sorted(rows, key=lambda r: r[key])[:count]
    lines = -(-len(ranked) // per_row)
    sheet = Image.new("RGB", (per_row * tile, lines * (tile + 28)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, row in enumerate(ranked):
        x, y = (n % per_row) * tile, (n // per_row) * (tile + 28)
        with Image.open(output / "overlays" / f"{safe_name(row['id'])}.png") as img:
            scale = (tile - 4) / max(img.size)
            sheet.paste(img.resize((round(img.width * scale), round(img.height * scale))), (x + 2, y + 2))
        truth = f" IoU {row['iou']:.2f}" if "iou" in row else ""
        draw.text((x + 2, y + tile), f"{row['id'][:22]}", fill="black")
        draw.text((x + 2, y + tile + 13), f"q {row[key]:.2f} {row['label'][:10]}{truth}", fill="black")
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def report(rows: list[dict], failed: int, output: Path, seconds: float) -> None:
    print(f"\n{len(rows)} images written to {output} (masks/, overlays/, predictions.csv, contact_sheet.png); "
          f"{failed} failed; {len(rows) / max(seconds, 1e-9):.1f} images/s")
    quality = np.array([r["quality"] for r in rows])
    if len(rows) and not np.isnan(quality).all():
        lowest = rows[int(quality.argmin())]["id"]
        print(f"quality: median {np.median(quality):.3f}, lowest {quality.min():.3f} ({lowest})")
    scored = [r for r in rows if "iou" in r]
    if len(scored) >= 4:
        for line in quality_lines(np.array([r["quality"] for r in scored]), np.array([r["iou"] for r in scored])):
            print(line)


def quality_lines(quality: np.ndarray, iou: np.ndarray) -> list[str]:
    ranking = rank_by_score(quality, iou)
    return [f"the inputs have masks: mean IoU {100 * iou.mean():.1f} over {len(iou)} images; Spearman(quality, IoU) "
            f"= {ranking.spearman:.2f}",
            f"mean IoU of the lowest-quality quarter {100 * ranking.low_iou:.1f}, "
            f"of the highest-quality quarter {100 * ranking.high_iou:.1f}"]


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
