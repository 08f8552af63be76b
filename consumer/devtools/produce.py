"""Product events from a catalog, JSON Lines files, and an idempotent producer that sends them.

Why it exists: ``enrich produce``, ``enrich demo`` and the end-to-end tests all need to put product events
on the input topic the way a real feed would (keyed by product id, so one product's updates stay ordered
in one partition). Lines that are not valid JSON are sent *as they are*: producing garbage on purpose is
how users check that the consumer dead-letters it instead of stalling.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from confluent_kafka import KafkaError, Message, Producer

from models.catalog.kaggle import CatalogProduct

__all__ = ["ProduceError", "event_id_for", "events_from_catalog", "produce_jsonl", "read_jsonl", "write_jsonl"]

JsonLine = dict[str, Any] | bytes | str


class ProduceError(RuntimeError):
    """Some messages were not delivered (the count and the first errors are in the message)."""


def _rfc3339(moment: datetime | str | None) -> str:
    if moment is None:
        moment = datetime.now(UTC)
    if isinstance(moment, str):
        return moment
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("updated_at must be timezone-aware")  # guessing a zone is how timestamps drift
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def event_id_for(retailer: str, product_id: str, updated_at: str) -> str:
    """Deterministic input event id: the same product version always gets the same id (safe to re-send)."""
    digest = hashlib.sha256(orjson.dumps([retailer, product_id, updated_at])).hexdigest()
    return f"evt-{digest[:32]}"


def events_from_catalog(
    products: Iterable[CatalogProduct],
    base_url: str,
    retailer: str = "demo-retailer",
    updated_at: datetime | str | None = None,
) -> list[dict[str, Any]]:
    """One ``op: upsert`` product event per catalog product (``product-event.v1``).

    Image URLs point at ``base_url + "/images/<file name>"`` (an :class:`~consumer.devtools.image_server.ImageServer`
    over the catalog's ``images/`` folder); a product without a photo gets ``image_urls: []``. Labels are not
    copied into ``vendor_attributes``: the events carry what a vendor feed carries, the labels stay the
    answer key. ``updated_at`` defaults to now (UTC); pass a fixed value for reproducible event ids.
    """
    stamp = _rfc3339(updated_at)
    root = base_url.rstrip("/")
    events: list[dict[str, Any]] = []
    for product in products:
        vendor_attributes: dict[str, Any] = {}
        if product.year is not None:
            vendor_attributes["year"] = product.year
        events.append(
            {
                "event_id": event_id_for(retailer, product.id, stamp),
                "op": "upsert",
                "retailer": retailer,
                "product_id": product.id,
                "title": product.title,
                "description": product.description,
                "brand": product.brand or None,
                "image_urls": [f"{root}/images/{quote(product.image_path.name)}"] if product.image_path else [],
                "vendor_attributes": vendor_attributes,
                "updated_at": stamp,
            }
        )
    return events


def _line_bytes(item: JsonLine) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    return orjson.dumps(item)


def write_jsonl(path: Path, events: Iterable[JsonLine]) -> int:
    """Write one event per line (dicts as JSON; bytes/str verbatim, so invalid lines can be written too)."""
    lines = [_line_bytes(e).rstrip(b"\r\n") for e in events]
    Path(path).write_bytes(b"".join(line + b"\n" for line in lines))
    return len(lines)


def read_jsonl(path: Path, *, keep_invalid: bool = False) -> list[Any]:
    """Parse a JSON Lines file, skipping blank lines.

    An invalid line raises ``ValueError`` naming its line number, or with ``keep_invalid`` is returned as
    its raw bytes (the same thing :func:`produce_jsonl` sends).
    """
    items: list[Any] = []
    for number, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            items.append(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            if not keep_invalid:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc})") from exc
            items.append(raw)
    return items


def _key(value: bytes, key_field: str | None) -> bytes | None:
    """The Kafka key: the event's ``key_field`` when the line is a JSON object that has one, else None."""
    if not key_field:
        return None
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    key = data.get(key_field)
    if key is None or isinstance(key, dict | list):
        return None
    return str(key).encode("utf-8")


def _messages(path_or_events: Path | str | Iterable[JsonLine]) -> Iterable[bytes]:
    if isinstance(path_or_events, Path | str):
        for raw in Path(path_or_events).read_bytes().splitlines():
            if raw.strip():
                yield raw
        return
    for item in path_or_events:
        yield _line_bytes(item)


def produce_jsonl(
    bootstrap_servers: str,
    topic: str,
    path_or_events: Path | str | Sequence[JsonLine] | Iterable[JsonLine],
    key_field: str | None = "product_id",
    extra_conf: dict[str, Any] | None = None,
    *,
    timeout_s: float = 60.0,
) -> int:
    """Send every line/event to ``topic`` with an idempotent producer; return how many were delivered.

    A path is read as JSON Lines (blank lines skipped, every other line sent byte for byte, valid JSON or
    not); an iterable may hold dicts (sent as JSON), bytes or str. Blocks until every message is
    acknowledged and raises :class:`ProduceError` if any failed or ``timeout_s`` passed first.
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "linger.ms": 5,
        # librdkafka's default is 5 minutes; a CLI user with a wrong address should hear about it sooner.
        "message.timeout.ms": int(timeout_s * 1000),
        **(extra_conf or {}),
    }
    conf["enable.idempotence"] = True  # never off: retries must not duplicate or reorder a product's events
    conf.pop("transactional.id", None)
    producer = Producer(conf)
    errors: list[str] = []
    delivered = 0

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        nonlocal delivered
        if err is not None:
            errors.append(f"{msg.topic()}: {err.str()}")
        else:
            delivered += 1

    sent = 0
    deadline = time.monotonic() + timeout_s
    for value in _messages(path_or_events):
        while True:
            try:
                producer.produce(topic, value=value, key=_key(value, key_field), on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry this message
                producer.poll(0.1)
                if time.monotonic() > deadline:
                    raise ProduceError(f"local producer queue stayed full for {timeout_s:.0f}s") from None
        sent += 1
        producer.poll(0)
    remaining = producer.flush(max(0.0, deadline - time.monotonic()))
    if remaining or errors:
        first = "; ".join(errors[:3])
        raise ProduceError(
            f"{sent - delivered} of {sent} messages to {topic!r} not delivered"
            f" ({remaining} still queued after {timeout_s:.0f}s){': ' + first if first else ''}"
        )
    return sent
