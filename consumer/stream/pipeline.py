"""What the processor drives: per assigned partition a fresh :class:`PartitionState`, and per event a
supervised task running the enricher, released to the producer in the order the state allows.

Supervision (nothing stalls silently): every event task catches what the enricher raises and turns it
into a ``processing_error`` dead letter, so its offset still completes; anything that escapes even that
(a dead letter the producer refuses, a bug here) reaches ``on_fatal`` and the service exits 1 instead of
freezing the partition while looking healthy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from consumer.ops import metrics
from consumer.ops.logs import get_logger
from consumer.stages.enricher import Enricher
from consumer.stages.events import ProductEvent, SourceCoordinates
from consumer.stages.outputs import DeadLetter, Skipped, SkipReason
from consumer.stream.offsets import TopicPartitionKey
from consumer.stream.partition import Entry, PartitionState
from consumer.stream.producer import OutputProducer

log = get_logger("enrich.pipeline")


@dataclass(frozen=True, slots=True)
class Inbound:
    """One polled message as the processor hands it over: coordinates and raw value, nothing parsed."""

    source: SourceCoordinates
    value: bytes | None


def _updated_at(product: ProductEvent) -> datetime | None:
    try:
        return datetime.fromisoformat(product.updated_at)
    except ValueError:
        return None


class Pipeline:
    """Partition states and event tasks; the processor calls it on the loop thread only."""

    def __init__(
        self,
        enricher: Enricher,
        *,
        exactly_once: bool,
        product_memory: int,
        process_stale: bool,
        on_fatal: Callable[[str], None],
        skip: Callable[[Inbound], SkipReason | None] | None = None,
    ) -> None:
        self.enricher = enricher
        self.producer: OutputProducer | None = None  # set by the processor once the producer exists
        self.states: dict[TopicPartitionKey, PartitionState] = {}
        self._exactly_once = exactly_once
        self._product_memory = product_memory
        self._process_stale = process_stale
        self._on_fatal = on_fatal
        #: optional admission filter (``enrich replay``: inputs past its end offsets, older versions):
        #: a reason completes the offset at once as Skipped(reason), before parsing, so nothing is produced
        self._skip = skip
        self.skipped = 0  # inputs completed without an output (superseded, stale_update)

    # ------------------------------------------------------------------ assignment
    def assign(self, tps: Iterable[TopicPartitionKey], committed: dict[TopicPartitionKey, int] | None = None) -> None:
        """A fresh state per newly assigned partition (its committed offset, when known, for the lag)."""
        for tp in tps:
            old = self.states.pop(tp, None)
            if old is not None:
                old.close()
            state = PartitionState(tp, ordered_by_offset=self._exactly_once, product_memory=self._product_memory,
                                   process_stale=self._process_stale)
            if committed and committed.get(tp, -1) >= 0:
                state.offsets.committed = committed[tp]
            self.states[tp] = state

    def drop(self, tps: Iterable[TopicPartitionKey]) -> list[PartitionState]:
        """End these assignments: their work is cancelled and late results ignored."""
        dropped = []
        for tp in tps:
            state = self.states.pop(tp, None)
            if state is not None:
                state.close()
                dropped.append(state)
        return dropped

    def in_flight(self) -> int:
        return sum(s.in_flight for s in self.states.values())

    def tasks(self, tps: Iterable[TopicPartitionKey] | None = None) -> list[asyncio.Task[None]]:
        wanted = self.states if tps is None else {tp: self.states[tp] for tp in tps if tp in self.states}
        return [t for s in wanted.values() for t in s.tasks()]

    async def drain(self, tps: Iterable[TopicPartitionKey] | None, deadline: float) -> bool:
        """Wait (until ``deadline``, monotonic) for these partitions' work to be delivered; True if it was."""
        tps = list(self.states if tps is None else tps)
        tasks = self.tasks(tps)
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            if not any(self.states[tp].in_flight for tp in tps if tp in self.states):
                return True
            await asyncio.sleep(0.01)  # delivery reports arrive through the producer's poll
        return not any(self.states[tp].in_flight for tp in tps if tp in self.states)

    # ------------------------------------------------------------------ events
    def submit(self, inbound: Inbound) -> None:
        """Admit one polled message: parse it, start its task (or settle it at once), release what can go."""
        source = inbound.source
        state = self.states.get((source.topic, source.partition))
        if state is None:
            return  # fetched just before its partition was revoked; the new owner reads it again
        reason = self._skip(inbound) if self._skip is not None else None
        if reason is not None:
            entry = Entry(source, inbound.value, None)
            state.admit(entry, None)
            state.set_output(entry, Skipped(reason))
            self._count_skip(entry)
            self._release(state, entry)
            return
        parsed = self.enricher.parse(inbound.value, source)
        if isinstance(parsed, DeadLetter):
            entry = Entry(source, inbound.value, None)
            state.admit(entry, None)
            state.set_output(entry, parsed)
            self._release(state, entry)
            return
        entry = Entry(source, inbound.value, parsed.product_id)
        superseded = state.admit(entry, _updated_at(parsed))
        for older in superseded:
            self._count_skip(older)
        if isinstance(entry.output, Skipped):
            self._count_skip(entry)
        else:
            task = asyncio.get_running_loop().create_task(
                self._run(state, entry, parsed), name=f"event-{source.topic}/{source.partition}@{source.offset}"
            )
            task.add_done_callback(self._supervise)
            entry.task = task
        self._release(state, entry)

    async def _run(self, state: PartitionState, entry: Entry, product: ProductEvent) -> None:
        try:
            output = await self.enricher.handle(product, entry.source)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a model failure must not stall the partition
            log.exception("processing failed", topic=entry.source.topic, partition=entry.source.partition,
                          offset=entry.offset)
            output = self.enricher.dead_letter(entry.raw, entry.source, "processing_error",
                                               f"{type(exc).__name__}: {exc}")
        if state.set_output(entry, output):
            self._release(state, entry)

    def _supervise(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("event task failed beyond recovery", task=task.get_name(), error=f"{type(exc).__name__}: {exc}")
            self._on_fatal(f"{task.get_name()}: {type(exc).__name__}: {exc}")

    def _release(self, state: PartitionState, changed: Entry) -> None:
        assert self.producer is not None
        for entry in state.releasable(changed):
            self.producer.emit(state, entry)

    def fallback(self, entry: Entry, detail: str) -> DeadLetter:
        """The dead letter that replaces an output the producer refused."""
        return self.enricher.dead_letter(entry.raw, entry.source, "processing_error", detail)

    def _count_skip(self, entry: Entry) -> None:
        assert isinstance(entry.output, Skipped)
        self.skipped += 1
        metrics.EVENTS_SKIPPED.labels(reason=entry.output.reason).inc()
        log.info("event skipped", reason=entry.output.reason, partition=entry.source.partition,
                 offset=entry.offset)
