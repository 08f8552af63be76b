"""Input parsing and output building: the one module that knows the bytes on enrich's topics.

Everything that crosses a topic boundary goes through here, and everything is checked against the JSON
Schema files in :mod:`schemas` rather than a second hand-written copy of the rules, so the files
downstream teams read are the rules that run.

* :func:`parse_product_event` turns a raw Kafka value into a :class:`ProductEvent` or raises
  :class:`InvalidEvent` with a dead-letter ``reason`` and a specific ``detail``. It raises nothing else for
  any input bytes, so one poisonous message can never stall a partition.
* :func:`build_enriched_event` and :func:`build_dead_letter` produce the output values. The enriched
  event is validated before it leaves (``OutputSchemaError``), because a downstream consumer would
  otherwise meet our bug as its own crash. Tombstones (product deletes) have no body: the service produces
  ``key=product_id, value=None`` itself.
* :func:`enriched_event_id` is deterministic in the source coordinates and the model version, so a
  redelivered input (at-least-once) yields the same id and downstream can deduplicate on it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson
from jsonschema import ValidationError
from jsonschema.exceptions import best_match

from schemas import validator

__all__ = [
    "DEAD_LETTER_REASONS",
    "DEAD_LETTER_SCHEMA",
    "ENRICHED_SCHEMA",
    "INVALID_EVENT_REASONS",
    "MAX_DETAIL_CHARS",
    "MAX_KEY_BYTES",
    "MAX_ORIGINAL_BYTES",
    "PRODUCT_SCHEMA",
    "InvalidEvent",
    "OutputSchemaError",
    "ProductEvent",
    "SourceCoordinates",
    "build_dead_letter",
    "build_enriched_event",
    "clip_key",
    "enriched_event_id",
    "format_timestamp",
    "original_budget",
    "parse_product_event",
    "source_headers",
    "tombstone_event_id",
    "tombstone_headers",
]

PRODUCT_SCHEMA: Final = "product-event.v1"
ENRICHED_SCHEMA: Final = "attributes-enriched.v1"
DEAD_LETTER_SCHEMA: Final = "dead-letter.v1"

InvalidReason = Literal["too_large", "not_utf8", "not_json", "schema_violation"]
#: Reasons :func:`parse_product_event` can give; the dead-letter schema adds ``processing_error``.
INVALID_EVENT_REASONS: Final = frozenset({"too_large", "not_utf8", "not_json", "schema_violation"})
DEAD_LETTER_REASONS: Final = INVALID_EVENT_REASONS | {"processing_error"}

#: Longest ``detail`` we write: schema error messages quote the offending value, which may be 20 kB.
MAX_DETAIL_CHARS: Final = 4096
#: Default cap on original bytes copied into a dead letter. Base64 grows data by 4/3, and librdkafka's
#: default ``message.max.bytes`` is 1,000,000: a 1 MB input copied whole would make the dead letter itself
#: undeliverable, which the service treats as fatal. 512 KiB leaves room for the envelope.
MAX_ORIGINAL_BYTES: Final = 512 * 1024
#: Longest original key copied into a dead letter and used as its Kafka key. A vendor bug once sent a
#: 430 KB key; repeated in the body (base64) and as the key, it made the dead letter undeliverable.
MAX_KEY_BYTES: Final = 1024
#: Room kept for the dead letter's envelope (detail, coordinates, headers, record overhead) when the
#: original is clipped to fit the producer's ``message.max.bytes``.
DEAD_LETTER_ENVELOPE_BYTES: Final = 64 * 1024


class InvalidEvent(Exception):
    """An input message that cannot be processed; it goes to the dead-letter topic, never back to Kafka.

    ``reason`` is one of :data:`INVALID_EVENT_REASONS` (a metric label and the DLQ ``reason``);
    ``detail`` says exactly what was wrong (for a schema error: JSON path and message).
    """

    def __init__(self, reason: InvalidReason, detail: str) -> None:
        if reason not in INVALID_EVENT_REASONS:
            raise ValueError(f"unknown invalid-event reason {reason!r}")
        self.reason: InvalidReason = reason
        self.detail: str = _clip(detail)
        super().__init__(f"{reason}: {self.detail}")


class OutputSchemaError(ValueError):
    """An output payload we built does not match its schema: a bug in enrich, never the input's fault."""


