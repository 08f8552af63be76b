"""Write a copy of one split of a Kaggle-format catalog with its photos at a portrait 3:4 shape.

The shared catalog's photos are 224x224, squashed from the retailer's 3:4 originals; vendors (and the kept-apart
check set) send the originals. This script un-squashes the photos of one split (``--split test`` by default,
the products a bundle trained on this catalog never saw) to ``--size`` (480x640) so that
``enrich evaluate --catalog OUT/styles.csv`` shows whether a bundle holds up on the shape it will be served::

    .venv/bin/python bench/portrait_catalog.py --catalog ../shared/datasets/fashion-products/styles.csv \\
        --out /tmp/portrait-catalog
    .venv/bin/enrich evaluate --bundle BUNDLE --catalog /tmp/portrait-catalog/styles.csv --no-baseline

Products without a photo are left out (they would only repeat the text-only results). Photos are written
under ``--out``, never into the repository.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image

from models.data import split_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", required=True, type=Path, help="Kaggle-format styles.csv")
    ap.add_argument("--out", required=True, type=Path, help="directory for styles.csv + images/")
    ap.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    ap.add_argument("--seed", type=int, default=0, help="the bundle's split seed")
    ap.add_argument("--size", default="480x640", help="WIDTHxHEIGHT of the written photos")
    args = ap.parse_args()
    width, height = (int(x) for x in args.size.lower().split("x"))
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    with args.catalog.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if r.get("image") and (args.split == "all" or split_of(r["id"], args.seed) == args.split)]
    with (args.out / "styles.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in keep:
            src = args.catalog.parent / r["image"]
            if not src.is_file():
                continue
            with Image.open(src) as im:
                im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(
                    args.out / r["image"], quality=90)
            writer.writerow(r)
    print(f"{len(keep)} products of split {args.split!r} with {width}x{height} photos -> {args.out / 'styles.csv'}")


if __name__ == "__main__":
    main()
