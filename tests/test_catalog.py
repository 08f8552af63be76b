"""The synthetic catalog generator (deterministic, Kaggle-shaped, messy on purpose) and the catalog reader."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.catalog.kaggle import KAGGLE_COLUMNS, read_catalog, read_catalog_report
from models.catalog.synthetic import (
    FINE_PATTERNS,
    KAGGLE_HEADER,
    PATTERNS,
    STYLES_HEADER,
    VENDOR_COLOR_NAMES,
    generate_catalog,
    vendor_colors_in,
)

#: The real Kaggle/Myntra sample lives beside the repo (``../shared``); users' clones do not have it.
SHARED_CATALOG = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-products" / "styles.csv"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(styles: Path) -> list[dict[str, str]]:
    with styles.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------- generator
def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate_catalog(tmp_path / "a", n_products=25, seed=3, image_size=64)
    b = generate_catalog(tmp_path / "b", n_products=25, seed=3, image_size=64)
    c = generate_catalog(tmp_path / "c", n_products=25, seed=4, image_size=64)
    assert a.name == "styles.csv"
    files_a, files_b = _files(a.parent), _files(b.parent)
    assert files_a == files_b
    assert len(files_a) > 20  # styles.csv plus the photos
    assert a.read_bytes() != c.read_bytes()


def test_a_shorter_catalog_is_a_prefix_of_a_longer_one(tmp_path: Path) -> None:
    short = _rows(generate_catalog(tmp_path / "s", n_products=8, seed=5, image_size=64))
    long = _rows(generate_catalog(tmp_path / "l", n_products=16, seed=5, image_size=64))
    assert short == long[:8]
    assert (tmp_path / "s/images").iterdir()
    for name in (p.name for p in (tmp_path / "s/images").iterdir()):
        assert (tmp_path / "s/images" / name).read_bytes() == (tmp_path / "l/images" / name).read_bytes()


def test_kaggle_columns_and_value_spaces(sample_catalog: Path) -> None:
    with sample_catalog.open(encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == STYLES_HEADER
    assert STYLES_HEADER[: len(KAGGLE_HEADER)] == KAGGLE_HEADER
    rows = _rows(sample_catalog)
    kaggle_colours = {"Black", "White", "Blue", "Navy Blue", "Grey", "Red", "Green", "Pink", "Purple", "Yellow",
                      "Beige", "Brown", "Maroon", "Orange", "Olive", "Silver", "Gold"}  # fmt: skip
    assert {r["baseColour"] for r in rows} <= kaggle_colours
    assert {"Tshirts", "Shirts", "Jeans", "Dresses", "Casual Shoes", "Handbags", "Watches"} <= {
        r["articleType"] for r in rows
    }
    assert {r["gender"] for r in rows} <= {"Men", "Women", "Boys", "Girls", "Unisex"}
    assert {r["pattern"] for r in rows} == {*PATTERNS, ""}  # "" = no pattern label (watches)


def test_titles_name_the_labelled_colour_or_none(sample_catalog: Path) -> None:
    rows = _rows(sample_catalog)
    without, synonyms = 0, Counter[str]()
    for row in rows:
        named = vendor_colors_in(row["productDisplayName"])
        assert set(named) <= {row["baseColour"]}, (row["productDisplayName"], row["baseColour"])
        assert set(vendor_colors_in(row["description"])) <= {row["baseColour"]}, row["description"]
        without += not named
        lowered = row["productDisplayName"].lower()
        synonyms.update(name for name in VENDOR_COLOR_NAMES if name != VENDOR_COLOR_NAMES[name].lower()
                        and f" {name} " in f" {lowered} ")  # fmt: skip
    assert 0.08 * len(rows) < without < 0.35 * len(rows)  # some titles leave the colour to the photo
    assert sum(synonyms.values()) > 0.15 * len(rows)  # vendor names ("ruby", "midnight"), not only canonical


def test_vendor_color_table_maps_the_documented_examples() -> None:
    assert VENDOR_COLOR_NAMES["ruby"] == "Red"
    assert VENDOR_COLOR_NAMES["navy blue"] == VENDOR_COLOR_NAMES["midnight"] == "Navy Blue"
    assert VENDOR_COLOR_NAMES["cream"] in ("White", "Beige") and VENDOR_COLOR_NAMES["ivory"] in ("White", "Beige")
    assert vendor_colors_in("Acme Men NAVY BLUE Shirt") == ["Navy Blue"]  # longest name wins
    assert vendor_colors_in("Pink Tshirt") == ["Pink"] and vendor_colors_in("Inkjet Tshirt") == []


def test_text_is_messy_the_way_vendor_feeds_are(sample_catalog: Path) -> None:
    text = [r["productDisplayName"] + " " + r["description"] for r in _rows(sample_catalog)]
    assert any("Ã" in t or "â€" in t for t in text)  # mojibake (utf-8 read as cp1252)
    assert any("<b>" in t or "<p>" in t for t in text)  # HTML
    assert any("FREE SHIPPING" in t or "Click here to buy" in t for t in text)  # boilerplate


def test_photos_vary_in_shape_and_fine_patterns_need_full_resolution(sample_catalog: Path) -> None:
    rows = [r for r in _rows(sample_catalog) if r["image"]]
    sizes = {Image.open(sample_catalog.parent / r["image"]).size for r in rows}
    assert (256, 256) in sizes and (192, 256) in sizes  # square and 3:4

    def detail(image: Image.Image) -> float:
        """Mean horizontal+vertical pixel change in the 48x48 centre: what a pattern adds over a solid fill."""
        a = np.asarray(image.convert("L"), dtype=np.float32)
        h, w = a.shape
        c = a[h // 2 - 24 : h // 2 + 24, w // 2 - 24 : w // 2 + 24]
        return float(np.abs(np.diff(c, axis=1)).mean() + np.abs(np.diff(c, axis=0)).mean())

    fine = [r for r in rows if r["pattern"] in FINE_PATTERNS and r["articleType"] in ("Tshirts", "Shirts", "Tops")]
    assert fine
    for row in fine:
        photo = Image.open(sample_catalog.parent / row["image"])
        small = photo.resize((photo.width // 4, photo.height // 4), Image.Resampling.BILINEAR)
        up = small.resize(photo.size, Image.Resampling.BILINEAR)  # what survives a 4x downsample
        assert detail(photo) > 3 * detail(up), row["id"]


def test_generation_speed(tmp_path: Path) -> None:
    import time

    started = time.perf_counter()
    generate_catalog(tmp_path, n_products=50, seed=1)
    assert time.perf_counter() - started < 5.0  # ~1 s per 100 products; generous for 2 shared cores


# ------------------------------------------------------------------------------------------- reader
def test_reader_on_synthetic_catalog(tmp_catalog: Path) -> None:
    rows = {r["id"]: r for r in _rows(tmp_catalog)}
    products = read_catalog(tmp_catalog)
    assert [p.id for p in products] == list(rows)
    for product in products:
        row = rows[product.id]
        assert set(product.labels) <= set(KAGGLE_COLUMNS.values())
        assert product.labels["color"] == row["baseColour"]
        assert product.title == row["productDisplayName"].strip()
        assert product.brand == row["brand"]
        assert product.year == int(row["year"])
        if row["image"]:
            assert product.image_path == (tmp_catalog.parent / row["image"]).resolve()
            assert product.image_path.is_file()
        else:
            assert product.image_path is None
        assert all(v and v.upper() != "NA" for v in product.labels.values())


def test_reader_skips_and_repairs_malformed_rows_without_crashing(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1.jpg").write_bytes(b"jpeg")
    styles = tmp_path / "styles.csv"
    styles.write_text(
        "\ufeffid,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName,image\n"
        "1,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,"
        '"Turtle Check Men Navy Blue Shirt, ""slim""",images/1.jpg\n'
        "2,Women,Apparel,Topwear,Tops,NA,,2012,NA,Mr.Men Blue, Shirt,images/missing.jpg\n"
        "3,Men,Apparel\n"
        "1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,duplicate id,\n"
        ",Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,no id,\n"
        "\n"
        "4,Men,Apparel,Topwear,Shirts,Blue,Fall,20x1,Casual,Too, many, commas, and a bad year,\n",
        encoding="utf-8",
    )
    report = read_catalog_report(styles)
    products = {p.id: p for p in report.products}
    assert list(products) == ["1", "2"]
    assert products["1"].title == 'Turtle Check Men Navy Blue Shirt, "slim"'
    assert products["1"].image_path == (tmp_path / "images" / "1.jpg").resolve()
    assert products["2"].title == "Mr.Men Blue, Shirt"  # unquoted comma in the title: repaired
    assert products["2"].labels == {"article_type": "Tops", "master_category": "Apparel", "sub_category": "Topwear",
                                    "gender": "Women"}  # fmt: skip
    assert products["2"].image_path is None  # named but not on disk
    assert report.repaired == 1
    assert report.skipped == {"too_few_fields": 1, "duplicate_id": 1, "no_id": 1, "too_many_fields": 1}
    assert [p.id for p in read_catalog(styles)] == ["1", "2"]


