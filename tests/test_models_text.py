"""Taxonomy canonicalisation / rare classes, and text cleaning."""

from __future__ import annotations

from models.taxonomy import OTHER, Taxonomy, canonical
from models.text_clean import clean_text, remove_words, text_input


def test_canonical_values_and_missing_labels() -> None:
    assert canonical("color", " Navy  Blue ") == "navy blue"
    assert canonical("color", "Gray") == "grey"
    assert canonical("gender", "Male") == "men"
    assert canonical("season", "NA") is None
    assert canonical("usage", "") is None


def test_rare_values_merge_into_other_and_are_recorded() -> None:
    rows = [{"color": "Black"}] * 5 + [{"color": "Blue"}] * 5 + [{"color": "Taupe"}] + [{"color": "NA"}]
    tax = Taxonomy.build(rows, ["color", "gender"], min_count=3)
    att = tax.attributes["color"]
    assert att.values == ["black", "blue", OTHER]
    assert att.merged == ["taupe"]
    assert att.encode("Taupe") == 2 and att.encode("Lime Green") == 2 and att.encode("NA") == -1
    assert "gender" not in tax.attributes  # no labels at all: no head
    assert Taxonomy.from_json(tax.to_json()).attributes["color"].values == att.values


def test_clean_text_repairs_mojibake_and_strips_html_and_boilerplate() -> None:
    raw = "<p>Caf\u00c3\u00a9 shirt \u00e2\u0080\u0093 blue</p><b>FREE SHIPPING</b> on all orders! <a href='x'>x</a>"
    out = clean_text(raw)
    assert "Café" in out and "<" not in out and "shipping" not in out.lower()
    assert text_input("Title", "", None) == "Title"
    assert text_input("T", "desc", "Brand") == "T . Brand . desc"


def test_remove_words() -> None:
    assert remove_words("Men Navy Blue Shirt", {"navy", "blue"}) == "Men Shirt"
