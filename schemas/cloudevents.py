"""CloudEvents 1.0 binary-mode Kafka headers for enrich's outputs, mapped onto fields that already exist.

Optional and off by default (``ENRICH_CLOUDEVENTS=true`` on the service turns them on): readers that use a
CloudEvents SDK or router get the attributes without parsing the body, everyone else ignores the headers.
The body never changes, so the same record is a plain enrich event and a binary-mode CloudEvent at once
(Kafka protocol binding: attributes in ``ce_`` headers, ``datacontenttype`` in ``content-type``).

Attribute by attribute (enriched event / tombstone, whose value is null / dead letter):

* ``ce_specversion``: ``1.0`` for all three.
* ``ce_type``: the ``schema`` field (``enrich.attributes-enriched.v1``, ``enrich.dead-letter.v1``); a tombstone
  has no body and gets ``enrich.product-deleted.v1``.
* ``ce_source``: ``urn:enrich:input:<input topic>`` for all three (the input topic the fact came from).
* ``ce_id``: ``event_id`` / the ``enrich.event_id`` header, else ``<partition>:<offset>`` of the delete /
  ``<source.partition>:<source.offset>``.
* ``ce_time``: ``enriched_at`` / the delete's ``updated_at`` / ``failed_at``.
* ``ce_subject``: ``product_id`` / the key (the product id) / absent (a dead letter's key may be anything).
* ``ce_dataschema``: the schema's ``$id`` / absent / the schema's ``$id``.
* ``content-type``: ``application/json`` / absent (no data) / ``application/json``.

``ce_source`` + ``ce_id`` is unique per fact and stable across redeliveries, as CloudEvents asks: the
enriched ``event_id`` is deterministic in the source coordinates and the model version, and a dead letter or
tombstone is identified by the input's coordinates within that source (one input, one outcome).
These functions are pure (no clock, no I/O) and validated in tests with the CloudEvents Python SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "SPECVERSION",
    "TOMBSTONE_TYPE",
    "dead_letter_headers",
    "enriched_headers",
    "source_uri",
    "tombstone_headers",
]

SPECVERSION: Final = "1.0"
#: A tombstone has no body and so no ``schema`` field; this is its CloudEvents type.
TOMBSTONE_TYPE: Final = "enrich.product-deleted.v1"
_JSON: Final = "application/json"
_DATASCHEMA: Final = {
    "enrich.attributes-enriched.v1": "urn:enrich:schema:attributes-enriched.v1",
    "enrich.dead-letter.v1": "urn:enrich:schema:dead-letter.v1",
}

Headers = list[tuple[str, bytes]]


def source_uri(input_topic: str) -> str:
    """``ce_source`` of every output about an input read from ``input_topic`` (a URI, as the spec requires)."""
    return f"urn:enrich:input:{input_topic}"


def _headers(attributes: Mapping[str, str | None]) -> Headers:
    return [(name, value.encode("utf-8")) for name, value in attributes.items() if value is not None]


def enriched_headers(payload: Mapping[str, Any]) -> Headers:
    """Headers for one attributes-enriched.v1 payload (the dict that was serialized as the record value)."""
    return _headers({
        "ce_specversion": SPECVERSION,
        "ce_type": payload["schema"],
        "ce_source": source_uri(payload["source"]["topic"]),
        "ce_id": payload["event_id"],
        "ce_time": payload["enriched_at"],
        "ce_subject": payload["product_id"],
        "ce_dataschema": _DATASCHEMA.get(payload["schema"]),
        "content-type": _JSON,
    })


def dead_letter_headers(payload: Mapping[str, Any]) -> Headers:
    """Headers for one dead-letter.v1 payload."""
    source = payload["source"]
    return _headers({
        "ce_specversion": SPECVERSION,
        "ce_type": payload["schema"],
        "ce_source": source_uri(source["topic"]),
        "ce_id": f"{source['partition']}:{source['offset']}",
        "ce_time": payload["failed_at"],
        "ce_dataschema": _DATASCHEMA.get(payload["schema"]),
        "content-type": _JSON,
    })


def tombstone_headers(
    product_id: str, *, topic: str, partition: int, offset: int, updated_at: str, event_id: str | None = None
) -> Headers:
    """Headers for the tombstone of a delete read at ``topic``/``partition``/``offset``.

    ``updated_at`` is the delete event's own ``updated_at`` (RFC 3339), ``event_id`` the tombstone's
    ``enrich.event_id`` header when the producer sets one.
    """
    return _headers({
        "ce_specversion": SPECVERSION,
        "ce_type": TOMBSTONE_TYPE,
        "ce_source": source_uri(topic),
        "ce_id": event_id if event_id else f"{partition}:{offset}",
        "ce_time": updated_at,
        "ce_subject": product_id,
    })
