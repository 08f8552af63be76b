"""Subscriber-side throughput: typed decoding, the typed reader and the reference materializer.

    .venv/bin/python bench/bench_subscribe.py [--events 20000] [--products 5000]

Writes N attributes-enriched.v1 events (the schema's example, one per version of P products) to a topic of an
embedded tansu broker on loopback, then measures: ``schemas.models.decode`` alone, ``Reader`` from the
beginning to the end, ``materialize`` into a fresh SQLite file, and the facet query. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime, timedelta

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.devtools.embedded_broker import EmbeddedBroker
from consumer.subscribe import materialize as mat
from consumer.subscribe.reader import Reader, Start
from schemas import EXAMPLES_DIR
from schemas.models import decode


def events(n: int, products: int) -> list[tuple[str, bytes]]:
    example = json.loads((EXAMPLES_DIR / "attributes-enriched.v1" / "image-and-text.json").read_text())
    base = datetime(2024, 5, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        payload = copy.deepcopy(example)
        pid, partition, offset = f"SKU-{i % products}", i % 3, i // 3
        stamp = (base + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        payload.update(product_id=pid, source_updated_at=stamp,
                       source={"topic": "products", "partition": partition, "offset": offset, "timestamp_ms": None},
                       event_id=hashlib.sha256(orjson.dumps(["products", partition, offset, "v1"])).hexdigest())
        payload["attributes"]["color"]["value"] = f"c{i % 17}"
        out.append((pid, orjson.dumps(payload)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--products", type=int, default=5_000)
    args = parser.parse_args()
    records = events(args.events, args.products)
    started = time.perf_counter()
    for _, value in records:
        decode(value)
    decode_s = time.perf_counter() - started

    with EmbeddedBroker() as broker:
        topic = "bench-enriched"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        for future in admin.create_topics([NewTopic(topic, 3, 1)]).values():
            future.result(30)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 20})
        for i, (key, value) in enumerate(records):
            producer.produce(topic, key=key, value=value)
            if i % 1000 == 0:
                producer.poll(0)
        producer.flush(60)

        started = time.perf_counter()
        with Reader(broker.bootstrap_servers, topic, start=Start.beginning(), stop_at_end=True) as reader:
            read = sum(1 for _ in reader)
        read_s = time.perf_counter() - started

        with tempfile.TemporaryDirectory() as tmp:
            conn = mat.open_db(os.path.join(tmp, "catalog.sqlite"))
            started = time.perf_counter()
            with Reader(broker.bootstrap_servers, topic, start=Start.committed(), group_id="bench",
                        stop_at_end=True) as reader:
                stats = mat.materialize(reader, conn)
            mat_s = time.perf_counter() - started
            started = time.perf_counter()
            rows = mat.facets(conn)
            facets_ms = (time.perf_counter() - started) * 1000
            live = conn.execute("SELECT COUNT(*) FROM products WHERE deleted = 0").fetchone()[0]
            conn.close()

    size = len(records[0][1])
    cpu = platform.processor() or platform.machine()
    print(f"{args.events} events ({size} B each) of {args.products} products; {cpu}, {os.cpu_count()} CPUs\n")
    print("| step | time | rate |\n|---|---|---|")
    print(f"| `schemas.models.decode` (no Kafka) | {decode_s:.2f} s | {args.events / decode_s:,.0f} events/s |")
    print(f"| `Reader`, beginning to end, typed | {read_s:.2f} s | {read / read_s:,.0f} records/s |")
    print(f"| `materialize` into SQLite ({stats.batches} transactions + commits) | {mat_s:.2f} s | "
          f"{args.events / mat_s:,.0f} records/s |")
    print(f"| `facets` over {live} live products ({len(rows)} rows) | {facets_ms:.1f} ms | |")


if __name__ == "__main__":
    main()
