"""The checkpoint's commit against a real broker: a commit refused because the member lost its place in the group is
told apart from a commit failure (the first is not fatal for the service, the second is)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from consumer.ops.metrics import REGISTRY
from consumer.stream.checkpoint import CommitFailed, commit_offsets


def _not_member_count() -> float:
    return REGISTRY.get_sample_value("enrich_commits_total", {"outcome": "not_member"}) or 0.0


def test_a_commit_after_leaving_the_group_is_a_membership_loss(broker) -> None:
    topic = f"commit-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    for _ in range(3):
        producer.produce(topic, b"x", partition=0)
    producer.flush(10)
    # max.poll.interval.ms: a member that does not poll for that long leaves the group, the same position a
    # SIGSTOPped or CPU-starved member wakes up in after its session expired
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": f"g-{topic}",
                         "session.timeout.ms": 2000, "heartbeat.interval.ms": 500, "max.poll.interval.ms": 2000,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        msg = None
        while time.monotonic() < deadline and (msg is None or msg.error()):
            msg = consumer.poll(0.5)
        assert msg is not None and not msg.error()
        commit_offsets(consumer, {(topic, 0): 1})  # a member: accepted
        before = _not_member_count()
        time.sleep(3)  # past max.poll.interval.ms without polling: librdkafka leaves the group
        try:
            commit_offsets(consumer, {(topic, 0): 2})
        except CommitFailed as exc:
            assert exc.membership_lost, exc
            assert "UNKNOWN_MEMBER_ID" in str(exc)
        else:
            raise AssertionError("the broker accepted a commit from a member that left the group")
        assert _not_member_count() == before + 1
    finally:
        consumer.close()


def test_other_commit_errors_stay_fatal() -> None:
    transport = CommitFailed.from_kafka("offset commit", KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert not transport.membership_lost
    for code in (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS):
        assert CommitFailed.from_kafka("offset commit", KafkaException(KafkaError(code))).membership_lost
