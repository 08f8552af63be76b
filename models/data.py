"""Catalog rows for training and evaluation, and the product-id split.

Reads Kaggle-format catalogs (``styles.csv`` + ``images/``) with :mod:`models.catalog.kaggle`'s reader.
Why a split by hashed product id: ShopRunner's per-task datasets were split independently, so one product
could sit in one task's train set and another's validation set; hashing the id makes every product land in
exactly one split, for every task and every run, without a stored list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.catalog.kaggle import read_catalog as read_kaggle


@dataclass
class Product:
    """One catalog row: id, text fields, optional photo path, raw labels keyed by attribute name."""

    id: str
    title: str
    description: str = ""
    brand: str = ""
    image: Path | None = None
    labels: dict[str, str | None] = field(default_factory=dict)


def read_catalog(path: str | Path, extra_labels: Sequence[str] = ()) -> list[Product]:
    """Read a Kaggle-format catalog: ``styles.csv`` (or its directory) with optional ``images/``.

    One reader for everything (:func:`models.catalog.kaggle.read_catalog`: dirty rows repaired or skipped
    and counted); this adapts its rows to :class:`Product`. ``extra_labels`` names label columns beyond the
    Kaggle ones, read under their own names (an attribute the Kaggle format lacks, for ``enrich add-heads``).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "styles.csv"
    return [
        Product(id=it.id, title=it.title, description=it.description, brand=it.brand, image=it.image_path,
                labels=dict(it.labels))
        for it in read_kaggle(p, extra_labels)
    ]


def sample_products(products: Sequence[Product], max_products: int | None, seed: int, index: int = 0
                    ) -> list[Product]:
    """At most ``max_products`` of a catalog (``--max-products`` quick runs): a seeded random subset in catalog
    order; ``index`` (the catalog's position on the command line) gives each catalog its own draw."""
    if not max_products or len(products) <= max_products:
        return list(products)
    rng = np.random.default_rng([seed, index])
    keep = np.sort(rng.choice(len(products), size=max_products, replace=False))
    return [products[i] for i in keep]


def split_of(product_id: str, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """``train`` / ``val`` / ``test`` for a product id: a seeded hash, stable across runs and tasks."""
    h = hashlib.sha256(f"{seed}:{product_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def split_products(
    products: Iterable[Product], seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, list[Product]]:
    """Group products by :func:`split_of`; duplicated ids always land together."""
    out: dict[str, list[Product]] = {"train": [], "val": [], "test": []}
    for pr in products:
        out[split_of(pr.id, seed, fractions)].append(pr)
    return out
