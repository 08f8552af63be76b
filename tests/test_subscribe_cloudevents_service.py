"""ENRICH_CLOUDEVENTS: the service's outputs carry CloudEvents binary-mode headers only when it is on.

Drives the real Enricher stage (parse -> handle -> the Output the producer sends) with a fake predictor;
the headers are read back with the CloudEvents SDK and the records with the subscribers' typed decoder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from consumer.ops.settings import Settings
from consumer.stages.enricher import Enricher
from consumer.stages.events import SourceCoordinates
from schemas.models import DeadLetter, EnrichedEvent, Tombstone, decode


class _Prediction:
    def to_json(self) -> dict[str, Any]:
        return {"value": "red", "confidence": 0.9, "threshold": 0.5,
                "evidence": {"image": None, "text": {"value": "red", "confidence": 0.9}}}


class FakePredictor:
    name, version, attributes, image_decode_size = "fake", "v-test", ("color",), (8, 8)

    def text_input(self, title: str | None, description: str | None = None, brand: str | None = None) -> str:
        return title or ""

    def image_views(self, pil_rgb: Any) -> Any:
        return np.zeros((3, 8, 8), dtype=np.float32)

    def predict_texts(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        return [{} for _ in texts]

    def predict_images(self, views: Sequence[Any]) -> list[dict[str, Any]]:
        return [{} for _ in views]

    def combine(self, text_probs: Mapping[str, Any] | None, image_probs: Sequence[Mapping[str, Any]],
                text: str | None = None) -> dict[str, _Prediction]:
        return {"color": _Prediction()}


UPSERT = {"event_id": "e1", "op": "upsert", "retailer": "acme", "product_id": "SKU-1", "title": "red shirt",
          "updated_at": "2024-05-01T12:00:00Z"}
DELETE = {"event_id": "e2", "op": "delete", "retailer": "acme", "product_id": "SKU-1",
          "updated_at": "2024-05-01T13:00:00Z"}


async def _outputs(cloudevents: bool) -> list[tuple[Any, Any]]:
    settings = Settings(cloudevents=cloudevents)
    async with Enricher(FakePredictor(), settings) as enricher:
        out = []
        for offset, raw in enumerate([orjson.dumps(UPSERT), orjson.dumps(DELETE), b"not json"]):
            source = SourceCoordinates("products", 2, 40 + offset, None, b"SKU-1")
            parsed = enricher.parse(raw, source)
            output = parsed if not hasattr(parsed, "op") else await enricher.handle(parsed, source)
            out.append((output, source))
        return out


def _value(output: Any) -> bytes | None:
    return getattr(output, "value", None)


@pytest.mark.parametrize("enabled", [True, False])
def test_cloudevents_headers_follow_the_setting(enabled: bool) -> None:
    outputs = asyncio.run(_outputs(enabled))
    kinds = []
    for output, _source in outputs:
        headers = output.headers
        event = decode(_value(output), key=output.key, headers=headers)
        kinds.append(type(event))
        names = {name for name, _ in headers}
        assert {"enrich.source.topic", "enrich.source.partition", "enrich.source.offset"} <= names
        if not enabled:
            assert not any(n.startswith("ce_") for n in names)
            continue
        ce = from_binary_event(KafkaMessage(headers=dict(headers), key=output.key, value=_value(output) or b""))
        assert ce.get_source() == "urn:enrich:input:products"
        if isinstance(event, EnrichedEvent):
            assert ce.get_id() == event.event_id and ce.get_type() == "enrich.attributes-enriched.v1"
            assert ce.get_time() == event.enriched_at and ce.get_subject() == "SKU-1"
        elif isinstance(event, Tombstone):
            assert ce.get_id() == event.event_id and ce.get_type() == "enrich.product-deleted.v1"
            assert ce.get_time() == event.updated_at
        else:
            assert ce.get_id() == "2:42" and ce.get_type() == "enrich.dead-letter.v1"
    assert kinds == [EnrichedEvent, Tombstone, DeadLetter]