@dataclass(frozen=True)
class SourceCoordinates:
    """Where an input message came from; carried into every output for lineage and deduplication."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``source`` object of attributes-enriched.v1 (the key is not part of it)."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
        }


@dataclass(frozen=True)
class ProductEvent:
    """A validated product-event.v1, with optional fields filled in (a delete has an empty title).

    Unknown top-level fields of the input are dropped here: vendors add fields, and nothing downstream of
    this class may come to depend on them without a schema change.
    """

    event_id: str
    op: Literal["upsert", "delete"]
    retailer: str
    product_id: str
    title: str
    description: str
    brand: str | None
    image_urls: tuple[str, ...]
    # A dict keeps the declared API; excluded from hashing so the frozen dataclass stays hashable.
    vendor_attributes: dict[str, str | int | float | bool | None] = field(hash=False)
    updated_at: str


def _clip(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """Bound a detail string and make it encodable (an exception message may hold lone surrogates)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 15] + "... [truncated]"


def _describe(error: ValidationError) -> str:
    """``$.image_urls[3]: 'http://...' is too long``, with the quoted instance kept short."""
    message = error.message
    if len(message) > 300:
        message = message[:200] + " ... " + message[-80:]
    return f"{error.json_path}: {message}"


def parse_product_event(raw: bytes | None, *, max_bytes: int) -> ProductEvent:
    """Parse and validate one input message value against product-event.v1.

    Raises :class:`InvalidEvent` and nothing else, whatever the bytes: ``too_large`` (over
    ``max_bytes``, checked before decoding), ``not_utf8``, ``not_json`` (including JSON that orjson
    refuses: NaN, integers beyond 64 bits, nesting deeper than 1024) or ``schema_violation`` (no value,
    not an object, or any schema error; the detail names the most relevant one).
    """
    if raw is None:
        raise InvalidEvent("schema_violation", "message has no value")
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"message value is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson reports bad UTF-8 as a JSON error too; tell them apart, as the fixes differ.
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as utf8_error:
            raise InvalidEvent("not_utf8", f"invalid UTF-8 at byte {utf8_error.start}: {utf8_error.reason}") from None
        raise InvalidEvent("not_json", str(exc)) from None
    if not isinstance(data, dict):
        raise InvalidEvent("schema_violation", f"$: expected a JSON object, got {type(data).__name__}")
    error = best_match(validator(PRODUCT_SCHEMA).iter_errors(data))
    if error is not None:
        raise InvalidEvent("schema_violation", _describe(error))
    return ProductEvent(
        event_id=data["event_id"],
        op=data["op"],
        retailer=data["retailer"],
        product_id=data["product_id"],
        title=data.get("title", ""),
        description=data.get("description", ""),
        brand=data.get("brand"),
        image_urls=tuple(data.get("image_urls", ())),
        vendor_attributes=dict(data.get("vendor_attributes", {})),
        updated_at=data["updated_at"],
    )


def enriched_event_id(source: SourceCoordinates, model_version: str) -> str:
    """Hex sha256 of the JSON array ``[topic, partition, offset, model_version]`` (64 hex chars).

    The same input read again (a redelivery after a crash or a rebalance) gets the same id; a re-run with
    a new model gets a new one, because it is a new fact. JSON encoding keeps the fields unambiguous (no
    separator a topic name could contain), and is easy for another service to recompute.
    """
    material = orjson.dumps([source.topic, source.partition, source.offset, model_version])
    return hashlib.sha256(material).hexdigest()


