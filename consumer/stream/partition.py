"""Everything the runtime knows about one assigned partition, in one object that dies with the assignment.

A fresh :class:`PartitionState` is made on every assignment (Arroyo's ``create_with_partitions``), so a
partition that comes back after a revoke starts clean: no stale pause flag, no leftover ordering queues,
no late results from its previous tenure (those find ``closed`` set and are dropped).

Ordering (the guarantee downstream readers rely on; docs/schemas.md):

* at-least-once: outputs of the same product leave in input order (one release queue per product);
  different products are not held back by each other;
* exactly-once: every output leaves in offset order (one queue), so a transaction never holds an output
  whose offset, or an earlier one, is not committed with it;
* a newer input of a product supersedes an older one still in flight (its task is cancelled, the offset
  completes as ``superseded``); an input whose ``updated_at`` is older than the newest seen for the
  product is ``stale_update`` (skipped, unless the policy says to process it).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from consumer.stages.events import SourceCoordinates
from consumer.stages.outputs import Output, Skipped
from consumer.stream.offsets import PartitionOffsets, TopicPartitionKey


@dataclass(eq=False)
class Entry:
    """One polled message on its way through the pipeline."""

    source: SourceCoordinates
    raw: bytes | None
    product: str | None  # the product id (None when the input was invalid)
    arrived: float = field(default_factory=time.monotonic)
    output: Output | None = None
    task: asyncio.Task[None] | None = None
    released: bool = False

    @property
    def offset(self) -> int:
        return self.source.offset


class PartitionState:
    """In-flight entries, release order, offsets and the applied pause flag of one assigned partition.

    Loop thread only. ``ordered_by_offset`` selects the exactly-once order; ``product_memory`` bounds how
    many products' newest ``updated_at`` are remembered (least recently seen forgotten first);
    ``process_stale`` turns the stale check off.
    """

    def __init__(
        self,
        tp: TopicPartitionKey,
        *,
        ordered_by_offset: bool = False,
        product_memory: int = 100_000,
        process_stale: bool = False,
    ) -> None:
        self.tp = tp
        self.offsets = PartitionOffsets()
        self.closed = False
        #: pause flag as last applied to librdkafka; None = never applied in this assignment (so the first
        #: poll turn sets it explicitly, which clears a flag librdkafka kept from an earlier tenure)
        self.paused: bool | None = None
        self._ordered_by_offset = ordered_by_offset
        self._product_memory = product_memory
        self._process_stale = process_stale
        self._queues: dict[Hashable, deque[Entry]] = {}
        self._latest: dict[str, Entry] = {}  # per product, its newest entry not yet released
        self._newest_seen: OrderedDict[str, datetime] = OrderedDict()
        self._in_flight: dict[int, Entry] = {}  # by offset, in arrival order

    # ------------------------------------------------------------------ admission
    def admit(self, entry: Entry, updated_at: datetime | None) -> list[Entry]:
        """Track a new entry; returns the older entries of its product it supersedes (already marked).

        A stale entry comes back with ``output = Skipped("stale_update")`` and its offset complete.
        """
        self.offsets.track(entry.offset)
        self._in_flight[entry.offset] = entry
        superseded: list[Entry] = []
        if entry.product is not None and updated_at is not None:
            newest = self._newest_seen.get(entry.product)
            if newest is not None and updated_at < newest and not self._process_stale:
                self._skip(entry, Skipped("stale_update"))
                return superseded
            self._remember(entry.product, updated_at if newest is None else max(newest, updated_at))
            older = self._latest.get(entry.product)
            if older is not None and not older.released and not isinstance(older.output, Skipped):
                if older.task is not None:
                    older.task.cancel()
                self._skip(older, Skipped("superseded"))
                superseded.append(older)
            self._latest[entry.product] = entry
        self._queues.setdefault(self._queue_key(entry), deque()).append(entry)
        return superseded

    def _queue_key(self, entry: Entry) -> Hashable:
        if self._ordered_by_offset:
            return None
        return entry.product if entry.product is not None else ("invalid", entry.offset)

    def _remember(self, product: str, updated_at: datetime) -> None:
        self._newest_seen[product] = updated_at
        self._newest_seen.move_to_end(product)
        while len(self._newest_seen) > self._product_memory:
            self._newest_seen.popitem(last=False)

    def _skip(self, entry: Entry, outcome: Skipped) -> None:
        """A skip is final at once: nothing will be produced, so its offset is complete now."""
        entry.output = outcome
        self._finish(entry)

    # ------------------------------------------------------------------ release and completion
    def set_output(self, entry: Entry, output: Output) -> bool:
        """Record a finished entry's output; False when it no longer counts (closed or already skipped)."""
        if self.closed or entry.output is not None:
            return False
        entry.output = output
        if isinstance(output, Skipped):
            self._finish(entry)
        return True

    def releasable(self, changed: Entry | None = None) -> Iterator[Entry]:
        """Entries whose output may be produced now, in release order; each is marked released.

        ``changed`` limits the scan to that entry's queue (the usual case: one entry just finished).
        """
        if self.closed:
            return
        keys = list(self._queues) if changed is None else [self._queue_key(changed)]
        for key in keys:
            queue = self._queues.get(key)
            while queue and queue[0].output is not None:
                entry = queue.popleft()
                if self._latest.get(entry.product or "") is entry:
                    del self._latest[entry.product or ""]
                if isinstance(entry.output, Skipped):
                    continue  # its offset completed when it was skipped
                entry.released = True
                yield entry
            if queue is not None and not queue:
                del self._queues[key]

    def delivered(self, entry: Entry) -> None:
        """The broker acknowledged ``entry``'s output: its offset is complete."""
        if not self.closed:
            self._finish(entry)

    def _finish(self, entry: Entry) -> None:
        self.offsets.complete(entry.offset)
        self._in_flight.pop(entry.offset, None)
        entry.raw = None  # the input bytes are not needed any more

    # ------------------------------------------------------------------ introspection and end of life
    @property
    def in_flight(self) -> int:
        """Offsets polled and not yet contiguously complete (what holds the commit back)."""
        return self.offsets.in_flight

    def tasks(self) -> list[asyncio.Task[None]]:
        return [e.task for e in self._in_flight.values() if e.task is not None and not e.task.done()]

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds the oldest incomplete entry has been in flight (0 when none)."""
        first = next(iter(self._in_flight.values()), None)
        return 0.0 if first is None else (time.monotonic() if now is None else now) - first.arrived

    def close(self) -> None:
        """End of the assignment: cancel the work, ignore every late result."""
        self.closed = True
        for entry in self._in_flight.values():
            if entry.task is not None:
                entry.task.cancel()
        self._in_flight.clear()
        self._queues.clear()
        self._latest.clear()
