"""Typed models (pydantic v2) of what is on enrich's output topics, and a decoder that dispatches on ``schema``.

For the teams that subscribe. This module needs only ``pydantic``, ``orjson`` and this package: no Kafka
client, no torch. The models mirror the JSON Schema files field for field (``tests/test_schemas_models.py``
checks every example and counter-example against both), and keep fields they do not know (v1 may gain
optional fields; ``model_extra`` holds them), so an older copy of this module keeps reading newer events.

```python
from schemas.models import decode, EnrichedEvent, Tombstone, DeadLetter

event = decode(msg.value(), key=msg.key(), headers=msg.headers())
match event:
    case EnrichedEvent():
        event.attributes["color"].value, event.source.offset, event.updated_at, event.event_id
    case Tombstone():        # value null: the product was deleted; coordinates come from headers
        event.product_id, event.source, event.updated_at, event.event_id   # the last three may be None
    case DeadLetter():
        event.reason, event.detail, event.original     # original: the input bytes (or a prefix)
```

Every model answers ``product_id``, ``source`` (the input's coordinates), ``updated_at`` (the source's own
timestamp, the one to order versions of a product by) and ``event_id`` (the deduplication key), so a reader
can order and deduplicate without knowing which kind it holds. Timestamps are timezone-aware ``datetime``
values, parsed only from RFC 3339 strings (the same check as the schemas' ``date-time`` format).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal

import orjson
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from schemas import is_rfc3339_datetime

__all__ = [
    "DEAD_LETTER_SCHEMA_ID",
    "ENRICHED_SCHEMA_ID",
    "HEADER_EVENT_ID",
    "HEADER_SOURCE_EVENT_ID",
    "HEADER_SOURCE_OFFSET",
    "HEADER_SOURCE_PARTITION",
    "HEADER_SOURCE_TOPIC",
    "HEADER_UPDATED_AT",
    "AttributePrediction",
    "DeadLetter",
    "DeadLetterSource",
    "DecodeError",
    "EnrichedEvent",
    "Event",
    "Evidence",
    "ImageResult",
    "ModelInfo",
    "Source",
    "SourceCoordinates",
    "Tombstone",
    "UnknownSchemaError",
    "canonical_timestamp",
    "decode",
    "decode_payload",
    "headers_dict",
]

ENRICHED_SCHEMA_ID: Final = "enrich.attributes-enriched.v1"
DEAD_LETTER_SCHEMA_ID: Final = "enrich.dead-letter.v1"

#: Headers on every enriched output, tombstones included (decimal strings, UTF-8).
HEADER_SOURCE_TOPIC: Final = "enrich.source.topic"
HEADER_SOURCE_PARTITION: Final = "enrich.source.partition"
HEADER_SOURCE_OFFSET: Final = "enrich.source.offset"
#: Headers on tombstones (newer producers): the delete's ``updated_at`` and its deterministic event id.
HEADER_UPDATED_AT: Final = "enrich.updated_at"
HEADER_EVENT_ID: Final = "enrich.event_id"
#: Header on tombstones: the delete event's own ``event_id`` (the input producer's id).
HEADER_SOURCE_EVENT_ID: Final = "enrich.source_event_id"

_LEAP_SECOND = re.compile(r"(T\d{2}:\d{2}:)60(\.\d+)?", re.IGNORECASE)


def _rfc3339(value: object) -> object:
    """RFC 3339 string -> aware datetime; aware datetimes pass; anything else is left for pydantic to refuse."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamps must be timezone-aware")
        return value
    if not isinstance(value, str):
        return value  # strict mode then rejects it with a type error
    if not is_rfc3339_datetime(value):
        raise ValueError(f"not an RFC 3339 date-time with a zone: {value!r}")
    # datetime has no leap second: 23:59:60 reads as 23:59:59.999999 (ordering is kept).
    text = _LEAP_SECOND.sub(r"\g<1>59.999999", value)
    return datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))


def _whole(value: object) -> object:
    """JSON Schema's ``integer`` is any number without a fractional part (``1.0`` included); so is ours."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]
Integer = Annotated[int, BeforeValidator(_whole)]
Probability = Annotated[float, Field(ge=0, le=1)]
NonEmpty = Annotated[str, Field(min_length=1)]
Short = Annotated[str, Field(min_length=1, max_length=200)]
NonNegative = Annotated[Integer, Field(ge=0)]


def _base64(value: str | None) -> str | None:
    if value is not None:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not base64: {exc}") from None
    return value


Base64 = Annotated[str | None, AfterValidator(_base64)]


def canonical_timestamp(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC: one fixed width, so text order is time order (SQL, sort keys).

    Two RFC 3339 strings for the same instant (``12:00:00Z``, ``14:00:00+02:00``) map to the same text.
    """
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Model(BaseModel):
    # strict: a JSON string is no number and a float no integer (JSON Schema's "type" says the same);
    # extra="allow": fields a later v1 adds are kept in model_extra, never an error.
    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)


