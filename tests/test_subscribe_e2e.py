"""The subscriber side of the real service: `enrich run` (with CloudEvents headers on) -> `enrich materialize`.

Products updated several times and some deleted go through the real service; the materializer reading its
output must end with exactly the inputs' latest state, every output must decode as the typed models and
carry CloudEvents headers, and `enrich tail --dead-letter` must show the dead letters as typed JSON lines.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
import typer
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event
from typer.testing import CliRunner

from consumer.devtools.embedded_broker import create_topics
from consumer.devtools.produce import produce_jsonl
from consumer.subscribe import materialize as mat
from consumer.subscribe.commands import register
from consumer.subscribe.reader import Reader, Record, Start
from schemas.models import DeadLetter, EnrichedEvent, Tombstone
from tests.service_harness import enrich_env, start_enrich, tail, wait_exit

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TITLES = ["navy blue cotton t-shirt", "black leather belt", "red floral dress", "white running shoes",
          "grey wool sweater", "green checked shirt"]


def _feed(n_products: int = 30) -> tuple[list[bytes], dict[str, str], set[str]]:
    """Events (1-3 versions per product, every 5th deleted last, every 7th deleted then re-created)."""
    events: list[bytes] = []
    last_title: dict[str, str] = {}
    deleted: set[str] = set()
    for v in range(4):
        for i in range(n_products):
            pid = f"SKU-{i:03d}"
            ops = ["upsert"] * (1 + i % 3)
            if i % 7 == 0:
                ops = ["upsert", "delete", "upsert"]
            elif i % 5 == 0:
                ops.append("delete")
            if v >= len(ops):
                continue
            stamp = f"2026-11-2{v}T00:00:{i:02d}Z"
            event = {"event_id": f"{pid}-v{v}", "op": ops[v], "retailer": "acme", "product_id": pid,
                     "updated_at": stamp}
            if ops[v] == "upsert":
                event["title"] = f"{TITLES[(i + v) % len(TITLES)]} v{v}"
                last_title[pid] = event["title"]
                deleted.discard(pid)
            else:
                last_title.pop(pid, None)
                deleted.add(pid)
            events.append(orjson.dumps(event))
    events += [b"{not json", b'{"op": "upsert"}']
    return events, last_title, deleted


def test_service_output_materializes_to_the_latest_state(broker, tiny_bundle: Path, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    topics = (f"sub-{run}.in", f"sub-{run}.out", f"sub-{run}.dlq")
    create_topics(broker.bootstrap_servers, list(topics), partitions=3)
    events, latest_titles, deleted = _feed()
    assert produce_jsonl(broker.bootstrap_servers, topics[0], events) == len(events)
    log = tmp_path / "enrich.log"
    env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, group=f"g-{run}", ENRICH_CLOUDEVENTS="true")
    assert wait_exit(start_enrich(env, log, "--idle-exit-s", "4"), 300, log) == 0, tail(log)

    # Every output is a typed event with CloudEvents headers that agree with it.
    outputs = [r for r in _read(broker, topics[1])]
    assert outputs and all(r.event is not None for r in outputs), [r.error for r in outputs if r.error]
    for record in outputs:
        ce = from_binary_event(KafkaMessage(headers={k: v.encode() for k, v in record.headers.items()},
                                            key=record.key, value=record.value or b""))
        assert ce.get_source() == f"urn:enrich:input:{topics[0]}"
        assert ce.get_subject() == record.event.product_id
        if isinstance(record.event, EnrichedEvent):
            assert ce.get_id() == record.event.event_id and ce.get_time() == record.event.enriched_at
        else:
            assert isinstance(record.event, Tombstone) and record.event.updated_at is not None
            assert ce.get_id() == record.event.event_id

    # The materializer ends with exactly the inputs' latest state: the live products, each with the
    # attributes of its newest upsert (the one with the latest updated_at), and the deleted ones gone.
    conn = mat.open_db(tmp_path / "catalog.sqlite")
    with Reader(broker.bootstrap_servers, topics[1], start=Start.committed(), group_id=f"m-{run}",
                stop_at_end=True, poll_timeout_s=0.2) as reader:
        mat.materialize(reader, conn)
    live = {pid: updated for pid, updated in conn.execute(
        "SELECT product_id, updated_at FROM products WHERE deleted = 0")}
    gone = {pid for (pid,) in conn.execute("SELECT product_id FROM products WHERE deleted = 1")}
    assert set(live) == set(latest_titles)
    assert gone == deleted
    newest = {}
    for raw in events:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if "product_id" in event:
            newest[event["product_id"]] = event["updated_at"]
    for pid, updated in live.items():
        assert updated == newest[pid].replace("Z", ".000000Z"), pid
    by_product = {r.event.product_id: r.event for r in outputs if isinstance(r.event, EnrichedEvent)}
    for pid in live:
        assert mat.product(conn, pid) == {n: p.value for n, p in by_product[pid].attributes.items()}
    conn.close()

    # tail --dead-letter: JSON lines that read back as typed dead letters.
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["tail", "-b", broker.bootstrap_servers, "--dead-letter",
                                      "--dead-letter-topic", topics[2], "--from-beginning", "--stop-at-end"])
    assert result.exit_code == 0, result.output
    dead = [Record.from_json(line).event for line in result.stdout.splitlines()]
    assert sorted(d.reason for d in dead if isinstance(d, DeadLetter)) == ["not_json", "schema_violation"]


def _read(broker, topic: str) -> list[Record]:
    with Reader(broker.bootstrap_servers, topic, start=Start.beginning(), stop_at_end=True,
                poll_timeout_s=0.2) as reader:
        return list(reader)
