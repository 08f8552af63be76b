"""The one module that commits consumer offsets (Quix Streams' checkpoint idea).

Offsets come only from :class:`~consumer.offsets.OffsetTracker`, which marks an offset complete when its
output was *delivered*; so a commit never covers an event whose enriched or dead-letter message could still
be lost. Two modes:

* at-least-once (default): ``Consumer.commit`` of the contiguous completed offsets;
* exactly-once (Kafka to Kafka only): flush the transactional producer, put the same offsets into the
  transaction with ``send_offsets_to_transaction``, commit it, begin the next one. Downloads and inference
  stay at-least-once; downstream readers use ``isolation.level=read_committed``.
"""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from consumer import metrics
from consumer.logs import get_logger
from consumer.offsets import OffsetTracker, TopicPartitionKey

log = get_logger("enrich.commit")


class CommitFailed(RuntimeError):
    """A commit could not be made; the service stops so that a restart resumes from the last commit."""


def _as_topic_partitions(offsets: dict[TopicPartitionKey, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in sorted(offsets.items())]


class OffsetCommitter:
    """Commits what the tracker allows. Call plain commits from the thread that owns the consumer."""

    def __init__(self, consumer: Consumer, producer: Producer, tracker: OffsetTracker, *, transactional: bool) -> None:
        self._consumer = consumer
        self._producer = producer
        self._tracker = tracker
        self.transactional = transactional

    def commit(self, partitions: set[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Commit the committable offsets (of ``partitions`` only, when given); returns what was committed."""
        if self.transactional:
            return self._commit_transaction(partitions)
        offsets = self._select(partitions)
        if not offsets:
            return {}
        try:
            self._consumer.commit(offsets=_as_topic_partitions(offsets), asynchronous=False)
        except KafkaException as exc:
            metrics.COMMITS.labels(outcome="error").inc()
            raise CommitFailed(f"offset commit failed: {exc}") from exc
        self._tracker.mark_committed(offsets)
        metrics.COMMITS.labels(outcome="ok").inc()
        log.debug("committed", offsets={f"{t}/{p}": o for (t, p), o in offsets.items()})
        return offsets

    def _select(self, partitions: set[TopicPartitionKey] | None) -> dict[TopicPartitionKey, int]:
        offsets = self._tracker.committable()
        if partitions is not None:
            offsets = {tp: o for tp, o in offsets.items() if tp in partitions}
        return offsets

    def _commit_transaction(self, partitions: set[TopicPartitionKey] | None) -> dict[TopicPartitionKey, int]:
        # Flushing first delivers everything produced in this transaction, so the tracker's offsets
        # cover exactly the outputs the transaction holds (outputs are released in offset order).
        remaining = self._producer.flush(30)
        if remaining:
            raise CommitFailed(f"{remaining} messages still undelivered after flush; not committing")
        offsets = self._select(partitions)
        try:
            if offsets:
                self._producer.send_offsets_to_transaction(
                    _as_topic_partitions(offsets), self._consumer.consumer_group_metadata(), 30
                )
            self._producer.commit_transaction(30)
            self._producer.begin_transaction()
        except KafkaException as exc:
            metrics.COMMITS.labels(outcome="error").inc()
            raise CommitFailed(f"transaction commit failed: {exc}") from exc
        self._tracker.mark_committed(offsets)
        metrics.COMMITS.labels(outcome="ok").inc()
        return offsets
