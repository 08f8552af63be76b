"""Would averaging each photo with its mirror image (flip test-time augmentation) help the image model?

Scores a bundle's image model on one split of the catalog it was trained on, three ways: the photo as
served, the photo mirrored, and the average of the two. Run it on the validation split (the default) so
the answer can be acted on without touching the test split. A second pass doubles the CNN's cost per
product, the serving bottleneck on CPU, so it is only worth building if the average is clearly better.

    .venv/bin/python bench/flip_tta.py --bundle .cache/real/bundle6 \
        --catalog ../shared/datasets/fashion-products/styles.csv
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from models.bundle import Bundle
from models.data import read_catalog, split_of
from models.train import load_image


def main() -> None:
    """Print image accuracy per attribute: as served, mirrored, and the average of both."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True, help="the Kaggle-format styles.csv the bundle was trained on")
    ap.add_argument("--split", default="val", choices=("train", "val", "test"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = Bundle.load(args.bundle, device="cpu")
    split = bundle.manifest.get("split", {})
    seed, fractions = int(split.get("seed", 0)), tuple(split.get("fractions", (0.8, 0.1, 0.1)))
    products, views = [], []
    for p in read_catalog(args.catalog):
        if split_of(p.id, seed, fractions) != args.split:
            continue
        im = load_image(p.image_path, bundle.image_decode_size)
        if im is not None:
            products.append(p)
            views.append(bundle.image_views(im))
    plain = bundle.predict_images(views)
    mirrored = bundle.predict_images([torch.flip(v, dims=[-1]) for v in views])
    print(f"{len(products)} products with a photo in the {args.split} split of {args.catalog}")
    print("| attribute | n | as served | mirrored | average |\n|---|---|---|---|---|")
    for a in bundle.attributes:
        att = bundle.taxonomy.attributes[a]
        y = np.array([att.encode(p.labels.get(a)) for p in products])
        m = y >= 0
        acc = {k: float((np.stack([x[a] for x in ps]).argmax(1) == y)[m].mean()) for k, ps in
               (("plain", plain), ("mirrored", mirrored))}
        avg = (np.stack([x[a] for x in plain]) + np.stack([x[a] for x in mirrored])) / 2
        acc["average"] = float((avg.argmax(1) == y)[m].mean())
        print(f"| {a} | {int(m.sum())} | {100 * acc['plain']:.2f} | {100 * acc['mirrored']:.2f} | "
              f"{100 * acc['average']:.2f} |")


if __name__ == "__main__":
    main()
