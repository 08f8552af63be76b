"""The chaos suite's restartable broker (tests/chaos/storage_broker.py): tansu on s3:// keeps topics, records
and committed offsets across a SIGKILL and a SIGTERM of the broker process; postgres is refused with why."""

from __future__ import annotations

import signal
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consumer.devtools.embedded_broker import create_topics
from tests.chaos.storage_broker import StorageUnavailable, check_storage, storage_broker

pytestmark = pytest.mark.broker


def _read_all(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int, bytes]]:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False})
    reader.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got, last = [], time.monotonic()
    try:
        while time.monotonic() - last < 1.0:
            for m in reader.consume(100, 0.2):
                if m.error() is None:
                    got.append((m.partition(), m.offset(), m.value()))
                    last = time.monotonic()
    finally:
        reader.close()
    return sorted(got)


def test_s3_broker_keeps_records_and_offsets_across_restarts() -> None:
    try:
        check_storage("s3")
    except StorageUnavailable as exc:
        pytest.skip(str(exc))
    with storage_broker("s3") as broker:
        bootstrap = broker.bootstrap_servers
        create_topics(bootstrap, ["kept"], partitions=2)
        producer = Producer({"bootstrap.servers": bootstrap})
        for i in range(40):
            producer.produce("kept", key=str(i).encode(), value=b"v%d" % i)
        assert producer.flush(20) == 0
        before = _read_all(bootstrap, "kept", 2)
        assert len(before) == 40
        group = Consumer({"bootstrap.servers": bootstrap, "group.id": "g", "enable.auto.commit": False})
        try:
            group.commit(offsets=[TopicPartition("kept", 0, 3), TopicPartition("kept", 1, 5)], asynchronous=False)
            for sig in (signal.SIGKILL, signal.SIGTERM):
                broker.crash(sig, grace_s=1.0)  # SIGTERM waits for our clients to hang up: not for long
                broker.start_again()
                assert broker.bootstrap_servers == bootstrap  # same address: clients reconnect by themselves
                got = group.committed([TopicPartition("kept", 0), TopicPartition("kept", 1)], timeout=10)
                assert [(tp.partition, tp.offset) for tp in got] == [(0, 3), (1, 5)]
                assert _read_all(bootstrap, "kept", 2) == before
            producer.produce("kept", value=b"after", partition=0)
            assert producer.flush(20) == 0  # the producer from before the restarts still delivers
            after = _read_all(bootstrap, "kept", 2)
            new = [r for r in after if r not in before]
            assert len(after) == 41 and [r[2] for r in new] == [b"after"]
            assert new[0][1] > max(r[1] for r in before if r[0] == 0)  # appended after the kept records
        finally:
            group.close()


def test_postgres_storage_is_refused_with_the_reason() -> None:
    try:
        check_storage("postgres")
    except StorageUnavailable as exc:
        assert "postgres" in str(exc)
    else:  # pragma: no cover - only with a tansu built with its postgres engine and the Postgres side added
        pytest.fail("postgres storage reported available")
