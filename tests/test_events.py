"""consumer/stages/events.py: every input byte string gets a verdict, every output matches its schema."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.stages.events import (
    MAX_DETAIL_CHARS,
    InvalidEvent,
    OutputSchemaError,
    ProductEvent,
    SourceCoordinates,
    build_dead_letter,
    build_enriched_event,
    enriched_event_id,
    format_timestamp,
    parse_product_event,
)
from schemas import EXAMPLES_DIR, validator

MAX = 1_000_000
SOURCE = SourceCoordinates(topic="products", partition=3, offset=1842, timestamp_ms=1714564800123, key=b"SKU-10042")
UPSERT: dict[str, Any] = json.loads((EXAMPLES_DIR / "product-event.v1" / "upsert-full.json").read_text())
ENRICHED_EXAMPLE: dict[str, Any] = json.loads(
    (EXAMPLES_DIR / "attributes-enriched.v1" / "image-and-text.json").read_text()
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _reason(raw: bytes | None, max_bytes: int = MAX) -> tuple[str, str]:
    with pytest.raises(InvalidEvent) as info:
        parse_product_event(raw, max_bytes=max_bytes)
    return info.value.reason, info.value.detail


# --- parsing -------------------------------------------------------------------------------------------


def test_every_valid_product_example_parses() -> None:
    for path in sorted((EXAMPLES_DIR / "product-event.v1").glob("*.json")):
        event = parse_product_event(path.read_bytes(), max_bytes=MAX)
        assert event.op in ("upsert", "delete")


def test_every_invalid_product_example_is_a_schema_violation() -> None:
    for path in sorted((EXAMPLES_DIR / "invalid" / "product-event.v1").glob("*.json")):
        assert _reason(path.read_bytes())[0] == "schema_violation", path.name


def test_upsert_fields_and_defaults() -> None:
    event = parse_product_event(orjson.dumps(UPSERT), max_bytes=MAX)
    assert event == ProductEvent(
        event_id=UPSERT["event_id"],
        op="upsert",
        retailer="acme",
        product_id="SKU-10042",
        title=UPSERT["title"],
        description=UPSERT["description"],
        brand="Roadster",
        image_urls=tuple(UPSERT["image_urls"]),
        vendor_attributes=UPSERT["vendor_attributes"],
        updated_at="2024-05-01T12:00:00Z",
    )
    hash(event)  # frozen and hashable despite the dict field


def test_delete_and_unknown_fields() -> None:
    raw = orjson.dumps(
        {
            "event_id": "e",
            "op": "delete",
            "retailer": "r",
            "product_id": "p",
            "updated_at": "2024-05-01T12:00:00Z",
            "vendor_extra": [1, {"x": None}],
        }
    )
    event = parse_product_event(raw, max_bytes=MAX)
    assert (event.op, event.title, event.description, event.brand, event.image_urls, event.vendor_attributes) == (
        "delete",
        "",
        "",
        None,
        (),
        {},
    )
    assert not hasattr(event, "vendor_extra")


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (None, "schema_violation", "message has no value"),
        (b"", "not_json", ""),
        (b'{"title": "caf\xe9"}', "not_utf8", "byte 14"),
        (b"\xff\xfe{}", "not_utf8", "byte 0"),
        (b"SKU-1,acme,red", "not_json", ""),
        (b'{"a": NaN}', "not_json", ""),
        (b"[" * 2000 + b"]" * 2000, "not_json", ""),
        (orjson.dumps(UPSERT)[:-1] + b',"event_id": 1' + b"0" * 30 + b"}", "schema_violation", "$.event_id"),
        (b"[]", "schema_violation", "expected a JSON object, got list"),
        (b'"just a string"', "schema_violation", "got str"),
        (b"null", "schema_violation", "got NoneType"),
        (orjson.dumps({k: v for k, v in UPSERT.items() if k != "title"}), "schema_violation", "'title' is a required"),
        (orjson.dumps({k: v for k, v in UPSERT.items() if k != "updated_at"}), "schema_violation", "'updated_at'"),
        (orjson.dumps(UPSERT | {"op": "merge"}), "schema_violation", "$.op"),
        (orjson.dumps(UPSERT | {"image_urls": "https://x/1.jpg"}), "schema_violation", "$.image_urls"),
        (orjson.dumps(UPSERT | {"image_urls": ["https://x/" + "a" * 3000]}), "schema_violation", "$.image_urls[0]"),
        (
            orjson.dumps(UPSERT | {"vendor_attributes": {"fit": {"x": 1}}}),
            "schema_violation",
            "$.vendor_attributes.fit",
        ),
        (orjson.dumps(UPSERT | {"updated_at": "yesterday"}), "schema_violation", "$.updated_at"),
        (orjson.dumps(UPSERT | {"title": "t" * 2001}), "schema_violation", "$.title"),
        (orjson.dumps(UPSERT | {"brand": ["a"]}), "schema_violation", "$.brand"),
        (orjson.dumps(UPSERT | {"product_id": 42}), "schema_violation", "$.product_id"),
    ],
)
def test_bad_input_gets_a_specific_reason(raw: bytes | None, reason: str, detail: str) -> None:
    got_reason, got_detail = _reason(raw)
    assert got_reason == reason
    assert detail in got_detail


def test_oversize_is_checked_before_decoding() -> None:
    reason, detail = _reason(b"\xff" * 101, max_bytes=100)  # not UTF-8 either: size wins, nothing decoded
    assert reason == "too_large"
    assert "101 bytes" in detail and "100" in detail
    assert parse_product_event(orjson.dumps(UPSERT), max_bytes=len(orjson.dumps(UPSERT))).product_id == "SKU-10042"


def test_schema_error_detail_is_bounded() -> None:
    _, detail = _reason(orjson.dumps(UPSERT | {"description": "d" * 30_000}))
    assert detail.startswith("$.description:")
    assert len(detail) < 400


def test_invalid_event_rejects_unknown_reason() -> None:
    with pytest.raises(ValueError):
        InvalidEvent("processing_error", "x")  # type: ignore[arg-type]


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_invalid_event(raw: bytes) -> None:
    try:
        parse_product_event(raw, max_bytes=200)
    except InvalidEvent as exc:
        assert exc.reason in {"too_large", "not_utf8", "not_json", "schema_violation"}
        assert exc.detail


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_fields = st.sampled_from([*UPSERT, "op"])


@FAST
@given(st.dictionaries(_fields, _json | st.sampled_from(["upsert", "delete", ""]), max_size=12), st.booleans())
def test_arbitrary_json_objects_only_raise_invalid_event(data: dict[str, Any], base: bool) -> None:
    """Near-miss objects (real field names, random values) are what vendors actually send."""
    payload = (UPSERT | data) if base else data
    try:
        event = parse_product_event(json.dumps(payload).encode(), max_bytes=MAX)  # stdlib: big ints too
    except InvalidEvent as exc:
        assert exc.reason == "schema_violation"
    else:
        assert validator("product-event.v1").is_valid(payload)
        assert isinstance(event.image_urls, tuple)


# --- enriched events -----------------------------------------------------------------------------------


def _product(**overrides: Any) -> ProductEvent:
    return parse_product_event(orjson.dumps(UPSERT | overrides), max_bytes=MAX)


def _build(product: ProductEvent | None = None, source: SourceCoordinates = SOURCE, **overrides: Any) -> bytes:
    kwargs: dict[str, Any] = {
        "model_name": "enrich-fashion",
        "model_version": "3f2a9c1e7b6d",
        "attributes": ENRICHED_EXAMPLE["attributes"],
        "images": ENRICHED_EXAMPLE["images"],
        "modalities": ["image", "text"],
        "enriched_at": datetime(2024, 5, 1, 12, 0, 0, 412_000, tzinfo=UTC),
    } | overrides
    return build_enriched_event(product or _product(), source, **kwargs)


def test_enriched_event_validates_and_matches_the_example() -> None:
    body = orjson.loads(_build())
    assert validator("attributes-enriched.v1").is_valid(body)
    # Same input as the example: the builder writes exactly the documented payload, field for field.
    assert body == ENRICHED_EXAMPLE
    assert set(body) == set(validator("attributes-enriched.v1").schema["properties"])


def test_text_only_enrichment_with_failed_images_validates() -> None:
    example = json.loads((EXAMPLES_DIR / "attributes-enriched.v1" / "text-only-images-failed.json").read_text())
    body = orjson.loads(_build(attributes=example["attributes"], images=example["images"], modalities=["text"]))
    assert validator("attributes-enriched.v1").is_valid(body)
    assert body["modalities"] == ["text"]


def test_examples_carry_the_ids_the_builder_computes() -> None:
    for path in (EXAMPLES_DIR / "attributes-enriched.v1").glob("*.json"):
        example = json.loads(path.read_text())
        src = SourceCoordinates(**example["source"])
        assert example["event_id"] == enriched_event_id(src, example["model"]["version"]), path.name


def test_event_id_is_deterministic_and_sensitive() -> None:
    base = enriched_event_id(SOURCE, "v1")
    assert base == enriched_event_id(SourceCoordinates("products", 3, 1842, timestamp_ms=None, key=None), "v1")
    assert len(base) == 64 and int(base, 16) >= 0
    others = {
        enriched_event_id(SourceCoordinates("products", 3, 1843), "v1"),
        enriched_event_id(SourceCoordinates("products", 4, 1842), "v1"),
        enriched_event_id(SourceCoordinates("products2", 3, 1842), "v1"),
        enriched_event_id(SOURCE, "v2"),
        enriched_event_id(SourceCoordinates("products", 31, 842), "v1"),  # no separator ambiguity
    }
    assert base not in others and len(others) == 5


def test_redelivery_gives_the_same_event_id_later() -> None:
    first = orjson.loads(_build(enriched_at=datetime(2024, 5, 1, tzinfo=UTC)))
    again = orjson.loads(_build(enriched_at=datetime(2024, 5, 2, tzinfo=UTC)))
    assert first["event_id"] == again["event_id"]
    assert first["enriched_at"] != again["enriched_at"]


def test_broken_outputs_are_refused_not_published() -> None:
    bad_attr = {"color": ENRICHED_EXAMPLE["attributes"]["color"] | {"confidence": math.nan}}
    with pytest.raises(OutputSchemaError, match=r"\$\.attributes\.color\.confidence"):
        _build(attributes=bad_attr)  # orjson would have written null
    with pytest.raises(OutputSchemaError, match="status"):
        _build(images=[ENRICHED_EXAMPLE["images"][0] | {"status": "weird"}])
    with pytest.raises(OutputSchemaError, match="modalities"):
        _build(modalities=["text", "text"])
    with pytest.raises(ValueError, match="tombstone"):
        _build(
            product=parse_product_event(
                orjson.dumps(
                    {
                        "event_id": "e",
                        "op": "delete",
                        "retailer": "r",
                        "product_id": "p",
                        "updated_at": "2024-05-01T12:00:00Z",
                    }
                ),
                max_bytes=MAX,
            )
        )


def test_validation_can_be_skipped() -> None:
    assert _build(validate=False) == _build()
    assert orjson.loads(_build(modalities=["audio"], validate=False))["modalities"] == ["audio"]


def test_numpy_scalars_are_serialized() -> None:
    np = pytest.importorskip("numpy")
    attrs = {"color": ENRICHED_EXAMPLE["attributes"]["color"] | {"confidence": np.float32(0.5)}}
    assert orjson.loads(_build(attributes=attrs))["attributes"]["color"]["confidence"] == 0.5


def test_timestamps() -> None:
    assert (
        format_timestamp(datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))) == "2024-05-01T12:00:00.000Z"
    )
    assert format_timestamp().endswith("Z")
    with pytest.raises(ValueError, match="timezone-aware"):
        format_timestamp(datetime(2024, 5, 1))


# --- dead letters --------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b'{"broken', b"\x00\xff\xfe binary", b"", None])
@pytest.mark.parametrize("key", [b"SKU-1", b"\xff\x00", None])
def test_dead_letter_round_trips_original_bytes(raw: bytes | None, key: bytes | None) -> None:
    source = SourceCoordinates("products", 2, 9001, timestamp_ms=None, key=key)
    value, headers = build_dead_letter(raw, source, reason="not_json", detail="unexpected character")
    body = orjson.loads(value)
    assert validator("dead-letter.v1").is_valid(body)
    assert (None if body["original_b64"] is None else base64.b64decode(body["original_b64"], validate=True)) == raw
    assert (None if body["source"]["key_b64"] is None else base64.b64decode(body["source"]["key_b64"])) == key
    assert body["original_size"] == (None if raw is None else len(raw))
    assert body["original_truncated"] is False
    assert dict(headers) == {
        "enrich.reason": b"not_json",
        "enrich.source.topic": b"products",
        "enrich.source.partition": b"2",
        "enrich.source.offset": b"9001",
    }


@pytest.mark.parametrize("reason", ["too_large", "not_utf8", "not_json", "schema_violation", "processing_error"])
def test_dead_letter_for_every_reason_validates(reason: str) -> None:
    value, headers = build_dead_letter(b"{}", SOURCE, reason=reason, detail="why")
    assert validator("dead-letter.v1").is_valid(orjson.loads(value))
    assert ("enrich.reason", reason.encode()) in headers


def test_dead_letter_of_an_invalid_event_end_to_end() -> None:
    raw = orjson.dumps({k: v for k, v in UPSERT.items() if k != "title"})
    with pytest.raises(InvalidEvent) as info:
        parse_product_event(raw, max_bytes=MAX)
    value, _ = build_dead_letter(raw, SOURCE, reason=info.value.reason, detail=info.value.detail)
    body = orjson.loads(value)
    assert body["reason"] == "schema_violation" and "title" in body["detail"]
    assert base64.b64decode(body["original_b64"]) == raw


def test_huge_original_is_truncated_so_the_dead_letter_stays_deliverable() -> None:
    raw = b"x" * 3000
    value, _ = build_dead_letter(raw, SOURCE, reason="too_large", detail="big", max_original_bytes=1000)
    body = orjson.loads(value)
    assert validator("dead-letter.v1").is_valid(body)
    assert body["original_truncated"] is True and body["original_size"] == 3000
    assert base64.b64decode(body["original_b64"]) == raw[:1000]
    default_cap, _ = build_dead_letter(b"y" * 2_000_000, SOURCE, reason="too_large", detail="big")
    assert len(default_cap) < 1_000_000  # librdkafka's default message.max.bytes


def test_dead_letter_detail_is_bounded_and_encodable() -> None:
    value, _ = build_dead_letter(b"x", SOURCE, reason="processing_error", detail="bad \udcff surrogate " + "z" * 10_000)
    body = orjson.loads(value)
    assert len(body["detail"]) <= MAX_DETAIL_CHARS and body["detail"].endswith("[truncated]")
    assert validator("dead-letter.v1").is_valid(body)
    with pytest.raises(ValueError, match="unknown dead-letter reason"):
        build_dead_letter(b"x", SOURCE, reason="oops", detail="")


@FAST
@given(
    st.binary(max_size=200) | st.none(),
    st.binary(max_size=20) | st.none(),
    st.text(max_size=50),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**63 - 1),
)
def test_dead_letters_always_validate(raw: bytes | None, key: bytes | None, detail: str, part: int, off: int) -> None:
    source = SourceCoordinates("t", part, off, timestamp_ms=None, key=key)
    value, _ = build_dead_letter(raw, source, reason="schema_violation", detail=detail)
    body = orjson.loads(value)
    assert validator("dead-letter.v1").is_valid(body)
    assert (raw is None) == (body["original_b64"] is None)


def test_event_id_matches_the_documented_recipe() -> None:
    """docs/schemas.md tells downstream teams how to recompute ids; keep it true."""
    import hashlib

    material = json.dumps(["products", 3, 1842, "3f2a9c1e7b6d"], separators=(",", ":")).encode()
    assert material == b'["products",3,1842,"3f2a9c1e7b6d"]'
    assert enriched_event_id(SOURCE, "3f2a9c1e7b6d") == hashlib.sha256(material).hexdigest()


def test_image_statuses_match_the_fetcher() -> None:
    """The schema's status enum and the fetcher's FetchStatus are one contract written twice; keep them equal."""
    import typing

    fetch = pytest.importorskip("consumer.stages.fetch")
    schema = validator("attributes-enriched.v1").schema
    assert set(typing.get_args(fetch.FetchStatus)) == set(schema["$defs"]["image"]["properties"]["status"]["enum"])
