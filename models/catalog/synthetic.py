"""Deterministic synthetic product catalog in the Kaggle "Fashion Product Images" format.

Why it exists: the demo, the tests and users' clones need a catalog that is small, free to redistribute and
identical on every machine, yet shaped like the real one (``styles.csv`` + ``images/<id>.jpg``), so that a
single reader (:mod:`models.catalog.kaggle`) serves real and synthetic data alike. It is deliberately
*messy where real vendor feeds are messy* (vendor colour names, typos, mojibake, HTML boilerplate, titles
with no colour word) and *hard where real photos are hard* (fine patterns that only a full-resolution crop
resolves, non-square photos), so a pipeline that only works on clean data fails here first.

Determinism: every random choice comes from ``random.Random`` / ``numpy.random.default_rng`` seeded from
``(seed, product index)``; the same seed gives byte-identical ``styles.csv`` and JPEGs (for one Pillow
build), and a longer catalog starts with the products of a shorter one.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "ARTICLES",
    "COLORS",
    "FINE_PATTERNS",
    "KAGGLE_HEADER",
    "PATTERNS",
    "STYLES_HEADER",
    "VENDOR_COLOR_NAMES",
    "generate_catalog",
    "mojibake",
]

#: Kaggle's own columns, in Kaggle's order, then the extra columns this generator adds.
KAGGLE_HEADER: tuple[str, ...] = (
    "id", "gender", "masterCategory", "subCategory", "articleType", "baseColour",
    "season", "year", "usage", "productDisplayName", "image",
)  # fmt: skip
STYLES_HEADER: tuple[str, ...] = (*KAGGLE_HEADER, "pattern", "brand", "description")

#: Synthetic ids live far above Kaggle's (max ~60k) so the two can never be confused when mixed.
ID_BASE = 900_000

#: Canonical colours (Kaggle ``baseColour`` spelling) and the RGB the photos are painted with.
COLORS: dict[str, tuple[int, int, int]] = {
    "Black": (22, 22, 24),
    "White": (247, 247, 244),
    "Blue": (38, 92, 204),
    "Navy Blue": (24, 34, 82),
    "Grey": (128, 128, 134),
    "Red": (204, 30, 36),
    "Green": (36, 142, 62),
    "Pink": (242, 140, 182),
    "Purple": (112, 48, 152),
    "Yellow": (242, 210, 38),
    "Beige": (226, 206, 168),
    "Brown": (112, 70, 38),
    "Maroon": (112, 18, 36),
    "Orange": (246, 130, 28),
    "Olive": (110, 116, 44),
    "Silver": (192, 192, 202),
    "Gold": (212, 174, 56),
}

#: Vendor colour names (lower case) -> canonical Kaggle ``baseColour``. The single source of truth for the
#: generator's titles and for tests that check labels against titles. No entry is a common non-colour word
#: in our titles/descriptions (no "denim", "stone", "mint", "steel"), so a whole-word match is unambiguous;
#: multi-word names ("navy blue", "off white") must be matched longest first.
VENDOR_COLOR_NAMES: dict[str, str] = {
    "black": "Black", "jet black": "Black", "onyx": "Black", "ebony": "Black", "noir": "Black",
    "white": "White", "ivory": "White", "snow": "White", "off white": "White", "optic white": "White",
    "blue": "Blue", "royal blue": "Blue", "cobalt": "Blue", "sky blue": "Blue", "azure": "Blue",
    "navy blue": "Navy Blue", "navy": "Navy Blue", "midnight": "Navy Blue", "midnight blue": "Navy Blue",
    "ink": "Navy Blue",
    "grey": "Grey", "gray": "Grey", "charcoal": "Grey", "ash": "Grey", "slate": "Grey", "heather grey": "Grey",
    "red": "Red", "ruby": "Red", "scarlet": "Red", "crimson": "Red", "cherry": "Red",
    "green": "Green", "emerald": "Green", "forest green": "Green", "bottle green": "Green", "lime": "Green",
    "pink": "Pink", "blush": "Pink", "fuchsia": "Pink", "rose": "Pink", "bubblegum": "Pink",
    "purple": "Purple", "plum": "Purple", "violet": "Purple", "lilac": "Purple", "aubergine": "Purple",
    "yellow": "Yellow", "mustard": "Yellow", "lemon": "Yellow", "canary": "Yellow",
    "beige": "Beige", "cream": "Beige", "sand": "Beige", "oatmeal": "Beige", "ecru": "Beige",
    "brown": "Brown", "chocolate": "Brown", "tan": "Brown", "mocha": "Brown", "coffee": "Brown",
    "camel": "Brown", "cognac": "Brown",
    "maroon": "Maroon", "wine": "Maroon", "burgundy": "Maroon", "oxblood": "Maroon", "bordeaux": "Maroon",
    "orange": "Orange", "tangerine": "Orange", "rust": "Orange", "burnt orange": "Orange",
    "olive": "Olive", "army green": "Olive", "moss": "Olive",
    "silver": "Silver", "chrome": "Silver", "platinum": "Silver",
    "gold": "Gold", "golden": "Gold", "champagne gold": "Gold",
}  # fmt: skip

#: Pattern labels (the extra ``pattern`` column). The fine ones are 1-2 px wide: a photo downsampled to
#: model resolution blurs them into a flat shade, a full-resolution centre crop keeps them.
PATTERNS: tuple[str, ...] = ("Solid", "Striped", "Checked", "Polka Dot", "Pinstripe", "Micro Dot")
FINE_PATTERNS: frozenset[str] = frozenset({"Pinstripe", "Micro Dot"})

_PATTERN_WORDS: dict[str, tuple[str, ...]] = {
    "Solid": ("Solid", "Plain", "Solid"),
    "Striped": ("Striped", "Stripe", "Stripes", "Breton Stripe"),
    "Checked": ("Check", "Checked", "Checks", "Gingham"),
    "Polka Dot": ("Polka Dot", "Polka", "Polka-Dot", "Dotted"),
    "Pinstripe": ("Pinstripe", "Pin-Striped", "Pinstriped"),
    "Micro Dot": ("Micro Dot", "Micro-Dot", "Pindot"),
}


@dataclass(frozen=True)
class Article:
    """One article type: its Kaggle categories, how to draw it, and how vendors name it."""

    article_type: str
    master_category: str
    sub_category: str
    shape: str
    weight: int
    genders: tuple[str, ...]
    usages: tuple[tuple[str, int], ...]
    nouns: tuple[str, ...]
    patterns: tuple[tuple[str, int], ...]
    colors: tuple[str, ...] | None = None  # None: the common apparel colours
    portrait_share: float = 0.45  # share of photos shot 3:4 instead of square
    seasons: tuple[tuple[str, int], ...] = (("Summer", 45), ("Fall", 25), ("Winter", 18), ("Spring", 12))


_TOP_PATTERNS = (("Solid", 34), ("Striped", 15), ("Checked", 12), ("Polka Dot", 12), ("Pinstripe", 14),
                 ("Micro Dot", 13))  # fmt: skip
_PLAIN_COLORS = tuple(c for c in COLORS if c not in ("Silver", "Gold"))

ARTICLES: tuple[Article, ...] = (
    Article("Tshirts", "Apparel", "Topwear", "tshirt", 14, ("Men", "Women", "Boys", "Girls", "Unisex"),
            (("Casual", 3), ("Sports", 1)), ("Tshirt", "T-shirt", "Tee", "T Shirt", "Crew Neck Tshirt"),
            _TOP_PATTERNS),
    Article("Shirts", "Apparel", "Topwear", "shirt", 10, ("Men", "Women", "Boys"),
            (("Casual", 3), ("Formal", 2)), ("Shirt", "Casual Shirt", "Formal Shirt", "Button-Down Shirt"),
            (("Solid", 30), ("Striped", 14), ("Checked", 20), ("Polka Dot", 6), ("Pinstripe", 18),
             ("Micro Dot", 12))),
    Article("Tops", "Apparel", "Topwear", "top", 7, ("Women", "Girls"), (("Casual", 1),),
            ("Top", "Blouse", "Tank Top", "Sleeveless Top"), _TOP_PATTERNS),
    Article("Sweatshirts", "Apparel", "Topwear", "sweatshirt", 5, ("Men", "Women", "Unisex"),
            (("Casual", 3), ("Sports", 1)), ("Sweatshirt", "Crew Neck Sweatshirt", "Pullover"),
            (("Solid", 60), ("Striped", 20), ("Micro Dot", 20)),
            seasons=(("Winter", 50), ("Fall", 40), ("Spring", 10))),
    Article("Dresses", "Apparel", "Dress", "dress", 7, ("Women", "Girls"), (("Casual", 4), ("Party", 1)),
            ("Dress", "Maxi Dress", "Shift Dress", "A-line Dress", "Midi Dress"), _TOP_PATTERNS,
            portrait_share=0.6),
    Article("Jeans", "Apparel", "Bottomwear", "trousers", 6, ("Men", "Women"), (("Casual", 1),),
            ("Jeans", "Slim Fit Jeans", "Skinny Jeans", "Straight Jeans"), (("Solid", 1),),
            colors=("Blue", "Navy Blue", "Black", "Grey"), portrait_share=0.6),
    Article("Trousers", "Apparel", "Bottomwear", "trousers", 6, ("Men", "Women"), (("Formal", 1), ("Casual", 1)),
            ("Trousers", "Chinos", "Pants", "Formal Trousers"), (("Solid", 60), ("Pinstripe", 25), ("Checked", 15)),
            portrait_share=0.6),
    Article("Shorts", "Apparel", "Bottomwear", "shorts", 4, ("Men", "Women", "Boys"), (("Casual", 3), ("Sports", 1)),
            ("Shorts", "Bermuda Shorts", "Cargo Shorts"), (("Solid", 60), ("Striped", 20), ("Checked", 20)),
            seasons=(("Summer", 80), ("Spring", 20))),
    Article("Skirts", "Apparel", "Bottomwear", "skirt", 4, ("Women", "Girls"), (("Casual", 1),),
            ("Skirt", "Mini Skirt", "Pleated Skirt"), _TOP_PATTERNS),
    Article("Casual Shoes", "Footwear", "Shoes", "shoe", 7, ("Men", "Women", "Unisex"), (("Casual", 1),),
            ("Casual Shoes", "Sneakers", "Loafers"), (("Solid", 85), ("Striped", 15)), portrait_share=0.15),
    Article("Sports Shoes", "Footwear", "Shoes", "shoe", 6, ("Men", "Women"), (("Sports", 1),),
            ("Sports Shoes", "Running Shoes", "Trainers"), (("Solid", 1),), portrait_share=0.15),
    Article("Heels", "Footwear", "Shoes", "heel", 4, ("Women",), (("Casual", 3), ("Party", 1)),
            ("Heels", "Stilettos", "Pumps"), (("Solid", 85), ("Polka Dot", 15)), portrait_share=0.15),
    Article("Handbags", "Accessories", "Bags", "bag", 6, ("Women",), (("Casual", 1),),
            ("Handbag", "Tote Bag", "Shoulder Bag"), (("Solid", 55), ("Striped", 15), ("Checked", 15),
                                                      ("Polka Dot", 15))),
    Article("Backpacks", "Accessories", "Bags", "backpack", 4, ("Unisex", "Men"), (("Casual", 1),),
            ("Backpack", "Laptop Backpack", "Rucksack"), (("Solid", 80), ("Checked", 20))),
    Article("Watches", "Accessories", "Watches", "watch", 6, ("Men", "Women", "Unisex"),
            (("Casual", 2), ("Formal", 1)), ("Watch", "Analog Watch", "Wrist Watch"), (),
            colors=("Black", "Brown", "Silver", "Gold", "Blue", "Navy Blue", "White"), portrait_share=0.3),
    Article("Caps", "Accessories", "Headwear", "cap", 3, ("Unisex", "Men"), (("Casual", 2), ("Sports", 1)),
            ("Cap", "Baseball Cap"), (("Solid", 70), ("Striped", 15), ("Checked", 15)), portrait_share=0.1),
)  # fmt: skip

_COLOR_WEIGHTS: dict[str, int] = {
    "Black": 10, "White": 8, "Blue": 8, "Navy Blue": 7, "Grey": 6, "Red": 6, "Green": 5, "Pink": 5,
    "Purple": 4, "Yellow": 4, "Beige": 4, "Brown": 5, "Maroon": 4, "Orange": 4, "Olive": 4, "Silver": 5, "Gold": 4,
}  # fmt: skip

_BRANDS: dict[str, tuple[str, ...]] = {
    "Apparel": ("Roadster", "Wrangler", "Levi’s", "Mango", "Vero Moda", "Allen Solly", "Peter England",
                "Turtle", "Scullers", "Jealous 21", "Maison Café", "Señorita Moda", "United Colors of Benetton",
                "Fabindia", "Bon Marché", "Zürich Outfitters"),
    "Footwear": ("Puma", "Nike", "Adidas", "Woodland", "Catwalk", "Bata", "Señorita Moda", "Hush Puppies"),
    "Accessories": ("Baggit", "Lavie", "Hidesign", "Fastrack", "Titan", "Timex", "Maison Café", "Bon Marché"),
}  # fmt: skip

_GENDER_WORDS: dict[str, tuple[str, ...]] = {
    "Men": ("Men", "Men", "Men's", "Mens"),
    "Women": ("Women", "Women", "Women's", "Womens", "Ladies"),
    "Boys": ("Boys", "Boys", "Boy's", "Kids"),
    "Girls": ("Girls", "Girls", "Girl's", "Kids"),
    "Unisex": ("Unisex", "Unisex", "Adults-Unisex"),
}

_FABRICS = ("100% cotton", "cotton blend", "linen", "polyester", "viscose", "organic cotton", "poly-cotton")
_FITS = ("Regular fit", "Slim fit", "Relaxed fit", "True to size")
_BOILERPLATE = (
    "<b>FREE SHIPPING</b> on all orders!",
    "Click here to buy",
    "<p><i>Colour may vary slightly due to screen settings.</i></p>",
    "<a href='http://example.invalid/sale'>SHOP THE SALE &gt;&gt;</a>",
    "Best price guaranteed!!!",
    '<div class="promo">Buy 2 get 1 free</div>',
    "Easy 30 day returns &amp; exchanges.",
)
_JUNK = ("undefined", "null", "[object Object]", "Lorem ipsum dolor sit amet.", "{{ product.description }}",
         "N/A", "TBD - copy from supplier sheet", "\u00a0\u00a0")  # fmt: skip
_NON_ASCII_FLOURISH = ("– limited edition", "™", "® original", "“bestseller”", "• new season")


def mojibake(text: str) -> str:
    """UTF-8 bytes read back as cp1252, the most common encoding accident in vendor feeds ("Café" -> "CafÃ©")."""
    return text.encode("utf-8").decode("cp1252", errors="replace")


def _weighted(rng: random.Random, pairs: Sequence[tuple[str, int]]) -> str:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs], k=1)[0]


def _vendor_color_name(rng: random.Random, color: str) -> str:
    """Half the time the canonical name, otherwise a vendor synonym; in the casing vendors use."""
    names = [name for name, canonical in VENDOR_COLOR_NAMES.items() if canonical == color]
    name = color.lower() if rng.random() < 0.5 else rng.choice(names)
    style = rng.random()
    if style < 0.7:
        return name.title()
    return name.upper() if style < 0.8 else name


_COLOR_WORDS = frozenset(w for name in VENDOR_COLOR_NAMES for w in name.split())


def _typo(rng: random.Random, word: str) -> str:
    """Swap, drop or double one letter, unless that would turn the word into a colour word."""
    if len(word) < 4 or not word.isalpha() or word.lower() in _COLOR_WORDS:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    elif kind == 1:
        out = word[:i] + word[i + 1 :]
    else:
        out = word[:i] + word[i] + word[i:]
    return word if out.lower() in _COLOR_WORDS else out


@dataclass(frozen=True)
class _Product:
    id: str
    article: Article
    gender: str
    color: str
    pattern: str
    season: str
    year: int
    usage: str
    brand: str
    portrait: bool
    has_image: bool


def _draw_product(rng: random.Random, index: int) -> _Product:
    article = rng.choices(ARTICLES, weights=[a.weight for a in ARTICLES], k=1)[0]
    colors = article.colors or _PLAIN_COLORS
    color = rng.choices(colors, weights=[_COLOR_WEIGHTS[c] for c in colors], k=1)[0]
    usage = _weighted(rng, article.usages)
    return _Product(
        id=str(ID_BASE + index),
        article=article,
        gender=rng.choice(article.genders),
        color=color,
        pattern=_weighted(rng, article.patterns) if article.patterns else "",
        season=_weighted(rng, article.seasons),
        year=rng.randint(2011, 2018),
        usage="NA" if rng.random() < 0.01 else usage,  # Kaggle has a few "NA" labels: readers must drop them
        brand=rng.choice(_BRANDS[article.master_category]),
        portrait=rng.random() < article.portrait_share,
        has_image=rng.random() >= 0.04,
    )


# --------------------------------------------------------------------------------------------- text
def _title(rng: random.Random, p: _Product, color_word: str | None) -> str:
    noun = rng.choice(p.article.nouns)
    gender = rng.choice(_GENDER_WORDS[p.gender])
    pattern = ""
    if p.pattern and rng.random() < 0.7:
        pattern = rng.choice(_PATTERN_WORDS[p.pattern])
    color = color_word or ""
    templates = (
        "{brand} {gender} {color} {pattern} {noun}",
        "{brand} {gender} {color} {pattern} {noun}",
        "{brand} {noun} for {gender} - {color} {pattern}",
        "{brand} {pattern} {noun} ({color}) | {gender}",
        "NEW!! {brand} {color} {noun} {gender} {pattern}",
        "{gender} {pattern} {color} {noun} by {brand}",
    )
    title = rng.choice(templates).format(brand=p.brand, gender=gender, color=color, pattern=pattern, noun=noun)
    title = title.replace("()", "").replace("( )", "")
    words = title.split()
    if rng.random() < 0.12:  # one typo, never in the brand or the colour word
        protected = {w.lower() for w in (p.brand + " " + color).split()}
        candidates = [i for i, w in enumerate(words) if w.lower() not in protected]
        if candidates:
            i = rng.choice(candidates)
            words[i] = _typo(rng, words[i])
    title = " ".join(words)
    if rng.random() < 0.15:
        title = title.upper()
    if rng.random() < 0.06:
        title = rng.choice(("<b>SALE</b> ", "<span class='hot'>HOT</span> ", "")) + title + " <br/>"
    if rng.random() < 0.08:
        title += " " + rng.choice(_NON_ASCII_FLOURISH)
    if rng.random() < 0.06:
        title += rng.choice(("  ", " #", " SKU: ", " - ")) + f"{rng.randrange(100, 99999)}"
    if rng.random() < 0.05:
        title = title.replace(" ", "  ", 1)
    if rng.random() < 0.08:
        title = mojibake(title)
    return title


def _description(rng: random.Random, p: _Product, color_word: str | None, title: str) -> str:
    noun = rng.choice(p.article.nouns).lower()
    parts: list[str] = []
    lead = f"This {noun} from {p.brand}"
    if color_word:
        lead += f" comes in a {color_word.lower()} shade"
    if p.pattern and p.pattern != "Solid" and rng.random() < 0.6:
        lead += f" with a {rng.choice(_PATTERN_WORDS[p.pattern]).lower()} design"
    parts.append(f"<p>{lead} – perfect for {p.usage.lower() if p.usage != 'NA' else 'everyday'} wear.</p>")
    if p.article.master_category == "Apparel":
        parts.append(f"<ul><li>Fabric: {rng.choice(_FABRICS)}</li><li>{rng.choice(_FITS)}</li>"
                     f"<li>Machine wash cold</li></ul>")  # fmt: skip
    elif p.article.article_type == "Watches":
        parts.append("<ul><li>Water resistant to 30 m</li><li>Mineral glass</li><li>2 year warranty</li></ul>")
    else:
        parts.append("<ul><li>Durable build</li><li>Easy to clean</li></ul>")
    for _ in range(rng.randint(0, 2)):
        parts.append(rng.choice(_BOILERPLATE))
    if rng.random() < 0.15:
        parts.append(rng.choice(_JUNK))
    if rng.random() < 0.08:  # copy-paste accident: the title again
        parts.append(title)
    if rng.random() < 0.1:
        parts.append("\n\n")
    text = " ".join(parts) if rng.random() < 0.7 else "\n".join(parts)
    if rng.random() < 0.12:
        text = mojibake(text)
    return text


# -------------------------------------------------------------------------------------------- images
def _shade(rgb: tuple[int, int, int], factor: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float32) * factor, 0, 255)


def _contrast_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A colour that stands out on ``rgb`` without changing what colour a person calls the garment."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (250, 250, 250) if luma < 140 else (30, 30, 40)


def _pattern_mask(
    pattern: str, xx: np.ndarray, yy: np.ndarray, rng: random.Random, scale: float
) -> tuple[np.ndarray, float]:
    """Where the secondary colour goes (bool or float alpha mask) and its opacity."""
    if pattern == "Striped":
        period = max(6, round(rng.uniform(0.07, 0.11) * scale))
        width = max(2, round(period * rng.uniform(0.3, 0.4)))
        axis = yy if rng.random() < 0.6 else xx
        return ((axis + rng.randrange(period)) % period) < width, 1.0
    if pattern == "Checked":
        period = max(8, round(rng.uniform(0.08, 0.12) * scale))
        width = max(2, round(period * 0.3))
        off = rng.randrange(period)
        bands = (((xx + off) % period) < width).astype(np.float32) + (((yy + off) % period) < width)
        return bands / 2.0, 0.75
    if pattern == "Polka Dot":
        period = max(8, round(rng.uniform(0.08, 0.12) * scale))
        radius = period * rng.uniform(0.2, 0.26)
        cx = (xx % period) - period / 2
        row = yy // period
        cy = (yy % period) - period / 2
        cx = np.where(row % 2 == 0, cx, ((xx + period // 2) % period) - period / 2)
        return (cx * cx + cy * cy) <= radius * radius, 1.0
    if pattern == "Pinstripe":  # 1 px lines every 4-6 px: gone after a 2x downsample, crisp in a full-res crop
        period = rng.randint(4, 6)
        axis = xx if rng.random() < 0.8 else yy
        return ((axis + rng.randrange(period)) % period) == 0, 0.9
    if pattern == "Micro Dot":  # 1 px dots on a 4 px grid
        period = 4
        return ((xx % period) == 0) & ((yy % period) == 0), 0.95
    return np.zeros(xx.shape, dtype=bool), 0.0


def _polygon(
    points: Sequence[tuple[float, float]], box: tuple[float, float, float, float]
) -> list[tuple[float, float]]:
    x0, y0, w, h = box
    return [(x0 + px * w, y0 + py * h) for px, py in points]


_SHAPES: dict[str, tuple[tuple[float, float], ...]] = {
    "tshirt": ((0.38, 0.04), (0.5, 0.12), (0.62, 0.04), (0.85, 0.14), (1.0, 0.34), (0.86, 0.43), (0.78, 0.35),
               (0.78, 1.0), (0.22, 1.0), (0.22, 0.35), (0.14, 0.43), (0.0, 0.34), (0.15, 0.14)),
    "shirt": ((0.38, 0.04), (0.5, 0.14), (0.62, 0.04), (0.82, 0.11), (1.0, 0.86), (0.88, 0.9), (0.76, 0.4),
              (0.76, 1.0), (0.24, 1.0), (0.24, 0.4), (0.12, 0.9), (0.0, 0.86), (0.18, 0.11)),
    "sweatshirt": ((0.38, 0.05), (0.5, 0.1), (0.62, 0.05), (0.83, 0.12), (1.0, 0.9), (0.87, 0.93), (0.75, 0.42),
                   (0.77, 0.95), (0.23, 0.95), (0.25, 0.42), (0.13, 0.93), (0.0, 0.9), (0.17, 0.12)),
    "top": ((0.32, 0.0), (0.4, 0.0), (0.5, 0.12), (0.6, 0.0), (0.68, 0.0), (0.7, 0.2), (0.82, 0.36), (0.8, 1.0),
            (0.2, 1.0), (0.18, 0.36), (0.3, 0.2)),
    "dress": ((0.38, 0.0), (0.44, 0.0), (0.5, 0.08), (0.56, 0.0), (0.62, 0.0), (0.66, 0.15), (0.63, 0.36),
              (0.96, 1.0), (0.04, 1.0), (0.37, 0.36), (0.34, 0.15)),
    "trousers": ((0.24, 0.0), (0.76, 0.0), (0.82, 1.0), (0.57, 1.0), (0.5, 0.28), (0.43, 1.0), (0.18, 1.0)),
    "shorts": ((0.18, 0.0), (0.82, 0.0), (0.9, 0.62), (0.56, 0.68), (0.5, 0.3), (0.44, 0.68), (0.1, 0.62)),
    "skirt": ((0.3, 0.0), (0.7, 0.0), (0.92, 1.0), (0.08, 1.0)),
    "shoe": ((0.0, 0.55), (0.04, 0.32), (0.34, 0.28), (0.5, 0.0), (0.74, 0.0), (0.8, 0.25), (1.0, 0.6),
             (1.0, 0.82), (0.0, 0.82)),
    "heel": ((0.0, 0.2), (0.12, 0.1), (0.3, 0.2), (0.6, 0.55), (1.0, 0.58), (1.0, 0.78), (0.45, 0.74),
             (0.1, 0.5), (0.08, 1.0), (0.03, 1.0), (0.0, 0.5)),
    "bag": ((0.08, 0.35), (0.92, 0.35), (1.0, 1.0), (0.0, 1.0)),
    "backpack": ((0.12, 0.1), (0.88, 0.1), (0.95, 1.0), (0.05, 1.0)),
    "watch": ((0.38, 0.0), (0.62, 0.0), (0.62, 1.0), (0.38, 1.0)),
    "cap": ((0.1, 0.75), (0.18, 0.3), (0.5, 0.05), (0.82, 0.3), (0.9, 0.75), (1.0, 0.88), (0.0, 0.88)),
}  # fmt: skip

#: Width/height ratio of the drawing box per shape, so shoes are wide and dresses tall on any canvas.
_SHAPE_ASPECT: dict[str, float] = {
    "tshirt": 1.0, "shirt": 1.0, "sweatshirt": 1.0, "top": 0.75, "dress": 0.65, "trousers": 0.55,
    "shorts": 0.95, "skirt": 0.8, "shoe": 2.0, "heel": 1.8, "bag": 1.1, "backpack": 0.8, "watch": 0.7,
    "cap": 1.3,
}  # fmt: skip

_GRID_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    key = (width, height)
    if key not in _GRID_CACHE:
        yy, xx = np.indices((height, width), dtype=np.int32)
        _GRID_CACHE[key] = (xx, yy)
    return _GRID_CACHE[key]


def _render(p: _Product, rng: random.Random, nprng: np.random.Generator, image_size: int) -> Image.Image:
    """A product photo: light studio background, the silhouette filled with its colour and pattern."""
    height = image_size
    width = image_size * 3 // 4 if p.portrait else image_size
    xx, yy = _grid(width, height)
    shape = p.article.shape

    # Background: near-white with a slight tint and a vertical gradient, like a cheap lightbox. Everything
    # below stays float32 and broadcasts row/column vectors: this function is the generator's hot loop.
    bg_base = rng.uniform(228, 246)
    tint = np.asarray([rng.uniform(-4, 4) for _ in range(3)], dtype=np.float32)
    grad = (np.arange(height, dtype=np.float32) / height * rng.uniform(-10, 4))[:, None, None]
    background = np.clip(np.float32(bg_base) + tint[None, None, :] + grad, 0, 255)  # (H, 1, 3)

    # Drawing box: jittered size and position, aspect from the shape, always inside the canvas.
    aspect = _SHAPE_ASPECT[shape]
    fill_frac = rng.uniform(0.68, 0.86)
    box_w = min(width * fill_frac, height * fill_frac * aspect)
    box_h = box_w / aspect
    x0 = (width - box_w) / 2 + rng.uniform(-0.05, 0.05) * width
    y0 = (height - box_h) / 2 + rng.uniform(-0.05, 0.05) * height
    x0 = min(max(x0, 1.0), width - box_w - 1)
    y0 = min(max(y0, 1.0), height - box_h - 1)
    box = (x0, y0, box_w, box_h)

    # Garment fill: shade jitter, a soft left-to-right light falloff, then the pattern.
    base_rgb = COLORS[p.color]
    columns = np.arange(width, dtype=np.float32)
    light = np.float32(1.04) - np.float32(0.1) * ((columns - np.float32(x0)) / np.float32(max(box_w, 1.0))).clip(0, 1)
    fill = _shade(base_rgb, rng.uniform(0.9, 1.07))[None, None, :] * light[None, :, None]  # (1, W, 3)
    pattern_for_fill = p.pattern if shape not in ("watch",) else ""
    if pattern_for_fill and pattern_for_fill != "Solid":
        mask, alpha = _pattern_mask(pattern_for_fill, xx - int(x0), yy - int(y0), rng, min(box_w, box_h))
        secondary = np.asarray(_contrast_color(base_rgb), dtype=np.float32)
        weight = mask.astype(np.float32)[:, :, None] * np.float32(alpha)
        fill = fill + (secondary[None, None, :] - fill) * weight  # (H, W, 3)

    silhouette = Image.new("L", (width, height), 0)
    ImageDraw.Draw(silhouette).polygon(_polygon(_SHAPES[shape], box), fill=255)
    inside = (np.asarray(silhouette, dtype=np.float32) * np.float32(1 / 255))[:, :, None]
    pixels = background + (np.clip(fill, 0, 255) - background) * inside
    pixels += nprng.standard_normal(size=pixels.shape, dtype=np.float32) * np.float32(1.6)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(image)
    outline = tuple(int(c) for c in _shade(base_rgb, 0.6)) if sum(base_rgb) > 120 else (70, 70, 76)
    draw.polygon(_polygon(_SHAPES[shape], box), outline=outline, width=max(1, image_size // 160))
    _details(draw, shape, box, base_rgb, outline)
    return image


def _details(
    draw: ImageDraw.ImageDraw,
    shape: str,
    box: tuple[float, float, float, float],
    rgb: tuple[int, int, int],
    outline: tuple[int, ...],
) -> None:
    """Small cues (collar, sole, dial, strap) that tell article types apart, drawn over the fill."""
    x0, y0, w, h = box
    line = max(1, round(w / 90))
    if shape == "shirt":
        draw.polygon(_polygon(((0.38, 0.04), (0.5, 0.14), (0.44, 0.2), (0.35, 0.08)), box), outline=outline, width=line)
        draw.polygon(_polygon(((0.62, 0.04), (0.5, 0.14), (0.56, 0.2), (0.65, 0.08)), box), outline=outline, width=line)
        for k in range(5):
            cy = y0 + h * (0.25 + 0.15 * k)
            draw.ellipse((x0 + 0.49 * w, cy, x0 + 0.51 * w + 1, cy + 0.02 * w + 1), fill=outline)
    elif shape == "sweatshirt":
        draw.line(_polygon(((0.25, 0.9), (0.75, 0.9)), box), fill=outline, width=line * 2)
    elif shape in ("trousers", "shorts", "skirt"):
        top = (0.25, 0.07) if shape == "trousers" else (0.2, 0.07) if shape == "shorts" else (0.3, 0.07)
        draw.line(_polygon((top, (1 - top[0], top[1])), box), fill=outline, width=line * 2)
    elif shape in ("shoe", "heel"):
        sole = (0.0, 0.82, 1.0, 0.9) if shape == "shoe" else (0.45, 0.74, 1.0, 0.8)
        sx0, sy0 = x0 + sole[0] * w, y0 + sole[1] * h
        draw.rectangle((sx0, sy0, x0 + sole[2] * w, y0 + sole[3] * h), fill=(245, 245, 240), outline=outline)
        if shape == "shoe":
            for k in range(3):
                lx = x0 + w * (0.42 + 0.07 * k)
                draw.line((lx, y0 + h * 0.2, lx + w * 0.05, y0 + h * 0.32), fill=outline, width=line)
    elif shape == "bag":
        draw.arc((x0 + 0.25 * w, y0, x0 + 0.75 * w, y0 + 0.7 * h), 180, 360, fill=outline, width=line * 3)
    elif shape == "backpack":
        draw.rectangle((x0 + 0.25 * w, y0 + 0.55 * h, x0 + 0.75 * w, y0 + 0.9 * h), outline=outline, width=line)
        draw.arc((x0 + 0.35 * w, y0 - 0.08 * h, x0 + 0.65 * w, y0 + 0.2 * h), 180, 360, fill=outline, width=line * 2)
    elif shape == "watch":
        r = 0.32 * w
        cx, cy = x0 + 0.5 * w, y0 + 0.5 * h
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(236, 236, 232), outline=outline, width=line * 3)
        draw.line((cx, cy, cx, cy - 0.7 * r), fill=(20, 20, 20), width=line)
        draw.line((cx, cy, cx + 0.5 * r, cy), fill=(20, 20, 20), width=line)
    elif shape == "cap":
        draw.line(_polygon(((0.5, 0.05), (0.5, 0.75)), box), fill=outline, width=line)


# --------------------------------------------------------------------------------------------- main
def generate_catalog(out_dir: Path, n_products: int = 600, seed: int = 7, image_size: int = 256) -> Path:
    """Write ``out_dir/styles.csv`` and ``out_dir/images/<id>.jpg``; return the styles.csv path.

    Same ``(n_products, seed, image_size)`` -> byte-identical output; product ``i`` depends only on
    ``(seed, i)``, so the first 100 products of a 600-product catalog equal a 100-product catalog.
    ``image_size`` is the photo height; 3:4 photos are ``image_size * 3 // 4`` wide.
    """
    if n_products < 0 or image_size < 32:
        raise ValueError("n_products must be >= 0 and image_size >= 32")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(STYLES_HEADER)
    for index in range(n_products):
        rng = random.Random(seed * 1_000_003 + index)
        nprng = np.random.default_rng([seed, index])
        product = _draw_product(rng, index)
        text_rng = random.Random(rng.random())
        color_mode = text_rng.random()
        title_color = None if color_mode < 0.18 else _vendor_color_name(text_rng, product.color)
        desc_color = (
            None if color_mode < 0.1 else title_color or _vendor_color_name(text_rng, product.color)
        )  # 10%: no colour word anywhere, the photo must carry it; 8%: only the description names it
        if desc_color and text_rng.random() < 0.3:
            desc_color = _vendor_color_name(text_rng, product.color)  # a different synonym than the title's
        title = _title(text_rng, product, title_color)
        description = _description(text_rng, product, desc_color, title)
        image_column = ""
        if product.has_image:
            image_column = f"images/{product.id}.jpg"
            photo = _render(product, random.Random(rng.random()), nprng, image_size)
            photo.save(images / f"{product.id}.jpg", format="JPEG", quality=92, subsampling=0)
        writer.writerow(
            (
                product.id, product.gender, product.article.master_category, product.article.sub_category,
                product.article.article_type, product.color, product.season, product.year, product.usage,
                title, image_column, product.pattern, product.brand, description,
            )
        )  # fmt: skip
    # Written last and renamed into place: callers (the demo's cache) treat "styles.csv exists" as "complete".
    styles = out_dir / "styles.csv"
    partial = out_dir / "styles.csv.partial"
    partial.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    partial.replace(styles)
    return styles


_WORD_RE_CACHE: list[re.Pattern[str]] = []


def vendor_colors_in(text: str) -> list[str]:
    """Canonical colours named in ``text`` (whole words, longest vendor name first). Used by tests and demos."""
    if not _WORD_RE_CACHE:
        names = sorted(VENDOR_COLOR_NAMES, key=len, reverse=True)
        _WORD_RE_CACHE.append(re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b", re.IGNORECASE))
    return [VENDOR_COLOR_NAMES[m.group(1).lower()] for m in _WORD_RE_CACHE[0].finditer(text)]