def test_extra_label_columns_are_read_by_name_only_when_asked(tmp_path: Path) -> None:
    styles = tmp_path / "styles.csv"
    styles.write_text(
        "id,articleType,productDisplayName,sleeve_length,year\n"
        "1,Shirts,Linen shirt,Long Sleeve,2011\n"
        "2,Tshirts,Crew tee,NA,2012\n",
        encoding="utf-8",
    )
    assert read_catalog(styles)[0].labels == {"article_type": "Shirts"}  # Kaggle columns only by default
    products = read_catalog(styles, ["sleeve_length", "year", "neckline"])  # a column that is not there: no label
    assert products[0].labels == {"article_type": "Shirts", "sleeve_length": "Long Sleeve", "year": "2011"}
    assert products[1].labels == {"article_type": "Tshirts", "year": "2012"}  # NA is a missing label


@pytest.mark.skipif(not SHARED_CATALOG.is_file(), reason=f"real Kaggle sample not present at {SHARED_CATALOG}")
def test_reads_the_real_shared_catalog() -> None:
    report = read_catalog_report(SHARED_CATALOG)
    assert len(report.products) == 42_159
    assert sum(p.image_path is not None for p in report.products) == 9_583
    assert report.skipped_total == 0
    first = report.products[0]
    assert first.id == "15970" and first.labels["color"] == "Navy Blue" and first.labels["article_type"] == "Shirts"
