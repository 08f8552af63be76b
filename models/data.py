"""Catalog rows for training and evaluation, and the product-id split.

Reads Kaggle-format catalogs (``styles.csv`` + ``images/``) with :mod:`models.catalog.kaggle`'s reader.
Why a split by hashed product id: ShopRunner's per-task datasets were split independently, so one product
could sit in one task's train set and another's validation set; hashing the id makes every product land in
exactly one split, for every task and every run, without a stored list.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.catalog.kaggle import CatalogProduct
from models.catalog.kaggle import read_catalog as read_kaggle

#: The one catalog row type (``models.catalog.kaggle.CatalogProduct``): training, evaluation, the demo and the
#: event producer all read rows of this shape, with ``labels`` holding only real values (one set of missing
#: values: ``models.taxonomy``) and ``image_path`` the local photo or None.
Product = CatalogProduct


def read_catalog(path: str | Path, extra_labels: Sequence[str] = ()) -> list[Product]:
    """Read a Kaggle-format catalog: ``styles.csv`` (or its directory) with optional ``images/``.

    One reader for everything (:func:`models.catalog.kaggle.read_catalog`: dirty rows repaired or skipped
    and counted). ``extra_labels`` names label columns beyond the Kaggle ones, read under their own names (an
    attribute the Kaggle format lacks, for ``enrich add-heads``).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "styles.csv"
    return read_kaggle(p, extra_labels)


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


def common_years(years: Iterable[int | None], share: float = 0.5) -> frozenset[int]:
    """The most common catalogue years that together hold at least ``share`` of ``years`` (``None`` ignored).

    Used on the training photos' years: a validation product from any other year is a *rare-year* product,
    the year shift inside an in-distribution split (in the shared catalog 70% of the photos are from 2011,
    and season follows the catalogue year more than the garment, so a photo model is much less right on the
    other years than its average says). Why a covering share and not a per-year count: it is scale-free (the
    same rule for a 500-product demo and a 40,000-product catalog) and always leaves the bulk of the photos
    in the common group, so both groups are large enough to judge a fusion on.
    """
    counts = Counter(y for y in years if y is not None)
    total, kept, out = counts.total(), 0, set()
    for y, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if total and kept >= share * total:
            break
        out.add(y)
        kept += c
    return frozenset(out)


@dataclass(frozen=True)
class SplitSpec:
    """How products are assigned to train / val / test; stored in the bundle manifest (``split``).

    ``method="hash"``: the seeded product-id hash (:func:`split_of`), an in-distribution split.
    ``method="year"``: a split that looks like the future: products of catalogue years before ``val_from``
    train, ``val_from`` <= year < ``test_from`` validate (fusion, thresholds and model selection are fitted on
    later years than the models learnt from), ``test_from`` and later test. With ``test_from=None`` the
    products from ``val_from`` on are split between validation and test by the seeded hash (in the ratio of
    ``fractions[1]:fractions[2]``): the models still learn only from earlier years, but the fusion is then
    fitted on the same later years it is tested on, i.e. on data that contains the test's shift, where the
    strict chronological split asks it to anticipate a shift no validation year shows. A product without a
    year falls back to the hash split (it carries no time), so no row is lost.
    """

    method: str = "hash"
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    val_from: int = 2013
    test_from: int | None = 2016

    def of(self, product_id: str, year: int | None) -> str:
        """``train`` / ``val`` / ``test`` for one product."""
        if self.method == "year" and year is not None:
            if year < self.val_from:
                return "train"
            if self.test_from is None:
                f_val, f_test = self.fractions[1], self.fractions[2]
                later = (0.0, f_val / (f_val + f_test), f_test / (f_val + f_test))
                return split_of(product_id, self.seed, later)
            return "val" if year < self.test_from else "test"
        if self.method not in ("hash", "year"):
            raise ValueError(f"unknown split method {self.method!r} (hash | year)")
        return split_of(product_id, self.seed, self.fractions)

    def split(self, products: Iterable[Product]) -> dict[str, list[Product]]:
        """Group products by :meth:`of`."""
        out: dict[str, list[Product]] = {"train": [], "val": [], "test": []}
        for pr in products:
            out[self.of(pr.id, pr.year)].append(pr)
        return out

    def to_json(self) -> dict[str, object]:
        """Manifest form (``method`` ``sha256(seed:id)`` for the hash split, as older manifests wrote it)."""
        d: dict[str, object] = {"method": "sha256(seed:id)" if self.method == "hash" else "year",
                                "seed": self.seed, "fractions": list(self.fractions)}
        if self.method == "year":
            d.update({"val_from": self.val_from, "test_from": self.test_from})
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, object] | None) -> SplitSpec:
        """Inverse of :meth:`to_json`; a manifest without ``split`` used the hash split with seed 0."""
        d = dict(d or {})
        method = "year" if d.get("method") == "year" else "hash"
        fr = tuple(float(x) for x in d.get("fractions", (0.8, 0.1, 0.1)))  # type: ignore[attr-defined]
        test_from = d.get("test_from", 2016)
        return cls(method, int(d.get("seed", 0)), fr,  # type: ignore[arg-type]
                   int(d.get("val_from", 2013)),  # type: ignore[arg-type]
                   None if test_from is None else int(test_from))  # type: ignore[arg-type]
