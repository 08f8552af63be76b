"""Attributes, their canonical values, and vendor synonyms mapped onto them.

Why a taxonomy object instead of raw label strings: vendors spell the same value many ways ("Gray",
"grey ", "GREY"), catalogs carry empty / ``NA`` values that are *missing labels* (not a class), and long-tailed
attributes (142 article types, many with < 10 rows) need an explicit, recorded rule for rare values. The
taxonomy is built from the training split only and travels inside the bundle manifest, so a checkpoint can
always be read alone (one of the things ShopRunner's released code got wrong).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

OTHER = "other"

#: attribute name -> catalog column in the Kaggle "Fashion Product Images" format.
KAGGLE_COLUMNS: dict[str, str] = {
    "color": "baseColour",
    "article_type": "articleType",
    "master_category": "masterCategory",
    "sub_category": "subCategory",
    "gender": "gender",
    "usage": "usage",
    "season": "season",
    "pattern": "pattern",
}

#: what an attribute may be called: it becomes a key of ``attributes`` in every enriched event downstream
ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def check_attribute_names(names: Iterable[str]) -> None:
    """Raise ``ValueError`` naming every attribute name that is not lowercase snake_case (<= 64 characters)."""
    bad = [n for n in names if not ATTRIBUTE_NAME.fullmatch(n)]
    if bad:
        raise ValueError(f"attribute names are lowercase snake_case up to 64 characters (they become keys of every "
                         f"enriched event's attributes): {', '.join(map(repr, bad))}")


#: values that mean "no label" rather than a class.
MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "none", "null", "unknown", "-"})

#: vendor spelling -> canonical value, per attribute (after lowercasing and whitespace folding).
SYNONYMS: dict[str, dict[str, str]] = {
    "color": {
        "gray": "grey",
        "navy": "navy blue",
        "off-white": "off white",
        "offwhite": "off white",
        "multicolor": "multi",
        "multicolour": "multi",
        "multi-color": "multi",
        "multi-colour": "multi",
        "multi color": "multi",
        "golden": "gold",
        "grey melange": "grey melange",
        "gray melange": "grey melange",
        "turquoise": "turquoise blue",
    },
    "gender": {
        "male": "men",
        "man": "men",
        "mens": "men",
        "men's": "men",
        "female": "women",
        "woman": "women",
        "womens": "women",
        "women's": "women",
        "ladies": "women",
        "boy": "boys",
        "girl": "girls",
        "kids-boys": "boys",
        "kids-girls": "girls",
    },
    "season": {"autumn": "fall"},
    "usage": {"sport": "sports", "smart-casual": "smart casual"},
    "article_type": {
        "t-shirts": "tshirts",
        "t-shirt": "tshirts",
        "tshirt": "tshirts",
        "tees": "tshirts",
        "shirt": "shirts",
        "jean": "jeans",
        "watch": "watches",
    },
    "pattern": {"stripes": "striped", "checks": "checked", "check": "checked", "plain": "solid"},
}


def fold(value: str | None) -> str:
    """Lowercase, strip and collapse whitespace: the first step of every canonicalisation."""
    if value is None:
        return ""
    return re.sub(r"\s+", " ", str(value)).strip().lower()


def canonical(attribute: str, raw: str | None) -> str | None:
    """Map a vendor value to its canonical spelling; ``None`` when it is a missing label."""
    v = fold(raw)
    if v in MISSING_VALUES:
        return None
    return SYNONYMS.get(attribute, {}).get(v, v)


@dataclass
class Attribute:
    """One attribute: its ordered classes and the raw values that were merged into ``other``."""

    name: str
    values: list[str]
    merged: list[str] = field(default_factory=list)

    @property
    def index(self) -> dict[str, int]:
        """Value -> class index."""
        return {v: i for i, v in enumerate(self.values)}

    def encode(self, raw: str | None) -> int:
        """Class index of a raw label, ``-1`` when missing (masked out of the loss)."""
        v = canonical(self.name, raw)
        if v is None:
            return -1
        idx = self.index
        if v in idx:
            return idx[v]
        return idx.get(OTHER, -1)


@dataclass
class Taxonomy:
    """Ordered attributes with their label maps; serialisable into the bundle manifest."""

    attributes: dict[str, Attribute]

    @property
    def names(self) -> list[str]:
        """Attribute names in head order."""
        return list(self.attributes)

    def num_classes(self) -> dict[str, int]:
        """Attribute -> number of classes (the head sizes)."""
        return {n: len(a.values) for n, a in self.attributes.items()}

    def encode_row(self, labels: Mapping[str, str | None]) -> dict[str, int]:
        """Encode raw labels of one product; unknown / missing attributes become ``-1``."""
        return {n: a.encode(labels.get(n)) for n, a in self.attributes.items()}

    def to_json(self) -> dict[str, Any]:
        """Manifest form (plain JSON types)."""
        return {
            "attributes": {
                n: {"values": a.values, "merged_into_other": a.merged} for n, a in self.attributes.items()
            },
            "synonyms": {n: SYNONYMS.get(n, {}) for n in self.attributes},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Taxonomy:
        """Inverse of :meth:`to_json`."""
        return cls(
            {
                n: Attribute(n, list(a["values"]), list(a.get("merged_into_other", [])))
                for n, a in data["attributes"].items()
            }
        )

    @classmethod
    def build(
        cls,
        rows: Iterable[Mapping[str, str | None]],
        attributes: Iterable[str],
        min_count: int = 20,
    ) -> Taxonomy:
        """Build from training rows. Values seen fewer than ``min_count`` times merge into ``other``.

        Why merge rather than drop: a product with a rare article type still exists at inference time; an
        explicit ``other`` class lets the model say "none of the known ones" instead of forcing a wrong
        frequent class, and the merged raw values are recorded so the decision is auditable.
        An attribute with fewer than two classes left is skipped (nothing to learn).
        """
        rows = list(rows)
        out: dict[str, Attribute] = {}
        for name in attributes:
            counts = Counter(v for r in rows if (v := canonical(name, r.get(name))) is not None)
            keep = sorted(v for v, c in counts.items() if c >= min_count and v != OTHER)
            merged = sorted(v for v, c in counts.items() if c < min_count or v == OTHER)
            values = keep + ([OTHER] if merged else [])
            if len(values) >= 2:
                out[name] = Attribute(name, values, merged)
        return cls(out)

    def value_words(self, attribute: str) -> set[str]:
        """Every word of the attribute's values, merged values and vendor synonyms (``other`` excluded).

        Why: whether a title *names* the attribute decides how far its text prediction can be trusted (a
        title without a colour word leaves colour to the photo); the fusion keeps a separate calibration for
        texts that mention none of these words (``Ensemble.fuse(..., mentioned=False)``).
        """
        words: set[str] = set()
        att = self.attributes.get(attribute)
        if att is not None:
            for v in [*att.values, *att.merged]:
                words.update(v.replace("-", " ").split())
        for k, v in SYNONYMS.get(attribute, {}).items():
            words.update(k.replace("-", " ").split())
            words.update(v.split())
        words.discard(OTHER)
        return {w for w in words if len(w) > 1}
