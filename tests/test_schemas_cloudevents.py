"""CloudEvents binary-mode headers, read back with the CloudEvents Python SDK (the Kafka protocol binding)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from schemas import EXAMPLES_DIR, is_rfc3339_datetime
from schemas.cloudevents import TOMBSTONE_TYPE, dead_letter_headers, enriched_headers, tombstone_headers
from schemas.models import decode

ENRICHED = json.loads((EXAMPLES_DIR / "attributes-enriched.v1/image-and-text.json").read_text())
DEAD = json.loads((EXAMPLES_DIR / "dead-letter.v1/processing-error.json").read_text())


def _read(headers: list[tuple[str, bytes]], key: bytes | None, value: bytes | None):
    names = [name for name, _ in headers]
    assert len(names) == len(set(names))
    return from_binary_event(KafkaMessage(headers=dict(headers), key=key, value=value or b""))


def test_enriched_event_maps_onto_existing_fields() -> None:
    body = orjson.dumps(ENRICHED)
    event = _read(enriched_headers(ENRICHED), ENRICHED["product_id"].encode(), body)
    assert event.get_specversion() == "1.0"
    assert event.get_type() == ENRICHED["schema"]
    assert event.get_id() == ENRICHED["event_id"]
    assert event.get_source() == "urn:enrich:input:products"
    assert event.get_subject() == ENRICHED["product_id"]
    assert event.get_time() == datetime(2024, 5, 1, 12, 0, 0, 412000, tzinfo=UTC)
    assert event.get_datacontenttype() == "application/json"
    assert event.get_dataschema() == "urn:enrich:schema:attributes-enriched.v1"
    assert event.get_data() == ENRICHED
    # The same record is still a plain enrich event.
    assert decode(body, headers=enriched_headers(ENRICHED)).event_id == ENRICHED["event_id"]


def test_dead_letter_id_is_the_source_coordinates() -> None:
    event = _read(dead_letter_headers(DEAD), None, orjson.dumps(DEAD))
    assert event.get_type() == "enrich.dead-letter.v1"
    assert event.get_id() == "2:9001"
    assert event.get_time() == datetime(2024, 5, 1, 12, 0, 3, 1000, tzinfo=UTC)
    assert event.get_subject() is None


@pytest.mark.parametrize("event_id", [None, "ab" * 32])
def test_tombstone_headers(event_id: str | None) -> None:
    headers = tombstone_headers("SKU-1", topic="products", partition=1, offset=41,
                                updated_at="2024-05-01T12:00:00Z", event_id=event_id)
    event = _read(headers, b"SKU-1", None)
    assert event.get_type() == TOMBSTONE_TYPE
    assert event.get_id() == (event_id or "1:41")
    assert event.get_subject() == "SKU-1"
    assert "content-type" not in dict(headers)


def test_every_header_is_utf8_and_times_are_rfc3339() -> None:
    for headers in (enriched_headers(ENRICHED), dead_letter_headers(DEAD)):
        values = {name: value.decode("utf-8") for name, value in headers}
        assert is_rfc3339_datetime(values["ce_time"])
        assert {"ce_id", "ce_source", "ce_type", "ce_time", "ce_specversion"} <= set(values)
