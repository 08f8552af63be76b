"""The typed models agree with the JSON Schemas: every example is valid as both, every counter-example fails both."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import EXAMPLES_DIR, validator
from schemas.models import (
    DeadLetter,
    DecodeError,
    EnrichedEvent,
    Tombstone,
    UnknownSchemaError,
    canonical_timestamp,
    decode,
    decode_payload,
)

MODELS = {"attributes-enriched.v1": EnrichedEvent, "dead-letter.v1": DeadLetter}
VALID = sorted(p for name in MODELS for p in (EXAMPLES_DIR / name).glob("*.json"))
INVALID = sorted(p for name in MODELS for p in (EXAMPLES_DIR / "invalid" / name).glob("*.json"))


def _rel(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.mark.parametrize("path", VALID, ids=_rel)
def test_every_example_is_valid_as_schema_and_as_model(path: Path) -> None:
    payload = json.loads(path.read_text())
    validator(path.parent.name).validate(payload)
    model = MODELS[path.parent.name]
    event = decode(path.read_bytes())
    assert type(event) is model
    assert model.model_validate_json(path.read_bytes()) == event
    # Round trip: what the model writes back validates against the schema and reads as the same event.
    dumped = event.model_dump(mode="json", by_alias=True)
    validator(path.parent.name).validate(dumped)
    assert model.model_validate(dumped) == event


@pytest.mark.parametrize("path", INVALID, ids=_rel)
def test_every_counter_example_fails_schema_and_model(path: Path) -> None:
    assert list(validator(path.parent.name).iter_errors(json.loads(path.read_text())))
    with pytest.raises(ValidationError):
        MODELS[path.parent.name].model_validate_json(path.read_bytes())
    with pytest.raises(DecodeError):
        decode(path.read_bytes())


def _example(name: str = "attributes-enriched.v1/image-and-text.json") -> dict:
    return json.loads((EXAMPLES_DIR / name).read_text())


def test_enriched_exposes_coordinates_updated_at_and_event_id() -> None:
    event = decode(json.dumps(_example()))
    assert isinstance(event, EnrichedEvent)
    assert (event.source.topic, event.source.partition, event.source.offset) == ("products", 3, 1842)
    assert event.updated_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert event.event_id.startswith("617ff6d2")
    assert event.value("color") == "navy blue" and event.value("season") is None and event.value("nope") is None


def test_unknown_fields_are_kept_not_refused() -> None:
    payload = _example()
    payload["new_optional_field"] = {"x": 1}
    payload["source"]["lag_ms"] = 5
    event = decode_payload(payload)
    assert event.model_extra == {"new_optional_field": {"x": 1}}
    assert event.source.model_extra == {"lag_ms": 5}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("source", "offset"), "12"),          # a string is no integer
        (("source", "partition"), 1.5),        # nor is a fraction
        (("attributes", "color", "confidence"), "0.5"),
        (("source_updated_at",), "2024-05-01T12:00:00"),   # no zone
        (("source_updated_at",), "2024-05-01 12:00:00Z"),  # space separator
        (("modalities",), ["text", "text"]),
        (("images",), [_example()["images"][0]] * 21),
    ],
)
def test_model_is_as_strict_as_the_schema(path: tuple[str, ...], value: object) -> None:
    payload = _example()
    target = payload
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert list(validator("attributes-enriched.v1").iter_errors(payload))
    with pytest.raises(DecodeError):
        decode_payload(payload)


def test_whole_floats_are_integers_as_in_json_schema() -> None:
    payload = _example()
    payload["source"]["partition"] = 1.0
    validator("attributes-enriched.v1").validate(payload)
    assert decode_payload(payload).source.partition == 1


def test_unknown_schema_and_bad_json() -> None:
    with pytest.raises(UnknownSchemaError) as info:
        decode(b'{"schema": "enrich.attributes-enriched.v2"}')
    assert info.value.schema == "enrich.attributes-enriched.v2"
    with pytest.raises(DecodeError, match="not JSON"):
        decode(b"{nope")
    with pytest.raises(DecodeError, match="JSON object"):
        decode(b"[1]")


def test_tombstone_from_headers() -> None:
    headers = [
        ("enrich.source.topic", b"products"),
        ("enrich.source.partition", b"2"),
        ("enrich.source.offset", b"77"),
        ("enrich.updated_at", b"2024-05-01T14:00:00+02:00"),
        ("enrich.event_id", b"ab" * 32),
        ("enrich.source_event_id", b"del-7"),
    ]
    event = decode(None, key=b"SKU-1", headers=headers)
    assert isinstance(event, Tombstone)
    assert event.product_id == "SKU-1"
    assert (event.source.topic, event.source.partition, event.source.offset) == ("products", 2, 77)
    assert canonical_timestamp(event.updated_at) == "2024-05-01T12:00:00.000000Z"
    assert event.event_id == "ab" * 32 and event.source_event_id == "del-7"


def test_tombstone_without_the_new_headers() -> None:
    only_source = {"enrich.source.topic": b"products", "enrich.source.partition": b"0", "enrich.source.offset": b"5"}
    event = decode(None, key="SKU-2", headers=only_source)
    assert isinstance(event, Tombstone) and event.updated_at is None and event.event_id is None
    assert event.source.offset == 5
    assert decode(None, key=b"SKU-3").source is None
    with pytest.raises(DecodeError, match="key"):
        decode(None)
    with pytest.raises(DecodeError, match="malformed"):
        decode(None, key=b"SKU-4", headers={**only_source, "enrich.source.offset": b"x"})
    with pytest.raises(DecodeError):
        decode(None, key=b"SKU-5", headers={"enrich.updated_at": b"yesterday"})


def test_dead_letter_accessors() -> None:
    event = decode((EXAMPLES_DIR / "dead-letter.v1/processing-error.json").read_bytes())
    assert isinstance(event, DeadLetter)
    assert event.product_id == "SKU-10042" and event.source.key == b"SKU-10042"
    assert json.loads(event.original)["product_id"] == "SKU-10042"
    assert event.event_id is None and event.updated_at is None


def test_canonical_timestamp_orders_as_text() -> None:
    moments = ["2024-05-01T12:00:00.5+02:00", "2024-05-01T10:00:00.25Z", "2024-05-01T10:00:00Z", "2024-04-30T23:59:60Z"]
    parsed = [decode_payload({**_example(), "source_updated_at": m}).updated_at for m in moments]
    texts = [canonical_timestamp(p) for p in parsed]
    assert sorted(texts) == [canonical_timestamp(p) for p in sorted(parsed)]
    assert texts[0] == "2024-05-01T10:00:00.500000Z"
