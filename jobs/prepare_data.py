#!/usr/bin/env python3
"""Convert a raw dataset layout into the Parquet dataset file every job reads.

Examples:
  python jobs/prepare_data.py zheng2018 --source DIR --output data/zheng2018-d1.parquet
  python jobs/prepare_data.py zheng2018 --source DIR --subset 2 --output data/zheng2018-d2.parquet
  python jobs/prepare_data.py folder --source DIR --output data/mine.parquet
  python jobs/prepare_data.py imagefolder --source Raabin --output data/raabin.parquet  # images/<class>/, GT_masks/
  python jobs/prepare_data.py prefix --source Matek --output data/matek.parquet         # image/<class>_<n>.jpg, masks/
  python jobs/prepare_data.py synthetic --output data/synthetic-b.parquet --domain b --seed 1
  python jobs/prepare_data.py restain --source data/zheng2018-d1.parquet --seed 1 --strength 0.3 \
      --output data/zheng2018-d1-restained.parquet   # the same images in another stain, masks unchanged
"""
from __future__ import annotations

import argparse
import logging
import sys

import ncawss
from ncawss.data import STRAY_SHARE, dataset_metadata, iter_dataset, write_chunks
from ncawss.method.images import restain


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layout", choices=["zheng2018", "folder", "imagefolder", "prefix", "synthetic", "restain"])
    p.add_argument("--source", help="folder of the raw layout (not for synthetic); restain: a dataset file")
    p.add_argument("--output", required=True, help="Parquet file to write")
    p.add_argument("--subset", type=int, default=1, help="zheng2018: Dataset 1 or 2 (default 1)")
    p.add_argument("--classes", nargs="+", help="folder, imagefolder, prefix: class names in label order "
                                                "(default: sorted)")
    p.add_argument("--name", help="folder, imagefolder, prefix: dataset name (default: the folder's name)")
    p.add_argument("--images-dir", help="imagefolder, prefix: the images' folder under --source "
                                        "(default: images, image)")
    p.add_argument("--masks-dir", help="imagefolder, prefix: the masks' folder under --source "
                                       "(default: GT_masks, masks)")
    p.add_argument("--separator", default="_", help="prefix: what ends the class in a file name (default _)")
    p.add_argument("--max-stray", type=float, default=STRAY_SHARE, metavar="SHARE",
                   help="masks: values off the layout's levels on at most this share of a mask's pixels are "
                        "snapped to the nearest level, with a warning (default 0.005 = 0.5%%)")
    p.add_argument("--strict", action="store_true", help="masks: snap nothing (same as --max-stray 0)")
    p.add_argument("--n", type=int, default=200, help="synthetic: number of crops (default 200)")
    p.add_argument("--size", type=int, default=64, help="synthetic: crop side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="synthetic, restain: seed (default 0)")
    p.add_argument("--strength", type=float, default=0.3,
                   help="restain: stain scales drawn from U(1-s, 1+s), shifts from U(-0.1 s, 0.1 s), one of each "
                        "per stain channel for the whole dataset (default 0.3)")
    p.add_argument("--domain", default="a", help="synthetic: stain domain, a or b (default a)")
    return p.parse_args()


def layout_options(args: argparse.Namespace) -> dict:
    max_stray = 0.0 if args.strict else args.max_stray
    if not 0 <= max_stray <= 1:
        raise ValueError(f"--max-stray {args.max_stray}: a share between 0 and 1")
    if args.layout == "zheng2018":
        return {"subset": args.subset, "max_stray": max_stray}
    if args.layout == "folder":
        return {"classes": args.classes, "name": args.name, "max_stray": max_stray}
    if args.layout in ("imagefolder", "prefix"):
        folders = {k: v for k, v in (("images", args.images_dir), ("masks", args.masks_dir)) if v}
        separator = {"separator": args.separator} if args.layout == "prefix" else {}
        return {"classes": args.classes, "name": args.name, "max_stray": max_stray, **folders, **separator}
    return {"n": args.n, "size": args.size, "seed": args.seed, "domain": args.domain}


def write_restained(args: argparse.Namespace):
    """The --source file restained chunk by chunk: memory holds one chunk, not the dataset."""
    if not args.source:
        raise ValueError("restain: --source names the dataset file to restain")
    if not 0 < args.strength <= 1:
        raise ValueError(f"--strength {args.strength}: a stain shift's strength lies in (0, 1]")
    fingerprint = dataset_metadata(args.source)["fingerprint"]
    return write_chunks((restain(chunk, args.strength, args.seed, fingerprint) for chunk in iter_dataset(args.source)),
                        args.output)


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.layout == "restain":
            path = write_restained(args)
        else:
            path = ncawss.convert(args.layout, args.source, args.output, **layout_options(args))
    except (ncawss.DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = dataset_metadata(path)
    print(f"wrote {path}: dataset {meta['name']}, classes {meta['classes']}, fingerprint {meta['fingerprint'][:16]}")
    record = meta.get("provenance", {})
    if record.get("snapped_pixels"):
        print(f"{record['snapped_pixels']} mask pixels in {record['snapped_masks']} masks were snapped to the "
              "nearest level (recorded in the file's metadata; --strict refuses them)")
    if record.get("binarised_pixels"):
        print(f"{record['binarised_pixels']} pixels of {record['binarised_masks']} lossy (JPEG) masks were off 0 and "
              f"255 and cut at {record['mask_threshold']} (recorded in the file's metadata)")
    if record.get("restain"):
        shifted = record["restain"]
        print(f"restained {shifted['restained_from']}: stain scales {[round(v, 3) for v in shifted['stain_scale']]}, "
              f"shifts {[round(v, 4) for v in shifted['stain_shift']]} (haematoxylin, eosin, DAB)")
    if record.get("missing_masks"):
        print(f"{record['missing_masks']} images have no mask: they train, they are not scored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