# ------------------------------------------------------------------------------------------ pieces
class SourceCoordinates(_Model):
    """Where the input event was read: topic, partition, offset. Offsets order versions within one partition."""

    topic: NonEmpty
    partition: NonNegative
    offset: NonNegative


class Source(SourceCoordinates):
    """``source`` of attributes-enriched.v1: the coordinates plus the input's Kafka timestamp (ms, or None)."""

    timestamp_ms: Integer | None


class DeadLetterSource(Source):
    """``source`` of dead-letter.v1: also the input key as base64 (None when the message had none)."""

    key_b64: Base64

    @property
    def key(self) -> bytes | None:
        return None if self.key_b64 is None else base64.b64decode(self.key_b64)


class ModelInfo(_Model):
    name: NonEmpty
    #: Content hash of the model bundle; a replay with a new bundle changes it (and every event_id).
    version: NonEmpty


class Evidence(_Model):
    """What one modality alone predicted."""

    value: str | None
    confidence: Probability


class EvidenceByModality(_Model):
    """Both keys are always present; None when that modality was not used."""

    image: Evidence | None
    text: Evidence | None


class AttributePrediction(_Model):
    #: Canonical value, or None when ``confidence`` is below ``threshold`` ("unknown" beats a wrong value).
    value: str | None
    confidence: Probability
    threshold: Probability
    evidence: EvidenceByModality


ImageStatus = Literal[
    "ok", "invalid_url", "blocked_address", "too_many_redirects", "connection_error", "timeout", "http_error",
    "bad_content_type", "too_large", "unsupported_format", "decompression_bomb", "decode_error", "skipped",
]


class ImageResult(_Model):
    url: Annotated[str, Field(max_length=2048)]
    status: ImageStatus
    reason: str | None
    http_status: Annotated[Integer, Field(ge=100, le=599)] | None
    bytes: NonNegative | None
    elapsed_ms: Annotated[float, Field(ge=0)]


# ------------------------------------------------------------------------------------------ events
class EnrichedEvent(_Model):
    """attributes-enriched.v1: the predicted attributes of one product upsert (Kafka key = product_id)."""

    SCHEMA: ClassVar[str] = ENRICHED_SCHEMA_ID

    schema_: Literal["enrich.attributes-enriched.v1"] = Field(alias="schema")
    event_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32,128}$")]
    source_event_id: Short
    retailer: Short
    product_id: Annotated[str, Field(min_length=1, max_length=256)]
    source: Source
    model: ModelInfo
    attributes: dict[Annotated[str, Field(min_length=1, max_length=128)], AttributePrediction]
    images: Annotated[list[ImageResult], Field(max_length=20)]
    modalities: Annotated[list[Literal["image", "text"]], Field(max_length=2)]
    source_updated_at: Timestamp
    enriched_at: Timestamp

    @field_validator("modalities")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("modalities must be unique")
        return value

    @property
    def updated_at(self) -> datetime:
        """The source's ``updated_at``: order versions of a product by this, then by ``source`` offsets."""
        return self.source_updated_at

    def value(self, attribute: str) -> str | None:
        """The attribute's canonical value, None when unknown (below threshold) or not predicted by this model."""
        prediction = self.attributes.get(attribute)
        return None if prediction is None else prediction.value


