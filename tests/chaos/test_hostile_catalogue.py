"""The hostile input catalogue through the service (runs in `make test`), and a property-based fuzz of the
event parser on mutations of valid events (tests/test_events.py fuzzes random bytes and near-miss objects;
this one starts from real events and breaks them the ways transport and vendors do)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.stages.events import INVALID_EVENT_REASONS, InvalidEvent, ProductEvent, parse_product_event
from schemas import EXAMPLES_DIR, validator
from tests.chaos.common import Rig
from tests.chaos.hostile_catalogue import catalogue, run_catalogue, table


@pytest.fixture
def rig(broker, image_server, sample_catalog, tiny_bundle, tmp_path) -> Rig:
    return Rig(broker, image_server, sample_catalog, tiny_bundle, tmp_path)


def test_catalogue_is_complete() -> None:
    cases = catalogue("http://127.0.0.1:1")
    assert len(cases) >= 30
    names = " ".join(c.name.lower() for c in cases)
    for needle in ["invalid json", "wrong type", "missing field", "giant field", "giant key", "invalid utf-8",
                   "unknown op", "duplicate event id", "out-of-order", "unknown product", "404", "500",
                   "never answers", "endless body", "huge declared", "huge undeclared", "html", "svg",
                   "truncated jpeg", "decompression bomb", "large png", "metadata", "private", "loop"]:
        assert needle in names, needle


@pytest.mark.broker
def test_hostile_catalogue_through_the_service(rig: Rig) -> None:
    fig, cases, seen = run_catalogue(rig)
    print("\n" + table(cases, seen) + "\n" + fig.line())
    assert fig.verdict(zero_duplicates=True) == []


# ------------------------------------------------------------------------------------ parser fuzz
EXAMPLES = [json.loads(p.read_text()) for p in sorted((EXAMPLES_DIR / "product-event.v1").glob("*.json"))]
VALID = [e for e in EXAMPLES if validator("product-event.v1").is_valid(e)]
MAX = 1_000_000
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(raw: bytes, max_bytes: int = MAX) -> ProductEvent | None:
    """The parser's contract: a ProductEvent whose source is schema-valid, or InvalidEvent, nothing else."""
    try:
        event = parse_product_event(raw, max_bytes=max_bytes)
    except InvalidEvent as exc:
        assert exc.reason in INVALID_EVENT_REASONS and exc.detail is not None
        if exc.reason == "too_large":
            assert len(raw) > max_bytes
        return None
    assert len(raw) <= max_bytes
    payload = json.loads(raw.decode("utf-8"))
    assert validator("product-event.v1").is_valid(payload)
    assert event.product_id == payload["product_id"] and event.op == payload["op"]
    return event


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(orjson.dumps(draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        i = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            raw[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and raw:
            del raw[i:i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del raw[i:]
        elif op == "dup":
            raw[i:i] = raw[i:i + draw(st.integers(1, 32))]
    return bytes(raw)


@FUZZ
@given(_mutated())
def test_mutated_valid_events_parse_or_are_invalid(raw: bytes) -> None:
    _check(raw)


_text = st.text(st.characters(codec="utf-8"), max_size=50)
_values: Any = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), _text,
                         st.lists(_text, max_size=3), st.dictionaries(_text, _text, max_size=2))


@FUZZ
@given(st.sampled_from(VALID), st.dictionaries(st.sampled_from(["event_id", "op", "retailer", "product_id", "title",
                                                                "description", "brand", "image_urls",
                                                                "vendor_attributes", "updated_at", "extra"]),
                                               _values, max_size=4), st.integers(50, 3000))
def test_valid_events_with_hostile_field_values(base: dict[str, Any], over: dict[str, Any], limit: int) -> None:
    try:
        raw = json.dumps(base | over, allow_nan=True).encode()  # NaN / Infinity / big ints as vendors send them
    except (ValueError, OverflowError):
        return
    _check(raw, max_bytes=limit)


@FUZZ
@given(st.sampled_from(VALID), _text.filter(bool))
def test_valid_events_survive_any_unicode_in_text_fields(base: dict[str, Any], text: str) -> None:
    event = _check(orjson.dumps(base | {"title": text, "description": text, "brand": text[:200]}))
    if base.get("op") == "upsert":
        assert event is not None and event.title == text
