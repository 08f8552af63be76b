"""The subscriber tools against a real broker (tansu): the reader's start positions, `enrich tail`, the materializer.

The enriched topic is written here directly, as enrich would write it (payloads built from the schema's
example and validated against the schema; tombstones with the source headers), so the tests control the
order of arrival: versions out of order, redeliveries, a replayed older version arriving late.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import typer
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from typer.testing import CliRunner

from consumer.subscribe import materialize as mat
from consumer.subscribe.commands import register
from consumer.subscribe.reader import Reader, Record, Start
from consumer.subscribe.tail import Filter, run_tail
from schemas import EXAMPLES_DIR, validator
from schemas.models import DeadLetter, EnrichedEvent, Tombstone

pytestmark = pytest.mark.broker

BASE = datetime(2024, 5, 1, 12, tzinfo=UTC)
EXAMPLE = json.loads((EXAMPLES_DIR / "attributes-enriched.v1/image-and-text.json").read_text())
DEAD_EXAMPLE = json.loads((EXAMPLES_DIR / "dead-letter.v1/schema-violation.json").read_text())


# ------------------------------------------------------------------------------------------ helpers
def _topic(broker: Any, partitions: int = 3) -> str:
    name = f"enriched-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(30)
    return name


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event_id(topic: str, partition: int, offset: int, model: str) -> str:
    return hashlib.sha256(orjson.dumps([topic, partition, offset, model])).hexdigest()


def enriched(product_id: str, *, partition: int, offset: int, updated_at: datetime, color: str,
             confidence: float = 0.9, model: str = "m1", enriched_at: datetime | None = None) -> bytes:
    payload = copy.deepcopy(EXAMPLE)
    payload.update(
        product_id=product_id,
        source_event_id=f"{product_id}@{offset}",
        event_id=_event_id("products", partition, offset, model),
        source={"topic": "products", "partition": partition, "offset": offset, "timestamp_ms": None},
        model={"name": "enrich-test", "version": model},
        source_updated_at=_ts(updated_at),
        enriched_at=_ts(enriched_at or updated_at + timedelta(seconds=1)),
    )
    payload["attributes"]["color"].update(value=color, confidence=confidence,
                                          evidence={"image": None, "text": {"value": color, "confidence": confidence}})
    validator("attributes-enriched.v1").validate(payload)
    return orjson.dumps(payload)


def tombstone_headers(*, partition: int, offset: int, updated_at: datetime | None) -> list[tuple[str, bytes]]:
    headers = [("enrich.source.topic", b"products"), ("enrich.source.partition", str(partition).encode()),
               ("enrich.source.offset", str(offset).encode())]
    if updated_at is not None:
        headers += [("enrich.updated_at", _ts(updated_at).encode()),
                    ("enrich.event_id", _event_id("products", partition, offset, "delete").encode())]
    return headers


def produce(broker: Any, topic: str, records: list[tuple[str | None, bytes | None, list, int | None]]) -> None:
    """(key, value, headers, timestamp_ms) in this order; same key -> same partition (murmur2, as Java).

    One record per batch (a flush after each): tansu answers ListOffsets "latest" with the last *batch's*
    base offset + 1, not the last offset + 1, so with batches of several records ``OFFSET_END`` and
    timestamp lookups would land inside the last batch there (real Kafka answers right either way).
    """
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "partitioner": "murmur2_random",
                         "enable.idempotence": True, "linger.ms": 0})
    failures: list[Any] = []
    for key, value, headers, ts in records:
        producer.produce(topic, key=key, value=value, headers=headers, timestamp=ts or 0,
                         on_delivery=lambda err, _msg: failures.append(err) if err else None)
        assert producer.flush(30) == 0
    assert failures == []


def read_all(broker: Any, topic: str, **kwargs: Any) -> list[Record]:
    with Reader(broker.bootstrap_servers, topic, stop_at_end=True, poll_timeout_s=0.2, **kwargs) as reader:
        return list(reader)


# ------------------------------------------------------------------------------------------ reader + tail
@pytest.fixture(scope="module")
def small_topic(broker: Any) -> tuple[str, str, list[int]]:
    """Enriched topic with 12 events, 3 tombstones and a non-JSON record; a dead-letter topic with 2."""
    topic, dead = _topic(broker), _topic(broker, partitions=1)
    stamps = [int((BASE + timedelta(minutes=i)).timestamp() * 1000) for i in range(16)]
    records = []
    for i in range(12):
        color = ["navy blue", "red", "black"][i % 3]
        records.append((f"P{i}", enriched(f"P{i}", partition=0, offset=i, updated_at=BASE + timedelta(minutes=i),
                                          color=color, confidence=0.5 + i * 0.04), [], stamps[i]))
    for i in range(3):
        records.append((f"P{i}", None, tombstone_headers(partition=0, offset=20 + i, updated_at=BASE + timedelta(
            hours=1)), stamps[12 + i]))
    records.append(("junk", b"not json", [], stamps[15]))
    produce(broker, topic, records)
    dl = copy.deepcopy(DEAD_EXAMPLE)
    produce(broker, dead, [(None, orjson.dumps(dl), [("enrich.reason", b"schema_violation")], None),
                           ("P1", orjson.dumps({**dl, "reason": "not_json"}), [], None)])
    return topic, dead, stamps


def test_reader_reads_everything_typed_and_stops_at_the_end(broker: Any, small_topic: tuple) -> None:
    topic, dead, _ = small_topic
    records = read_all(broker, topic, start=Start.beginning())
    kinds = Counter(type(r.event).__name__ for r in records)
    assert kinds == {"EnrichedEvent": 12, "Tombstone": 3, "NoneType": 1}
    junk = next(r for r in records if r.event is None)
    assert junk.key == b"junk" and "not JSON" in junk.error
    tomb = next(r.event for r in records if isinstance(r.event, Tombstone))
    assert tomb.source.offset in (20, 21, 22) and tomb.updated_at == BASE + timedelta(hours=1) and tomb.event_id
    dead_records = read_all(broker, dead, start=Start.beginning())
    assert [type(r.event) for r in dead_records] == [DeadLetter, DeadLetter]
    assert read_all(broker, topic, start=Start.end()) == []


def test_reader_starts_at_an_offset_and_at_a_time(broker: Any, small_topic: tuple) -> None:
    topic, _, stamps = small_topic
    everything = read_all(broker, topic, start=Start.beginning())
    by_partition = Counter(r.partition for r in everything)
    p, count = by_partition.most_common(1)[0]
    from_offset = read_all(broker, topic, start=Start.at_offset(2, partition=p))
    assert {r.partition for r in from_offset} == {p}
    assert [r.offset for r in from_offset] == list(range(2, count))
    since = read_all(broker, topic, start=Start.at_time(datetime.fromtimestamp(stamps[9] / 1000, UTC)))
    assert sorted(r.timestamp_ms for r in since) == stamps[9:]


def _tail(broker: Any, topic: str, keep: Filter, **kwargs: Any) -> list[Record]:
    out = io.StringIO()
    reader = Reader(broker.bootstrap_servers, topic, start=kwargs.pop("start", Start.beginning()), stop_at_end=True,
                    poll_timeout_s=0.2)
    try:
        n = run_tail(reader, keep, output="json", out=out, **kwargs)
    finally:
        reader.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == n
    return [Record.from_json(line) for line in lines]


def test_tail_filters_and_its_json_parses_as_the_typed_models(broker: Any, small_topic: tuple) -> None:
    topic, dead, _ = small_topic
    red = _tail(broker, topic, Filter(where={"color": "RED"}))
    assert sorted(r.event.product_id for r in red) == ["P1", "P10", "P4", "P7"]
    assert all(isinstance(r.event, EnrichedEvent) and r.event.value("color") == "red" for r in red)
    # The JSON value is the payload exactly as on the topic, so it parses with the model directly too.
    assert EnrichedEvent.model_validate(orjson.loads(orjson.dumps(red[0].to_json()))["value"]) == red[0].event
    confident = _tail(broker, topic, Filter(attributes=("color",), min_confidence=0.9))
    assert sorted(r.event.product_id for r in confident) == ["P10", "P11"]  # 0.5 + 0.04 i >= 0.9
    unsure = _tail(broker, topic, Filter(attributes=("color",), max_confidence=0.6))
    assert sorted(r.event.product_id for r in unsure) == ["P0", "P1", "P2"]
    p1 = _tail(broker, topic, Filter(products=frozenset({"P1"})))
    assert [type(r.event) for r in p1] == [EnrichedEvent, Tombstone]
    two = _tail(broker, topic, Filter(), limit=2)
    assert len(two) == 2
    dead_p1 = _tail(broker, dead, Filter(products=frozenset({"P1"})))
    assert len(dead_p1) == 1 and dead_p1[0].event.reason == "not_json"


def test_tail_command_end_to_end(broker: Any, small_topic: tuple) -> None:
    topic, _, _ = small_topic
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer from collapsing the app into one
    result = CliRunner().invoke(app, ["tail", "-b", broker.bootstrap_servers, "--topic", topic, "--from-beginning",
                                      "--stop-at-end", "--where", "color=black", "-n", "3"])
    assert result.exit_code == 0, result.output
    records = [Record.from_json(line) for line in result.stdout.splitlines()]
    assert len(records) == 3 and all(r.event.value("color") == "black" for r in records)
    table = CliRunner().invoke(app, ["tail", "-b", broker.bootstrap_servers, "--topic", topic, "--from-beginning",
                                     "--stop-at-end", "--product", "P2", "--format", "table"])
    assert table.exit_code == 0 and "deleted" in table.stdout and "color=black" in table.stdout
    bad = CliRunner().invoke(app, ["tail", "--from-beginning", "--offset", "3"])
    assert bad.exit_code == 2


# ------------------------------------------------------------------------------------------ materializer
@dataclass
class Scenario:
    records: list[tuple[str, bytes | None, list, None]]
    expected: dict[str, str]      # product -> color of its latest state (deleted ones absent)
    deleted: set[str]


def _scenario(n_products: int = 40) -> Scenario:
    """A catalog history and the enriched records of it, in a hostile order of arrival.

    Each product has 1-3 versions (updated_at increasing, input offsets increasing in its input partition);
    every 7th is deleted after its last version; every 11th is deleted then upserted again. Arrival: every
    5th product's versions arrive newest first; every output of every 4th product is delivered twice; every
    product with 2+ versions has its first version replayed with model m2 at the very end (old, must lose);
    every 6th product's latest upsert is replayed with m2 and another color (same input: the replay wins).
    """
    offsets = Counter()
    history: dict[str, list[dict[str, Any]]] = {}
    for i in range(n_products):
        pid, part = f"SKU-{i:03d}", i % 3
        steps: list[dict[str, Any]] = []
        clock = BASE + timedelta(minutes=i)
        ops = ["upsert"] * (1 + i % 3)
        if i % 11 == 0:
            ops = ["upsert", "delete", "upsert"]
        elif i % 7 == 0:
            ops.append("delete")
        for v, op in enumerate(ops):
            clock += timedelta(seconds=10)
            steps.append({"op": op, "partition": part, "offset": offsets[part], "updated_at": clock,
                          "color": f"c{i}-{v}"})
            offsets[part] += 1
        history[pid] = steps

    def render(pid: str, step: dict[str, Any], model: str = "m1", color: str | None = None,
               enriched_at: datetime | None = None) -> tuple[str, bytes | None, list, None]:
        if step["op"] == "delete":
            return pid, None, tombstone_headers(partition=step["partition"], offset=step["offset"],
                                                updated_at=step["updated_at"]), None
        return pid, enriched(pid, partition=step["partition"], offset=step["offset"], updated_at=step["updated_at"],
                             color=color or step["color"], model=model, enriched_at=enriched_at), [], None

    records: list[tuple[str, bytes | None, list, None]] = []
    late: list[tuple[str, bytes | None, list, None]] = []
    expected: dict[str, str] = {}
    deleted: set[str] = set()
    for i, (pid, steps) in enumerate(history.items()):
        order = list(reversed(steps)) if i % 5 == 0 else steps
        for step in order:
            records.append(render(pid, step))
            if i % 4 == 0:
                records.append(render(pid, step))  # redelivery: same event_id
        last = steps[-1]
        if len(steps) >= 2 and steps[0]["op"] == "upsert":
            late.append(render(pid, steps[0], model="m2", color="stale", enriched_at=BASE + timedelta(days=1)))
        if last["op"] == "delete":
            deleted.add(pid)
        elif i % 6 == 0:
            late.append(render(pid, last, model="m2", color=f"{last['color']}-m2",
                               enriched_at=last["updated_at"] + timedelta(hours=2)))
            expected[pid] = f"{last['color']}-m2"
        else:
            expected[pid] = last["color"]
    return Scenario(records + late, expected, deleted)


def _state(conn: Any) -> tuple[dict[str, str], set[str]]:
    live = {pid: mat.product(conn, pid)["color"] for (pid,) in conn.execute(
        "SELECT product_id FROM products WHERE deleted = 0")}
    gone = {pid for (pid,) in conn.execute("SELECT product_id FROM products WHERE deleted = 1")}
    return live, gone


class Crash(Exception):
    pass


def test_materializer_ends_with_the_catalogs_latest_state(broker: Any, tmp_path: Any) -> None:
    scenario = _scenario()
    topic = _topic(broker)
    produce(broker, topic, scenario.records)
    group = f"mat-{uuid.uuid4().hex[:8]}"
    db = tmp_path / "catalog.sqlite"

    # Run 1 crashes right after its second SQLite transaction committed, before the Kafka commit.
    reader = Reader(broker.bootstrap_servers, topic, start=Start.committed(), group_id=group, stop_at_end=True,
                    poll_timeout_s=0.2, batch_size=15)
    real_commit, calls = reader.commit, []

    def crashing_commit(positions: dict[int, int]) -> None:
        calls.append(positions)
        if len(calls) == 2:
            raise Crash
        real_commit(positions)

    reader.commit = crashing_commit  # type: ignore[method-assign]
    conn = mat.open_db(db)
    with pytest.raises(Crash):
        mat.materialize(reader, conn)
    reader.close()
    conn.close()

    # Run 2 resumes from the committed offsets: the second batch is read again, and changes nothing twice.
    conn = mat.open_db(db)
    with Reader(broker.bootstrap_servers, topic, start=Start.committed(), group_id=group, stop_at_end=True,
                poll_timeout_s=0.2, batch_size=15) as reader:
        stats = mat.materialize(reader, conn)
    assert stats.duplicates >= 1
    live, gone = _state(conn)
    assert live == scenario.expected
    assert gone == scenario.deleted
    # What was stored is the latest model where a replay re-enriched the latest version.
    assert {row[0] for row in conn.execute("SELECT model_version FROM products WHERE deleted = 0")} == {"m1", "m2"}

    # Facets are products per value among live products.
    expected_facets = sorted(Counter(scenario.expected.values()).items())
    assert sorted((v, n) for a, v, n in mat.facets(conn) if a == "color") == expected_facets
    assert {a for a, _, _ in mat.facets(conn)} == set(EXAMPLE["attributes"]) - {"season"}  # season is null

    # Run 3: everything committed, nothing to read.
    with Reader(broker.bootstrap_servers, topic, start=Start.committed(), group_id=group, stop_at_end=True,
                poll_timeout_s=0.2) as reader:
        assert mat.materialize(reader, conn).batches == 0
    conn.close()


def test_materializer_is_independent_of_arrival_order(broker: Any, tmp_path: Any) -> None:
    """The same records in the reverse order of arrival (one partition) end in the same state."""
    scenario = _scenario(n_products=25)
    topic = _topic(broker, partitions=1)
    produce(broker, topic, list(reversed(scenario.records)))
    conn = mat.open_db(tmp_path / "reverse.sqlite")
    with Reader(broker.bootstrap_servers, topic, start=Start.committed(), group_id=f"rev-{uuid.uuid4().hex[:8]}",
                stop_at_end=True, poll_timeout_s=0.2) as reader:
        mat.materialize(reader, conn)
    assert _state(conn) == (scenario.expected, scenario.deleted)


def test_materialize_command_and_facets(broker: Any, tmp_path: Any) -> None:
    scenario = _scenario(n_products=12)
    topic = _topic(broker)
    produce(broker, topic, scenario.records)
    app = typer.Typer()
    register(app)
    db = str(tmp_path / "cli.sqlite")
    runner = CliRunner()
    result = runner.invoke(app, ["materialize", "--sqlite", db, "-b", broker.bootstrap_servers, "--topic", topic,
                                 "--group-id", f"cli-{uuid.uuid4().hex[:8]}", "--stop-at-end"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["products"] == len(scenario.expected)
    facets = runner.invoke(app, ["materialize", "--sqlite", db, "--facets", "--attribute", "color"])
    assert facets.exit_code == 0
    rows = [json.loads(line) for line in facets.stdout.splitlines()]
    assert sum(r["products"] for r in rows) == len(scenario.expected)
    assert {r["attribute"] for r in rows} == {"color"}
