"""Product events built from a catalog, and JSON Lines round trips (no broker needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from consumer.devtools.produce import event_id_for, events_from_catalog, read_jsonl, write_jsonl
from models.catalog.kaggle import read_catalog
from schemas import validator


def test_events_match_the_input_schema_and_point_at_the_image_server(tmp_catalog: Path) -> None:
    products = read_catalog(tmp_catalog)
    events = events_from_catalog(products, "http://127.0.0.1:8000/", updated_at="2024-05-01T12:00:00Z")
    check = validator("product-event.v1")
    for product, event in zip(products, events, strict=True):
        assert list(check.iter_errors(orjson.loads(orjson.dumps(event)))) == []
        assert event["op"] == "upsert" and event["product_id"] == product.id and event["title"] == product.title
        if product.image_path is None:
            assert event["image_urls"] == []
        else:
            assert event["image_urls"] == [f"http://127.0.0.1:8000/images/{product.id}.jpg"]
        assert "color" not in event["vendor_attributes"]  # the labels are the answer key, not input
    assert any(e["image_urls"] == [] for e in events) or all(p.image_path for p in products)


def test_event_ids_are_deterministic_per_product_version(tmp_catalog: Path) -> None:
    products = read_catalog(tmp_catalog)[:5]
    moment = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    first = events_from_catalog(products, "http://h", updated_at=moment)
    again = events_from_catalog(products, "http://h", updated_at="2024-05-01T12:00:00Z")
    later = events_from_catalog(products, "http://h", updated_at="2024-05-02T12:00:00Z")
    assert [e["event_id"] for e in first] == [e["event_id"] for e in again]
    assert not {e["event_id"] for e in first} & {e["event_id"] for e in later}
    assert len({e["event_id"] for e in first}) == 5
    assert first[0]["event_id"] == event_id_for("demo-retailer", products[0].id, "2024-05-01T12:00:00Z")
    with pytest.raises(ValueError, match="timezone"):
        events_from_catalog(products, "http://h", updated_at=datetime(2024, 5, 1))


def test_jsonl_round_trip_keeps_invalid_lines_verbatim(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    assert write_jsonl(feed, [{"a": 1}, b"{not json", "[1, 2]", {"b": "ü"}]) == 4
    assert read_jsonl(feed, keep_invalid=True) == [{"a": 1}, b"{not json", [1, 2], {"b": "ü"}]
    with pytest.raises(ValueError, match=":2: not valid JSON"):
        read_jsonl(feed)