def format_timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z`` (``2024-05-01T12:00:00.123Z``); now when omitted.

    Naive datetimes are refused: guessing their zone is how timestamps end up hours off.
    """
    moment = datetime.now(UTC) if moment is None else moment
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _validated(schema: str, payload: dict[str, Any]) -> bytes:
    """Serialize, then validate what will actually be on the wire.

    Validating the dict before serializing is not enough: orjson writes NaN and infinities as ``null``,
    which a range check on the float would not catch.
    """
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    error = best_match(validator(schema).iter_errors(orjson.loads(body)))
    if error is not None:
        raise OutputSchemaError(f"{schema}: {_describe(error)}")
    return body


def build_enriched_event(
    product: ProductEvent,
    source: SourceCoordinates,
    *,
    model_name: str,
    model_version: str,
    attributes: dict[str, dict[str, Any]],
    images: list[dict[str, Any]],
    modalities: list[str],
    enriched_at: datetime | None = None,
    validate: bool = True,
) -> bytes:
    """The attributes-enriched.v1 value for an upsert, as JSON bytes (the Kafka key is product_id).

    ``attributes`` and ``images`` must already be in schema shape (``AttributePrediction.to_json()``,
    ``FetchResult.to_json()``). The payload is validated before it is returned and
    :class:`OutputSchemaError` is raised on a mismatch (a NaN confidence, an unknown image status): the
    service dead-letters that input as ``processing_error`` instead of publishing a broken event.
    That check costs about 1 ms of CPU for 10 attributes and 4 images (jsonschema is interpreted);
    ``validate=False`` skips it where that matters more than the guarantee (benchmarks).
    """
    if product.op != "upsert":
        raise ValueError("a delete becomes a tombstone (value None), not an enriched event")
    payload = {
        "schema": "enrich.attributes-enriched.v1",
        "event_id": enriched_event_id(source, model_version),
        "source_event_id": product.event_id,
        "retailer": product.retailer,
        "product_id": product.product_id,
        "source": source.to_json(),
        "model": {"name": model_name, "version": model_version},
        "attributes": attributes,
        "images": images,
        "modalities": modalities,
        "source_updated_at": product.updated_at,
        "enriched_at": format_timestamp(enriched_at),
    }
    if not validate:
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return _validated(ENRICHED_SCHEMA, payload)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build_dead_letter(
    raw: bytes | None,
    source: SourceCoordinates,
    *,
    reason: str,
    detail: str,
    failed_at: datetime | None = None,
    max_original_bytes: int = MAX_ORIGINAL_BYTES,
    max_key_bytes: int = MAX_KEY_BYTES,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The dead-letter.v1 value and its Kafka headers for one input message.

    The original bytes are kept whole (base64) so the message can be replayed after a fix, unless they
    are over ``max_original_bytes``: then only that prefix is kept and ``original_truncated`` is set, so
    that the dead letter itself stays deliverable. Headers repeat the reason and source coordinates, for
    tools that route or count dead letters without parsing bodies. The produce key should be the original
    message key clipped the same way (:func:`clip_key`): the key, too, is copied only up to
    ``max_key_bytes`` (``source.key_truncated`` says so), so no key can make a dead letter undeliverable.
    """
    if reason not in DEAD_LETTER_REASONS:
        raise ValueError(f"unknown dead-letter reason {reason!r}")
    original = None if raw is None else bytes(raw)
    truncated = original is not None and len(original) > max_original_bytes
    key = clip_key(source.key, max_key_bytes)
    payload = {
        "schema": "enrich.dead-letter.v1",
        "reason": reason,
        "detail": _clip(detail),
        "source": {
            **source.to_json(),
            "key_b64": None if key is None else _b64(key),
            "key_size": None if source.key is None else len(source.key),
            "key_truncated": key is not None and source.key is not None and len(key) < len(source.key),
        },
        "original_b64": None if original is None else _b64(original[:max_original_bytes]),
        "original_size": None if original is None else len(original),
        "original_truncated": truncated,
        "failed_at": format_timestamp(failed_at),
    }
    # Not validated at run time (tests cover every path): this is the path of last resort, and raising
    # here would leave the offset incomplete and stall the partition.
    headers = [("enrich.reason", reason.encode()), *source_headers(source)]
    return orjson.dumps(payload), headers


def clip_key(key: bytes | None, max_key_bytes: int = MAX_KEY_BYTES) -> bytes | None:
    """The original key, cut to ``max_key_bytes``: the dead letter's Kafka key and its ``key_b64``."""
    return None if key is None else bytes(key[:max_key_bytes])


def original_budget(max_message_bytes: int) -> int:
    """How many original bytes a dead letter may copy so that it fits ``max_message_bytes``.

    Base64 grows data by 4/3 and the envelope needs :data:`DEAD_LETTER_ENVELOPE_BYTES`; never more than
    :data:`MAX_ORIGINAL_BYTES`, never less than nothing.
    """
    room = (max_message_bytes - DEAD_LETTER_ENVELOPE_BYTES - 2 * MAX_KEY_BYTES) * 3 // 4
    return max(0, min(MAX_ORIGINAL_BYTES, room))


def source_headers(source: SourceCoordinates) -> list[tuple[str, bytes]]:
    """Source coordinates as headers, on every output (tombstones included: they have no body)."""
    return [
        ("enrich.source.topic", source.topic.encode()),
        ("enrich.source.partition", str(source.partition).encode()),
        ("enrich.source.offset", str(source.offset).encode()),
    ]


def tombstone_event_id(source: SourceCoordinates) -> str:
    """A tombstone's deterministic id: :func:`enriched_event_id` with the model version ``"delete"``.

    A delete does not depend on the model, so a replay with a new bundle gives its tombstones the same id.
    """
    return enriched_event_id(source, "delete")


def tombstone_headers(product: ProductEvent, source: SourceCoordinates) -> list[tuple[str, bytes]]:
    """Headers of a tombstone: where it came from and when the product was deleted, so that a reader can
    order a delete against upserts of the same product (newer ``updated_at``, then higher offset, wins)."""
    return [
        *source_headers(source),
        ("enrich.updated_at", product.updated_at.encode()),
        ("enrich.event_id", tombstone_event_id(source).encode()),
        ("enrich.source_event_id", product.event_id.encode()),
    ]
