"""Per-partition offset tracking for at-least-once delivery with out-of-order completion.

Events of one partition finish in any order (a slow image, a retry), but Kafka stores one committed offset
per partition meaning "everything before this is done". So we may only commit the lowest contiguous
completed offset + 1: a slow early offset holds the commit back, never the other way round. That is the
bug users of async Kafka consumers lose data to (engineering notes, section 2).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

TopicPartitionKey = tuple[str, int]


@dataclass
class _PartitionState:
    """Offsets of one partition in arrival order; ``done`` holds those completed but not yet contiguous."""

    pending: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    next_offset: int | None = None  # last seen offset + 1: the commit point when nothing is pending
    committed: int | None = None  # the last offset we committed (or learned was committed)


class OffsetTracker:
    """Tracks which polled offsets are complete and what may be committed, per partition.

    Contract: :meth:`track` is called once per polled message in the order the partition delivers them
    (increasing offsets; gaps are fine, e.g. compacted topics or transaction markers). :meth:`complete` is
    called once the message's output (enriched event, tombstone or dead letter) has been *delivered*.
    :meth:`committable` then returns, per partition, the offset to commit, only where it moved forward.
    Not thread-safe: the owner calls it from one thread (the asyncio loop).
    """

    def __init__(self) -> None:
        self._partitions: dict[TopicPartitionKey, _PartitionState] = {}

    def track(self, tp: TopicPartitionKey, offset: int) -> None:
        state = self._partitions.setdefault(tp, _PartitionState())
        if state.pending and offset <= state.pending[-1]:
            raise ValueError(f"offset {offset} of {tp} arrived after {state.pending[-1]}: offsets must increase")
        if state.next_offset is not None and offset < state.next_offset:
            raise ValueError(f"offset {offset} of {tp} is below already-seen offset {state.next_offset - 1}")
        state.pending.append(offset)
        state.next_offset = offset + 1

    def complete(self, tp: TopicPartitionKey, offset: int) -> None:
        """Mark one offset done; unknown partitions (revoked meanwhile) are ignored on purpose."""
        state = self._partitions.get(tp)
        if state is None:
            return
        state.done.add(offset)
        while state.pending and state.pending[0] in state.done:
            state.done.discard(state.pending.popleft())

    def committable(self) -> dict[TopicPartitionKey, int]:
        """Offsets (next offset to read) that are safe to commit and ahead of the last commit."""
        result: dict[TopicPartitionKey, int] = {}
        for tp, state in self._partitions.items():
            point = self._commit_point(state)
            if point is not None and (state.committed is None or point > state.committed):
                result[tp] = point
        return result

    def mark_committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        for tp, offset in offsets.items():
            state = self._partitions.get(tp)
            if state is not None and (state.committed is None or offset > state.committed):
                state.committed = offset

    def in_flight(self, tp: TopicPartitionKey | None = None) -> int:
        """Messages tracked but not contiguously complete (all partitions when ``tp`` is None)."""
        if tp is not None:
            state = self._partitions.get(tp)
            return len(state.pending) if state else 0
        return sum(len(s.pending) for s in self._partitions.values())

    def partitions(self) -> list[TopicPartitionKey]:
        return list(self._partitions)

    def forget(self, tp: TopicPartitionKey) -> None:
        """Drop a partition (revoked or lost); late completions for it are then ignored."""
        self._partitions.pop(tp, None)

    @staticmethod
    def _commit_point(state: _PartitionState) -> int | None:
        if state.pending:
            return state.pending[0]
        return state.next_offset
