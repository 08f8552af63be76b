"""The embedded tansu broker and the JSONL producer against it: real processes, real Kafka protocol."""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from consumer.devtools.embedded_broker import BrokerError, EmbeddedBroker, create_topics, resolve_tansu
from consumer.devtools.produce import events_from_catalog, produce_jsonl, read_jsonl, write_jsonl
from models.catalog.kaggle import read_catalog

pytestmark = pytest.mark.broker


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,  # tansu's group join otherwise waits ~23 s
        }
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_produce_consume_commit_round_trip(broker: EmbeddedBroker, sample_catalog: Path, tmp_path: Path) -> None:
    topic, group = _unique("roundtrip"), _unique("group")
    create_topics(broker.bootstrap_servers, [topic], partitions=3)
    events = events_from_catalog(
        read_catalog(sample_catalog)[:48], "http://127.0.0.1:1", updated_at="2024-05-01T00:00:00Z"
    )
    feed = tmp_path / "events.jsonl"
    assert write_jsonl(feed, [*events, b"{not json", b"\xff\xfe garbage"]) == 50
    assert len(read_jsonl(feed, keep_invalid=True)) == 50
    assert produce_jsonl(broker.bootstrap_servers, topic, feed) == 50

    consumer = _consumer(broker.bootstrap_servers, group)
    try:
        consumer.subscribe([topic])
        received = []
        deadline = time.monotonic() + 30
        while len(received) < 50 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                received.append(msg)
        assert len(received) == 50
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    finally:
        consumer.close()

    values = [m.value() for m in received]
    assert b"{not json" in values and b"\xff\xfe garbage" in values  # invalid lines go out byte for byte
    partition_of: dict[str, set[int]] = {}
    for msg in received:
        if msg.key() is not None:
            assert orjson.loads(msg.value())["product_id"] == msg.key().decode()
            partition_of.setdefault(msg.key().decode(), set()).add(msg.partition())
    assert len(partition_of) == 48 and all(len(p) == 1 for p in partition_of.values())
    ends = {p: sum(1 for m in received if m.partition() == p) for p in range(3)}
    assert {tp.partition: tp.offset for tp in committed} == ends


def test_create_topics_is_idempotent_and_sets_partitions(broker: EmbeddedBroker) -> None:
    names = [_unique("t"), _unique("t")]
    create_topics(broker.bootstrap_servers, names, partitions=4)
    create_topics(broker.bootstrap_servers, names, partitions=4)  # "already exists" is fine
    consumer = _consumer(broker.bootstrap_servers, _unique("meta"))
    try:
        metadata = consumer.list_topics(timeout=10)
    finally:
        consumer.close()
    assert all(len(metadata.topics[n].partitions) == 4 for n in names)


def test_stop_leaves_no_process_even_with_a_client_still_connected() -> None:
    embedded = EmbeddedBroker(stop_timeout_s=1.0).start()
    pid = embedded.pid
    assert pid is not None and embedded.is_running()
    client = _consumer(embedded.bootstrap_servers, "idle")
    client.list_topics(timeout=5)  # an open connection makes tansu's SIGTERM wait: stop() must still bound it
    started = time.monotonic()
    embedded.stop()
    assert time.monotonic() - started < 4
    assert _gone(pid)  # reaped: not even a zombie
    embedded.stop()  # idempotent
    client.close()


def test_start_failure_reports_the_broker_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        embedded = EmbeddedBroker(port=port, startup_timeout_s=10)
        with pytest.raises(BrokerError, match=r"(?s)tansu exited.*AddrInUse"):
            embedded.start()
    assert embedded.pid is None
    assert embedded.log_path is not None and embedded.log_path.is_file()  # kept for the person debugging
    shutil.rmtree(embedded.log_path.parent)


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="not an executable"):
        EmbeddedBroker(binary=str(tmp_path / "no-tansu")).start()
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-tansu"))
    with pytest.raises(BrokerError, match="tansu broker binary not found"):
        resolve_tansu()