class Tombstone(_Model):
    """A deleted product: Kafka key = product_id, value null. Everything else comes from the headers.

    ``source``, ``updated_at``, ``event_id`` and ``source_event_id`` are None when the producer did not send
    the header (tombstones written before enrich added ``enrich.updated_at``, ``enrich.event_id`` and
    ``enrich.source_event_id`` have only the source coordinates).
    """

    product_id: Annotated[str, Field(min_length=1)]
    source: SourceCoordinates | None = None
    updated_at: Timestamp | None = None
    event_id: str | None = None
    #: The delete event's ``event_id`` as the input producer set it (``enrich.source_event_id``).
    source_event_id: str | None = None

    @classmethod
    def from_kafka(cls, key: bytes | str | None, headers: Any = None) -> Tombstone:
        """Build from a null-valued record's key and headers (``msg.headers()``: list of pairs, or a dict)."""
        if key is None:
            raise DecodeError("a tombstone needs its key (the product id); this record has none")
        try:
            product_id = key.decode("utf-8") if isinstance(key, bytes) else key
        except UnicodeDecodeError as exc:
            raise DecodeError(f"tombstone key is not UTF-8: {exc}") from None
        found = headers_dict(headers)
        source = None
        if HEADER_SOURCE_TOPIC in found:
            try:
                source = SourceCoordinates(
                    topic=found[HEADER_SOURCE_TOPIC],
                    partition=int(found.get(HEADER_SOURCE_PARTITION, "")),
                    offset=int(found.get(HEADER_SOURCE_OFFSET, "")),
                )
            except (ValueError, ValidationError) as exc:
                raise DecodeError(f"tombstone source headers are malformed: {found}: {exc}") from None
        try:
            return cls(
                product_id=product_id,
                source=source,
                updated_at=found.get(HEADER_UPDATED_AT),
                event_id=found.get(HEADER_EVENT_ID),
                source_event_id=found.get(HEADER_SOURCE_EVENT_ID),
            )
        except ValidationError as exc:
            raise DecodeError(f"tombstone: {exc}") from None


DeadLetterReason = Literal["too_large", "not_utf8", "not_json", "schema_violation", "processing_error"]


class DeadLetter(_Model):
    """dead-letter.v1: an input message enrich could not process (Kafka key = the input's key)."""

    SCHEMA: ClassVar[str] = DEAD_LETTER_SCHEMA_ID

    schema_: Literal["enrich.dead-letter.v1"] = Field(alias="schema")
    reason: DeadLetterReason
    detail: Annotated[str, Field(max_length=4096)]
    source: DeadLetterSource
    original_b64: Base64
    original_size: NonNegative | None
    original_truncated: bool
    failed_at: Timestamp

    @property
    def original(self) -> bytes | None:
        """The input value (only a prefix when ``original_truncated``); None when it had no value."""
        return None if self.original_b64 is None else base64.b64decode(self.original_b64)

    @property
    def product_id(self) -> str | None:
        """The input key as text, which is the product id when the producer keyed by it (None otherwise)."""
        key = self.source.key
        if key is None:
            return None
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return None

    #: A dead letter has no event id or source timestamp of its own; None keeps the common interface.
    event_id: ClassVar[None] = None
    updated_at: ClassVar[None] = None


#: What :func:`decode` returns.
Event = EnrichedEvent | Tombstone | DeadLetter

_BY_SCHEMA: Final[dict[str, type[EnrichedEvent] | type[DeadLetter]]] = {
    ENRICHED_SCHEMA_ID: EnrichedEvent,
    DEAD_LETTER_SCHEMA_ID: DeadLetter,
}


# ------------------------------------------------------------------------------------------ decoding
class DecodeError(ValueError):
    """A record that is not a valid enrich event (bad JSON, a schema violation, a tombstone without key)."""


class UnknownSchemaError(DecodeError):
    """A payload whose ``schema`` this version does not know (a v2, or another producer's data)."""

    def __init__(self, schema: object) -> None:
        self.schema = schema
        super().__init__(f"unknown schema {schema!r}; known: {', '.join(_BY_SCHEMA)}")


def headers_dict(headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """Kafka headers (``msg.headers()``: pairs of name and bytes, or a mapping) as text; the last value wins."""
    if not headers:
        return {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in pairs:
        if value is None:
            continue
        out[name] = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
    return out


def decode_payload(payload: Mapping[str, Any]) -> EnrichedEvent | DeadLetter:
    """A parsed JSON object -> its typed model, chosen by its ``schema`` field."""
    if not isinstance(payload, Mapping):
        raise DecodeError(f"an event is a JSON object, not {type(payload).__name__}")
    model = _BY_SCHEMA.get(payload.get("schema"))  # type: ignore[arg-type]
    if model is None:
        raise UnknownSchemaError(payload.get("schema"))
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise DecodeError(f"{model.SCHEMA}: {exc}") from None


def decode(value: bytes | str | None, *, key: bytes | str | None = None, headers: Any = None) -> Event:
    """One Kafka record of the enriched or dead-letter topic -> :class:`EnrichedEvent`, :class:`Tombstone` or
    :class:`DeadLetter`.

    ``value=None`` is a tombstone (built from ``key`` and ``headers``); any other value is JSON dispatched on
    its ``schema`` field. Raises :class:`UnknownSchemaError` for a schema this version does not know and
    :class:`DecodeError` for anything invalid; nothing else.
    """
    if value is None:
        return Tombstone.from_kafka(key, headers)
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    return decode_payload(payload)
