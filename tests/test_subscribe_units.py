"""Pure parts of the subscriber tools: the newer-wins rule, tail's filter, --since parsing, JSON lines."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import typer

from consumer.subscribe.commands import parse_since
from consumer.subscribe.materialize import Version, is_newer
from consumer.subscribe.reader import Record
from consumer.subscribe.tail import Filter
from schemas import EXAMPLES_DIR
from schemas.models import SourceCoordinates, Tombstone, decode

T0, T1 = "2024-05-01T12:00:00.000000Z", "2024-05-01T12:00:01.000000Z"


def _src(offset: int, partition: int = 0, topic: str = "products") -> SourceCoordinates:
    return SourceCoordinates(topic=topic, partition=partition, offset=offset)


@pytest.mark.parametrize(
    ("candidate", "current", "newer"),
    [
        (Version(T1, _src(1)), Version(T0, _src(9)), True),            # later updated_at beats a higher offset
        (Version(T0, _src(9)), Version(T1, _src(1)), False),
        (Version(T0, _src(5)), Version(T0, _src(4)), True),            # same instant, same partition: offset
        (Version(T0, _src(4)), Version(T0, _src(5)), False),
        (Version(T0, _src(5, 1)), Version(T0, _src(4, 0)), False),     # offsets of two partitions: not compared
        (Version(T0, _src(5), "b"), Version(T0, _src(5), "a"), True),  # same input re-enriched later: replay wins
        (Version(T0, _src(5), "a"), Version(T0, _src(5), "b"), False),
        (Version(T0, _src(5), "a"), Version(T0, _src(5), "a"), False),  # the same thing again
        (Version(T0, _src(5, 1), None, True), Version(T0, _src(4, 0), "a"), True),  # delete vs upsert, same instant
        (Version(T0, _src(4, 0), "a"), Version(T0, _src(5, 1), None, True), False),
        (Version(None, _src(7), None, True), Version(T1, _src(6)), True),   # undated delete: offsets decide
        (Version(None, _src(5), None, True), Version(T1, _src(6)), False),
        (Version(None, None, None, True), Version(T1, _src(6)), True),      # nothing to order by: take it
        (Version(None, _src(6), None, True), Version(T1, _src(6)), False),  # the same input record
    ],
)
def test_is_newer(candidate: Version, current: Version, newer: bool) -> None:
    assert is_newer(candidate, current) is newer


def test_parse_since() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_since("15m", now) == now - timedelta(minutes=15)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("1.5d", now) == now - timedelta(days=1.5)
    assert parse_since("2024-05-01T14:00:00+02:00") == now
    assert parse_since("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    with pytest.raises(typer.BadParameter):
        parse_since("yesterday")


def _record(payload: dict | None, key: bytes = b"SKU-10042", headers: dict | None = None) -> Record:
    value = None if payload is None else orjson.dumps(payload)
    return Record("products.enriched", 0, 1, None, key, headers or {}, value, decode(value, key=key, headers=headers))


EXAMPLE = json.loads((EXAMPLES_DIR / "attributes-enriched.v1/image-and-text.json").read_text())


def test_filter() -> None:
    enriched, tomb = _record(EXAMPLE), _record(None)
    assert isinstance(tomb.event, Tombstone)
    assert Filter()(enriched) and Filter()(tomb)
    assert Filter(products=frozenset({"SKU-10042"}))(tomb)
    assert not Filter(products=frozenset({"other"}))(enriched)
    assert Filter(where={"color": "Navy Blue"})(enriched)
    assert not Filter(where={"color": "red"})(enriched)
    assert Filter(where={"season": None})(enriched)          # "?" on the command line: unknown
    assert not Filter(where={"pattern": "striped"})(enriched)  # not predicted by this model
    assert not Filter(where={"color": "navy blue"})(tomb)     # no attributes: dropped when asked for them
    assert Filter(attributes=("color",), min_confidence=0.93)(enriched)
    assert not Filter(attributes=("color",), min_confidence=0.94)(enriched)
    assert Filter(min_confidence=0.99)(enriched)              # article_type is 0.99
    assert Filter(attributes=("season",), max_confidence=0.5)(enriched)
    assert not Filter(attributes=("color",), max_confidence=0.5)(enriched)
    junk = Record("t", 0, 2, None, b"k", {}, b"nope", None, "not JSON")
    assert Filter()(junk) and not Filter(where={"color": "red"})(junk)


def test_json_line_round_trip() -> None:
    payload = copy.deepcopy(EXAMPLE)
    payload["future_field"] = 1
    for record in (_record(payload), _record(None, headers={"enrich.source.topic": "products",
                                                             "enrich.source.partition": "1",
                                                             "enrich.source.offset": "4"}),
                   Record("t", 0, 2, 5, None, {}, b"\xff\xfe", None, "not JSON")):
        line = orjson.dumps(record.to_json())
        back = Record.from_json(line)
        assert back.event == record.event
        assert (back.partition, back.offset, back.key, back.headers) == (
            record.partition, record.offset, record.key, record.headers)
        assert back.value == record.value or orjson.loads(back.value) == orjson.loads(record.value)
    assert json.loads(orjson.dumps(_record(payload).to_json()))["value"]["future_field"] == 1
