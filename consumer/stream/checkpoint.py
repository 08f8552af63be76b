"""The one place that commits: when (:class:`CommitPolicy`) and how (plain or transactional).

Offsets come only from each :class:`~consumer.stream.partition.PartitionState`, whose offsets complete
when an output was *delivered* (or skipped by a documented outcome); so a commit never covers an event
whose output could still be lost. Two modes (Quix Streams' ``Checkpoint.commit`` in numbered steps):

* at-least-once (default): ``Consumer.commit`` of the contiguous completed offsets, on the Kafka thread;
* exactly-once (Kafka to Kafka only): 1. hold new outputs, 2. flush the transactional producer (off the
  loop), 3. take every partition's committable offset (outputs leave in offset order, so these cover
  exactly what the transaction holds), 4. ``send_offsets_to_transaction`` + ``commit_transaction`` +
  ``begin_transaction`` (off the loop), 5. release the held outputs into the new transaction. Every
  transaction call runs in the transaction thread: each can block for seconds, and the loop keeps serving
  downloads and health probes meanwhile. A revoke commits the whole open transaction (every partition's
  offsets, not just the revoked ones'); lost partitions abort it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer.ops import metrics
from consumer.ops.logs import get_logger
from consumer.stream.offsets import TopicPartitionKey
from consumer.stream.partition import PartitionState
from consumer.stream.producer import OutputProducer

log = get_logger("enrich.checkpoint")

#: Commit errors that mean "this member is no longer (or not yet again) the owner": its session expired
#: (a frozen or descheduled process), or a rebalance is under way. The partitions are being lost or
#: revoked, and their next owner redoes the uncommitted offsets: duplicates, never loss, so not fatal.
MEMBERSHIP_ERRORS = frozenset({
    KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
})

#: Commit errors that mean "the group coordinator cannot be reached right now": the broker was restarted
#: or is away (librdkafka answers ``_WAIT_COORD`` at once while it has no coordinator connection), or the
#: coordinator is moving. Nothing was committed; the next interval commits the same offsets (or later
#: ones), so not fatal either: exiting would not bring the broker back (docs/reliability.md, broker restart).
COORDINATOR_ERRORS = frozenset({
    KafkaError._WAIT_COORD, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
})


class CommitFailed(RuntimeError):
    """A commit could not be made; the service stops so that a restart resumes from the last commit.

    ``membership_lost``: the broker refused it because this member lost its place in the group
    (:data:`MEMBERSHIP_ERRORS`); the service carries on and librdkafka rejoins. ``coordinator_unavailable``:
    no group coordinator to send it to right now (:data:`COORDINATOR_ERRORS`); the next interval retries.
    ``abortable``: a transaction error that aborting the transaction clears (the partitions are then read
    again).
    """

    def __init__(self, message: str, membership_lost: bool = False, abortable: bool = False,
                 coordinator_unavailable: bool = False) -> None:
        super().__init__(message)
        self.membership_lost = membership_lost
        self.abortable = abortable
        self.coordinator_unavailable = coordinator_unavailable

    @classmethod
    def from_kafka(cls, what: str, exc: KafkaException) -> CommitFailed:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        return cls(
            f"{what} failed: {exc}",
            membership_lost=err is not None and err.code() in MEMBERSHIP_ERRORS,
            abortable=err is not None and err.txn_requires_abort(),
            coordinator_unavailable=err is not None and err.code() in COORDINATOR_ERRORS,
        )


@dataclass
class CommitPolicy:
    """Commit at most every ``interval_s`` (Arroyo's CommitPolicy, by time only)."""

    interval_s: float
    last: float = 0.0

    def due(self, now: float) -> bool:
        return now - self.last >= self.interval_s

    def committed(self, now: float) -> None:
        self.last = now


def as_topic_partitions(offsets: dict[TopicPartitionKey, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in sorted(offsets.items())]


def committable(states: Iterable[PartitionState]) -> dict[TopicPartitionKey, int]:
    """Per partition, the offset to commit where it moved past the last commit."""
    out: dict[TopicPartitionKey, int] = {}
    for state in states:
        point = state.offsets.committable()
        if point is not None:
            out[state.tp] = point
    return out


def commit_offsets(consumer: Consumer, offsets: dict[TopicPartitionKey, int]) -> None:
    """Synchronous ``Consumer.commit``; call it on the thread that owns the consumer."""
    if not offsets:
        return
    try:
        consumer.commit(offsets=as_topic_partitions(offsets), asynchronous=False)
    except KafkaException as exc:
        failed = CommitFailed.from_kafka("offset commit", exc)
        metrics.COMMITS.labels(outcome="not_member" if failed.membership_lost else "error").inc()
        raise failed from exc
    metrics.COMMITS.labels(outcome="ok").inc()
    log.debug("committed", offsets={f"{t}/{p}": o for (t, p), o in offsets.items()})


class Checkpoint:
    """Commits the pipeline's completed offsets in the configured mode.

    ``kafka_call`` runs a function on the consumer's thread; transaction calls run on a thread of the
    checkpoint's own. Loop thread only.
    """

    def __init__(
        self,
        consumer: Consumer,
        producer: OutputProducer,
        states: Callable[[], Iterable[PartitionState]],
        kafka_call: Callable[..., Awaitable[Any]],
        *,
        transactional: bool,
        interval_s: float,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._states = states
        self._kafka_call = kafka_call
        self.transactional = transactional
        self.policy = CommitPolicy(interval_s)
        self._txn = ThreadPoolExecutor(1, thread_name_prefix="transaction") if transactional else None
        self._lock = asyncio.Lock()

    async def _in_txn_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._txn, fn, *args)

    async def begin(self) -> None:
        """Exactly-once: register the transactional id (fences an older producer with it) and begin."""
        if self.transactional:
            await self._in_txn_thread(self._producer.producer.init_transactions, 30)
            await self._in_txn_thread(self._producer.producer.begin_transaction)

    async def maybe_commit(self) -> None:
        now = time.monotonic()
        if self.policy.due(now):
            await self.commit()
            self.policy.committed(now)

    async def commit(self) -> dict[TopicPartitionKey, int]:
        """Commit what is complete in every owned partition; returns the committed offsets.

        (A revoke in at-least-once mode commits its partitions on the kafka thread itself, inside the
        callback, with :func:`commit_offsets`; a transaction always holds every partition's outputs.)
        """
        async with self._lock:
            if self.transactional:
                return await self._commit_transaction()
            states = list(self._states())
            offsets = committable(states)
            if not offsets:
                return {}
            try:
                await self._kafka_call(commit_offsets, self._consumer, offsets)
            except CommitFailed as exc:
                if exc.coordinator_unavailable:  # broker restarting or away: nothing committed, retried
                    log.warning("commit deferred: no group coordinator right now (retried next interval)",
                                error=str(exc))
                    return {}
                if not exc.membership_lost:
                    raise
                # the session expired or a rebalance began meanwhile: the lost/revoke callback decides
                # what happens to these partitions; nothing is marked committed (duplicates, never loss)
                log.warning("commit refused: not a group member right now (duplicates later, never loss)",
                            error=str(exc))
                return {}
            self._mark(states, offsets)
            return offsets

    async def _commit_transaction(self) -> dict[TopicPartitionKey, int]:
        producer = self._producer.producer
        self._producer.hold()  # 1.
        try:
            remaining = await self._producer.flush(30)  # 2.
            if remaining:
                raise CommitFailed(f"{remaining} messages still undelivered after flush; not committing")
            states = list(self._states())
            offsets = committable(states)  # 3.
            try:  # 4.
                if offsets:
                    metadata = self._consumer.consumer_group_metadata()
                    await self._in_txn_thread(producer.send_offsets_to_transaction,
                                              as_topic_partitions(offsets), metadata, 30)
                await self._in_txn_thread(producer.commit_transaction, 30)
                await self._in_txn_thread(producer.begin_transaction)
            except KafkaException as exc:
                metrics.COMMITS.labels(outcome="error").inc()
                raise CommitFailed.from_kafka("transaction commit", exc) from exc
            self._mark(states, offsets)
            metrics.COMMITS.labels(outcome="ok").inc()
            return offsets
        finally:
            self._producer.release_held()  # 5.

    async def abort(self) -> None:
        """Exactly-once: abort the open transaction (its outputs are discarded) and begin the next one."""
        if not self.transactional:
            return
        async with self._lock:
            producer = self._producer.producer
            self._producer.drop_held()
            try:
                await self._in_txn_thread(producer.abort_transaction, 30)
                await self._in_txn_thread(producer.begin_transaction)
            except KafkaException as exc:
                raise CommitFailed.from_kafka("transaction abort", exc) from exc
            metrics.COMMITS.labels(outcome="aborted").inc()

    async def close(self) -> None:
        """Exactly-once: abort the empty transaction begun by the last commit; stop the thread."""
        if self._txn is None:
            return
        try:
            await self._in_txn_thread(self._producer.producer.abort_transaction, 5)
        except KafkaException as exc:
            log.debug("abort of the last (empty) transaction failed", error=str(exc))
        self._txn.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _mark(states: Iterable[PartitionState], offsets: dict[TopicPartitionKey, int]) -> None:
        for state in states:
            if state.tp in offsets:
                state.offsets.mark_committed(offsets[state.tp])
