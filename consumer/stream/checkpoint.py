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

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from consumer import metrics
from consumer.logs import get_logger
from consumer.offsets import OffsetTracker, TopicPartitionKey

log = get_logger("enrich.commit")


#: Commit errors that mean "this member is no longer (or not yet again) the owner": its session expired
#: (a frozen or descheduled process), or a rebalance is under way. The partitions are being lost or
#: revoked, and their next owner redoes the uncommitted offsets: duplicates, never loss, so not fatal.
MEMBERSHIP_ERRORS = frozenset({
    KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
})


class CommitFailed(RuntimeError):
    """A commit could not be made; the service stops so that a restart resumes from the last commit.

    ``membership_lost``: the broker refused it because this member lost its place in the group
    (:data:`MEMBERSHIP_ERRORS`); the service carries on and librdkafka rejoins.
    """

    def __init__(self, message: str, membership_lost: bool = False) -> None:
        super().__init__(message)
        self.membership_lost = membership_lost

    @classmethod
    def from_kafka(cls, what: str, exc: KafkaException) -> CommitFailed:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        return cls(f"{what} failed: {exc}", membership_lost=err is not None and err.code() in MEMBERSHIP_ERRORS)


def _as_topic_partitions(offsets: dict[TopicPartitionKey, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in sorted(offsets.items())]


class OffsetCommitter:
    """Commits what the tracker allows.

    Threading contract: the tracker belongs to the asyncio loop thread, the consumer to the kafka thread.
    So a plain commit is three steps: :meth:`pending` on the loop, :meth:`commit_offsets` on the kafka
    thread, :meth:`mark_committed` on the loop. :meth:`commit_transaction` runs wholly on the loop thread,
    where the transactional producer is used, so nothing is produced while a transaction commits.
    """

    def __init__(self, consumer: Consumer, producer: Producer, tracker: OffsetTracker, *, transactional: bool) -> None:
        self._consumer = consumer
        self._producer = producer
        self._tracker = tracker
        self.transactional = transactional

    def pending(self, partitions: set[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Committable offsets (of ``partitions`` only, when given) that are ahead of the last commit."""
        offsets = self._tracker.committable()
        if partitions is not None:
            offsets = {tp: o for tp, o in offsets.items() if tp in partitions}
        return offsets

    def commit_offsets(self, offsets: dict[TopicPartitionKey, int]) -> None:
        """Synchronous ``Consumer.commit``; call it on the thread that owns the consumer."""
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=_as_topic_partitions(offsets), asynchronous=False)
        except KafkaException as exc:
            failed = CommitFailed.from_kafka("offset commit", exc)
            metrics.COMMITS.labels(outcome="not_member" if failed.membership_lost else "error").inc()
            raise failed from exc
        metrics.COMMITS.labels(outcome="ok").inc()
        log.debug("committed", offsets={f"{t}/{p}": o for (t, p), o in offsets.items()})

    def mark_committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        self._tracker.mark_committed(offsets)

    def commit_transaction(self, partitions: set[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Exactly-once: flush, put the offsets into the transaction, commit it and begin the next one."""
        # Flushing first delivers everything produced in this transaction, so the tracker's offsets
        # cover exactly the outputs the transaction holds (outputs are released in offset order).
        remaining = self._producer.flush(30)
        if remaining:
            raise CommitFailed(f"{remaining} messages still undelivered after flush; not committing")
        offsets = self.pending(partitions)
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
