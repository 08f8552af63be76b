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


def _first_message(consumer: Consumer, topic: str) -> None:
    """Subscribe and poll until the first record arrives: the member has joined and holds the partition."""
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    msg = None
    while time.monotonic() < deadline and (msg is None or msg.error()):
        msg = consumer.poll(0.5)
    assert msg is not None and not msg.error()


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
        _first_message(consumer, topic)
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


def test_a_commit_while_the_broker_is_away_is_deferred_not_fatal() -> None:
    """Regression (chaos broker restart, docs/reliability.md finding 7): with the broker process gone, the
    periodic commit failed with ``_WAIT_COORD`` and the service exited 1; it must defer the commit instead
    (nothing marked committed, the next interval retries) and carry on."""
    import asyncio

    from consumer.devtools.embedded_broker import EmbeddedBroker
    from consumer.stream.checkpoint import Checkpoint
    from consumer.stream.partition import PartitionState

    with EmbeddedBroker() as private:
        topic = f"away-{uuid.uuid4().hex[:8]}"
        producer = Producer({"bootstrap.servers": private.bootstrap_servers})
        producer.produce(topic, b"x", partition=0)
        producer.flush(10)
        consumer = Consumer({"bootstrap.servers": private.bootstrap_servers, "group.id": f"g-{topic}",
                             "session.timeout.ms": 6000, "enable.auto.commit": False, "auto.offset.reset": "earliest",
                             "log_level": 0})
        try:
            _first_message(consumer, topic)
            private.stop()  # the broker process is gone (killed, restarting)
            time.sleep(1.0)
            state = PartitionState((topic, 0))
            state.offsets.track(0)
            state.offsets.complete(0)
            seen: list[CommitFailed] = []

            async def kafka_call(fn, *args):  # the service runs these on the consumer's thread
                try:
                    return fn(*args)
                except CommitFailed as exc:
                    seen.append(exc)
                    raise

            checkpoint = Checkpoint(consumer, producer=None, states=lambda: [state],  # type: ignore[arg-type]
                                    kafka_call=kafka_call, transactional=False, interval_s=1.0)
            assert asyncio.run(checkpoint.commit()) == {}  # deferred, not raised
            assert len(seen) == 1 and seen[0].coordinator_unavailable and not seen[0].membership_lost, seen
            assert "_WAIT_COORD" in str(seen[0]) or "COORDINATOR" in str(seen[0])
            assert state.offsets.committable() == 1  # still to be committed by the next interval
        finally:
            consumer.close()
