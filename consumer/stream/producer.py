"""Producing outputs: topic by outcome type, retry on a full queue, delivery reports back to the partition.

An offset completes only when the broker acknowledged its output, so a crash can repeat an output but
never lose one. Delivery reports may be served on any thread (``poll`` on the loop, ``flush`` in the
transaction thread), so each one hops to the loop before it touches a :class:`PartitionState`.

While a transaction commits, :meth:`hold` keeps new outputs back (in order) so that nothing lands in a
transaction that is being committed or between commit and the next ``begin_transaction``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.ops.logs import get_logger
from consumer.stages.outputs import DeadLetter, Enriched, Tombstone
from consumer.stream.partition import Entry, PartitionState

log = get_logger("enrich.producer")


class FatalError(RuntimeError):
    """Something the service cannot work around (an output that cannot be delivered); exit 1 and restart."""


class OutputProducer:
    """Produces each released entry's output and completes its offset on delivery.

    ``fallback(entry, detail)`` builds the ``processing_error`` dead letter that replaces an output the
    producer refuses (too large, say); ``on_delivered(entry)`` counts a delivered outcome; ``on_fatal``
    stops the service.
    """

    def __init__(
        self,
        producer: Producer,
        *,
        output_topic: str,
        dead_letter_topic: str,
        fallback: Callable[[Entry, str], DeadLetter],
        on_delivered: Callable[[Entry], None],
        on_fatal: Callable[[str], None],
    ) -> None:
        self.producer = producer
        self._topics = {Enriched: output_topic, Tombstone: output_topic, DeadLetter: dead_letter_topic}
        self._fallback = fallback
        self._on_delivered = on_delivered
        self._on_fatal = on_fatal
        self._loop = asyncio.get_running_loop()
        self._held: list[tuple[PartitionState, Entry]] | None = None

    # ------------------------------------------------------------------ transaction gate
    def hold(self) -> None:
        """Keep outputs back until :meth:`release_held` (a transaction is committing)."""
        if self._held is None:
            self._held = []

    def release_held(self) -> None:
        held, self._held = self._held or [], None
        for state, entry in held:
            self.emit(state, entry)

    def drop_held(self) -> None:
        """The held outputs' partitions were reset (transaction aborted): their events are read again."""
        self._held = None if self._held is None else []

    # ------------------------------------------------------------------ produce
    def emit(self, state: PartitionState, entry: Entry) -> None:
        """Produce ``entry.output``; raises only :class:`FatalError` (the supervisor then stops the service)."""
        if state.closed:
            return
        if self._held is not None:
            self._held.append((state, entry))
            return
        output = entry.output
        try:
            self._produce(state, entry, output)
        except KafkaException as exc:
            if isinstance(output, DeadLetter):
                raise FatalError(f"dead letter for {entry.source.topic}/{entry.source.partition}@"
                                 f"{entry.offset} could not be produced: {exc}") from exc
            log.error("output refused by the producer; dead-lettering the input", error=str(exc),
                      partition=entry.source.partition, offset=entry.offset)
            entry.output = self._fallback(entry, f"output could not be produced: {exc}")
            try:
                self._produce(state, entry, entry.output)
            except KafkaException as again:
                raise FatalError(f"dead letter for offset {entry.offset} could not be produced: {again}") from again

    def _produce(self, state: PartitionState, entry: Entry, output: Any) -> None:
        topic = self._topics[type(output)]
        value = output.value if isinstance(output, Enriched | DeadLetter) else None

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            self._loop.call_soon_threadsafe(self._delivered, state, entry, err, topic)

        for _ in range(1000):
            try:
                self.producer.produce(topic, value=value, key=output.key, headers=output.headers,
                                      on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: serve callbacks and try again
                self.producer.poll(0.05)
        raise FatalError("producer queue stayed full for 50 s")

    def _delivered(self, state: PartitionState, entry: Entry, err: KafkaError | None, topic: str) -> None:
        if state.closed:
            return  # revoked, lost or reset meanwhile: its next owner redoes the event (or it was aborted)
        if err is not None:
            # The idempotent producer already retried; skipping the output would lose it.
            self._on_fatal(f"delivery to {topic} failed: {err}")
            return
        state.delivered(entry)
        self._on_delivered(entry)

    async def flush(self, timeout: float) -> int:
        """Flush off the loop; returns how many messages are still undelivered."""
        end = time.monotonic() + timeout
        remaining = await asyncio.to_thread(self.producer.flush, max(0.0, end - time.monotonic()))
        await asyncio.sleep(0)  # delivery reports queued by flush run before the caller continues
        return remaining
