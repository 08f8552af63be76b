"""End to end: real tansu broker, real loopback image server, real model, `enrich run` as a subprocess."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest

from consumer.devtools.embedded_broker import create_topics
from consumer.devtools.produce import events_from_catalog, produce_jsonl
from models.catalog.kaggle import read_catalog
from schemas import validator
from tests.service_harness import (
    committed,
    end_offsets,
    enrich_env,
    read_all,
    skipped_coordinates,
    source_coordinates,
    start_enrich,
    tail,
    wait_exit,
)

pytestmark = pytest.mark.broker

PARTITIONS = 3


def _topics(prefix: str) -> tuple[str, str, str]:
    run = uuid.uuid4().hex[:8]
    return (f"{prefix}-{run}.in", f"{prefix}-{run}.out", f"{prefix}-{run}.dlq")


def test_every_event_enriched_or_dead_lettered_and_offsets_committed(
    broker, tiny_bundle: Path, sample_catalog: Path, image_server, tmp_path: Path
) -> None:
    topics = _topics("e2e")
    create_topics(broker.bootstrap_servers, list(topics), partitions=PARTITIONS)
    products = read_catalog(sample_catalog)[:180]
    events = events_from_catalog(products, image_server.base_url, updated_at="2026-11-24T00:00:00Z")
    broken, blocked = events[:8], events[8:12]
    for event in broken:
        event["image_urls"] = [image_server.base_url + "/images/does-not-exist.jpg"]
    for event in blocked:
        event["image_urls"] = ["http://169.254.169.254/latest/meta-data/image.jpg"]
    deletes = [
        {
            "event_id": f"del-{i}",
            "op": "delete",
            "retailer": "demo-retailer",
            "product_id": e["product_id"],
            "updated_at": "2026-11-25T00:00:00Z",
        }
        for i, e in enumerate(events[20:25])
    ]
    invalid = [
        b"{not json",
        b'{"op": "upsert"}',
        b"\xff\xfe\xfa",
        b"[1, 2, 3]",
        orjson.dumps({**events[30], "op": "merge"}),
    ]
    feed = tmp_path / "events.jsonl"
    feed.write_bytes(b"\n".join([*(orjson.dumps(e) for e in events + deletes), *invalid]) + b"\n")
    total = produce_jsonl(broker.bootstrap_servers, topics[0], feed)
    assert total == len(events) + len(deletes) + len(invalid)

    log = tmp_path / "enrich.log"
    proc = start_enrich(
        enrich_env(broker.bootstrap_servers, topics, tiny_bundle, group=f"g-{topics[0]}"), log, "--idle-exit-s", "4"
    )
    assert wait_exit(proc, 300, log) == 0, tail(log)

    skipped = skipped_coordinates(log)  # an upsert still in flight when its delete arrived: superseded
    assert {reason for *_, reason in skipped} <= {"superseded"}
    outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(events) + len(deletes) - len(skipped))
    dead = read_all(broker.bootstrap_servers, topics[2], expected=len(invalid))
    assert len(outputs) == len(events) + len(deletes) - len(skipped), tail(log)
    assert len(dead) == len(invalid), tail(log)
    coords = source_coordinates(outputs) + source_coordinates(dead) + [(p, o) for p, o, _ in skipped]
    assert len(coords) == len(set(coords)) == total  # every input offset answered exactly once

    schema = validator("attributes-enriched.v1")
    enriched = [orjson.loads(m.value()) for m in outputs if m.value() is not None]
    for body in enriched:
        schema.validate(body)
    tombstone_keys = {m.key().decode() for m in outputs if m.value() is None}
    assert tombstone_keys == {d["product_id"] for d in deletes}
    deleted = {d["product_id"] for d in deletes}
    last = {m.key().decode(): m for m in outputs}  # what a compacted topic keeps
    assert all(last[p].value() is None for p in deleted)  # a delete is never overtaken by its upsert
    by_product = {b["product_id"]: b for b in enriched}
    for event in broken:
        body = by_product[event["product_id"]]
        assert body["images"][0]["status"] == "http_error" and body["images"][0]["http_status"] == 404
        assert body["modalities"] == ["text"]
        assert any(a["value"] is not None for a in body["attributes"].values())
    for event in blocked:
        assert by_product[event["product_id"]]["images"][0]["status"] == "blocked_address"
    # (a deleted product's upsert may have been superseded by its delete: no enriched event to look at)
    with_photos = [by_product[p] for e in events[12:] if e["image_urls"] and (p := e["product_id"]) in by_product]
    assert with_photos and all("image" in b["modalities"] for b in with_photos)

    dlq_schema = validator("dead-letter.v1")
    reasons = Counter()
    for msg in dead:
        body = orjson.loads(msg.value())
        dlq_schema.validate(body)
        reasons[body["reason"]] += 1
        assert body["source"]["topic"] == topics[0]
    assert reasons == Counter({"not_json": 1, "schema_violation": 3, "not_utf8": 1})

    ends = end_offsets(broker.bootstrap_servers, topics[0], expected=total)
    assert committed(broker.bootstrap_servers, f"g-{topics[0]}", topics[0], range(PARTITIONS)) == ends
