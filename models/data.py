"""Catalog rows for training and evaluation, and the product-id split.

Reads Kaggle-format catalogs (``styles.csv`` + ``images/``). When ``models.catalog.kaggle`` (owned by the
catalog engineer) provides a reader it is preferred; this module keeps a small fallback so training never
depends on import order. Why a split by hashed product id: ShopRunner's per-task datasets were split
independently, so one product could sit in one task's train set and another's validation set; hashing the
id makes every product land in exactly one split, for every task and every run, without a stored list.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from models.taxonomy import KAGGLE_COLUMNS


@dataclass
class Product:
    """One catalog row: id, text fields, optional photo path, raw labels keyed by attribute name."""

    id: str
    title: str
    description: str = ""
    brand: str = ""
    image: Path | None = None
    labels: dict[str, str | None] = field(default_factory=dict)


def _from_kaggle_module(path: Path) -> list[Product] | None:
    """Use the catalog engineer's reader when it exists and exposes a row iterator we understand."""
    try:
        from models.catalog import kaggle  # type: ignore[attr-defined]
    except ImportError:
        return None
    reader = getattr(kaggle, "read_catalog", None) or getattr(kaggle, "read_styles", None)
    if reader is None:
        return None
    try:
        items = list(reader(path))
    except Exception:  # a reader with another signature: fall back to ours
        return None
    out: list[Product] = []
    for it in items:
        get = it.get if isinstance(it, dict) else lambda k, d=None, it=it: getattr(it, k, d)
        pid = get("id") or get("product_id")
        if pid is None:
            return None
        image = get("image_path") or get("image")
        labels = get("labels")
        if not isinstance(labels, dict):
            labels = {a: get(col) if get(col) is not None else get(a) for a, col in KAGGLE_COLUMNS.items()}
        img = Path(image) if image else None
        if img is not None and not img.is_absolute():
            img = path.parent / img
        out.append(
            Product(
                id=str(pid),
                title=str(get("title") or get("productDisplayName") or ""),
                description=str(get("description") or ""),
                brand=str(get("brand") or ""),
                image=img,
                labels={k: (None if v is None else str(v)) for k, v in labels.items()},
            )
        )
    return out


def read_catalog(path: str | Path) -> list[Product]:
    """Read a Kaggle-format catalog: ``styles.csv`` (or its directory) with optional ``images/``.

    The ``image`` column names the photo relative to the CSV's directory; when it is absent, an
    ``images/<id>.jpg`` next to the CSV is used if it exists. Extra columns ``brand``, ``description`` and
    ``pattern`` (the synthetic catalog) are read when present.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "styles.csv"
    got = _from_kaggle_module(p)
    if got is not None:
        return got
    root = p.parent
    out: list[Product] = []
    with p.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        for r in reader:
            pid = (r.get("id") or "").strip()
            if not pid:
                continue
            img: Path | None = None
            if "image" in cols:
                name = (r.get("image") or "").strip()
                img = root / name if name else None
            else:
                cand = root / "images" / f"{pid}.jpg"
                img = cand if cand.exists() else None
            labels = {a: r.get(col) for a, col in KAGGLE_COLUMNS.items() if col in cols}
            out.append(
                Product(
                    id=pid,
                    title=r.get("productDisplayName") or r.get("title") or "",
                    description=r.get("description") or "",
                    brand=r.get("brand") or "",
                    image=img,
                    labels=labels,
                )
            )
    return out


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
