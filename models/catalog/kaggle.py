"""Reader for catalogs in the Kaggle "Fashion Product Images" format (``styles.csv`` + ``images/``).

Why one reader: training, evaluation, the demo and the tests all consume the same :class:`CatalogProduct`,
whether the file is the real Kaggle/Myntra export or :mod:`models.catalog.synthetic`'s output (which adds
``pattern``, ``brand`` and ``description`` columns). Real exports are dirty: titles with commas written
unquoted, short rows, ``NA`` labels, missing photos. A bad row is counted and skipped (or, for the known
unquoted-comma-in-title fault, repaired), never fatal: one broken line must not cost a 44k-row catalog.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from models.taxonomy import MISSING_VALUES as _TAXONOMY_MISSING

__all__ = [
    "KAGGLE_COLUMNS",
    "MISSING_VALUES",
    "CatalogProduct",
    "CatalogReadResult",
    "read_catalog",
    "read_catalog_report",
]

log = logging.getLogger(__name__)

#: Kaggle column -> snake_case attribute name used everywhere else (taxonomy, model heads, events).
KAGGLE_COLUMNS: dict[str, str] = {
    "baseColour": "color",
    "articleType": "article_type",
    "masterCategory": "master_category",
    "subCategory": "sub_category",
    "gender": "gender",
    "usage": "usage",
    "season": "season",
    "pattern": "pattern",
}

#: Cell values that mean "no label" (Kaggle writes "NA" for a handful of rows).
#: One set of missing-label values for the whole project (``models.taxonomy.MISSING_VALUES``): "unknown" and
#: "-" are not labels, here as in the taxonomy.
MISSING_VALUES: frozenset[str] = _TAXONOMY_MISSING

_REQUIRED = ("id", "productDisplayName")
_TITLE = "productDisplayName"

# Kaggle descriptions are short, but a synthetic or vendor one can exceed csv's default 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class CatalogProduct:
    """One catalog row: labels keyed by attribute (only real values), text fields and the local photo.

    ``labels`` holds only non-missing values, so "is this attribute labelled for this product" is
    ``attr in product.labels``; that is what lets a text-only row train the text model and be skipped by the
    image model. ``image_path`` is None when the row names no photo or the file is not on disk.
    """

    id: str
    labels: dict[str, str]
    title: str
    description: str = ""
    brand: str = ""
    image_path: Path | None = None
    year: int | None = None

    def __hash__(self) -> int:
        # ``labels`` is a dict, so the generated hash would fail; a product is identified by its id.
        return hash(self.id)


@dataclass
class CatalogReadResult:
    """Products plus what was wrong with the file, so callers (and `enrich train`) can report it."""

    products: list[CatalogProduct]
    rows: int = 0
    repaired: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _clean(value: str | None) -> str:
    return (value or "").strip()


def _is_missing(value: str) -> bool:
    return value.strip().lower() in MISSING_VALUES


def _repair(row: list[str], header: list[str]) -> list[str] | None:
    """Re-join a row split by unquoted commas inside the title, when that is the only way it can have split.

    Only when the title is the sole free-text column (the original Kaggle layout): otherwise we cannot know
    which field swallowed the commas, and guessing would silently mislabel a product.
    """
    if len(row) <= len(header) or "description" in header or _TITLE not in header:
        return None
    at = header.index(_TITLE)
    surplus = len(row) - len(header)
    fixed = [*row[:at], ",".join(row[at : at + surplus + 1]), *row[at + surplus + 1 :]]
    if "year" in header and not (_is_missing(fixed[header.index("year")]) or fixed[header.index("year")].isdigit()):
        return None
    return fixed


def _parse_year(value: str) -> int | None:
    value = value.strip()
    if not value.isdigit():
        return None
    year = int(value)
    return year if 1900 <= year <= 2100 else None


def _image_path(value: str, root: Path, exists_cache: dict[Path, set[str]]) -> Path | None:
    """Resolve the ``image`` cell relative to the csv; None if empty or the file is absent.

    Directory listings are cached so that reading 44k rows costs one listdir per folder, not 44k stats.
    """
    value = value.strip()
    if not value:
        return None
    path = (root / value).resolve()
    parent = path.parent
    if parent not in exists_cache:
        try:
            exists_cache[parent] = {p.name for p in parent.iterdir() if p.is_file()}
        except OSError:
            exists_cache[parent] = set()
    return path if path.name in exists_cache[parent] else None


def read_catalog_report(styles_csv: Path, extra_labels: Sequence[str] = ()) -> CatalogReadResult:
    """Read ``styles_csv`` and say how many rows were skipped or repaired, and why.

    ``extra_labels``: more label columns, each read under its own name (``sleeve_length`` -> attribute
    ``sleeve_length``): how a catalog carries an attribute that is not one of the Kaggle columns, e.g. for
    ``enrich add-heads``. Raises only when the file itself is unusable (missing, or no
    ``id``/``productDisplayName`` header).
    """
    styles_csv = Path(styles_csv)
    root = styles_csv.parent
    result = CatalogReadResult(products=[])
    seen: set[str] = set()
    exists_cache: dict[Path, set[str]] = {}
    # utf-8-sig drops a BOM (Excel exports); errors="replace" keeps a row with one bad byte instead of dying.
    with styles_csv.open("r", encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{styles_csv} is empty") from None
        missing = [c for c in _REQUIRED if c not in header]
        if missing:
            raise ValueError(f"{styles_csv} has no {', '.join(missing)} column (header: {header})")
        index = {name: i for i, name in enumerate(header)}
        label_columns = {**KAGGLE_COLUMNS, **{name: name for name in extra_labels}}
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error:
                result.rows += 1
                result.skipped["unparseable"] += 1
                continue
            if not row or all(not cell.strip() for cell in row):
                continue
            result.rows += 1
            if len(row) > len(header):
                fixed = _repair(row, header)
                if fixed is None:
                    result.skipped["too_many_fields"] += 1
                    continue
                row = fixed
                result.repaired += 1
            elif len(row) < len(header):
                result.skipped["too_few_fields"] += 1
                continue
            product_id = _clean(row[index["id"]])
            title = _clean(row[index[_TITLE]])
            if not product_id:
                result.skipped["no_id"] += 1
                continue
            if product_id in seen:
                result.skipped["duplicate_id"] += 1
                continue
            seen.add(product_id)
            labels = {
                attr: _clean(row[index[column]])
                for column, attr in label_columns.items()
                if column in index and not _is_missing(row[index[column]])
            }
            result.products.append(
                CatalogProduct(
                    id=product_id,
                    labels=labels,
                    title=title,
                    description=_clean(row[index["description"]]) if "description" in index else "",
                    brand=_clean(row[index["brand"]]) if "brand" in index else "",
                    image_path=_image_path(row[index["image"]], root, exists_cache) if "image" in index else None,
                    year=_parse_year(row[index["year"]]) if "year" in index else None,
                )
            )
    return result


def read_catalog(styles_csv: Path, extra_labels: Sequence[str] = ()) -> list[CatalogProduct]:
    """Products of a Kaggle-format catalog; skipped and repaired rows are logged as one warning.

    ``extra_labels``: see :func:`read_catalog_report`."""
    result = read_catalog_report(styles_csv, extra_labels)
    if result.skipped_total or result.repaired:
        log.warning(
            "catalog %s: %d rows, %d skipped %s, %d repaired",
            styles_csv,
            result.rows,
            result.skipped_total,
            dict(result.skipped),
            result.repaired,
        )
    return result.products
