"""Offsets of one partition for at-least-once delivery with out-of-order completion.

Events of one partition finish in any order (a slow image, a retry), but Kafka stores one committed offset
per partition meaning "everything before this is done". So we may only commit the lowest contiguous
completed offset + 1: a slow early offset holds the commit back, never the other way round. That is the
bug users of async Kafka consumers lose data to (engineering notes, section 2).
"""

from __future__ import annotations

from collections import deque

TopicPartitionKey = tuple[str, int]


class PartitionOffsets:
    """Which polled offsets of one partition are complete, and what may be committed.

    Contract: :meth:`track` is called once per polled message in the order the partition delivers them
    (increasing offsets; gaps are fine, e.g. compacted topics or transaction markers). :meth:`complete` is
    called once the message's outcome is final (its output *delivered*, or a documented skip).
    :meth:`committable` then returns the offset to commit, only when it moved past the last commit.
    Not thread-safe: the owner calls it from one thread (the asyncio loop).
    """

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = None  # last seen offset + 1: the commit point when nothing is pending
        self.committed: int | None = None  # the last offset committed (or known committed at assignment)
        self.first: int | None = None  # the first offset tracked in this assignment

    def track(self, offset: int) -> None:
        if self._next is not None and offset < self._next:
            raise ValueError(f"offset {offset} arrived after {self._next - 1}: offsets must increase")
        if self.first is None:
            self.first = offset
        self._pending.append(offset)
        self._next = offset + 1

    def complete(self, offset: int) -> None:
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            self._done.discard(self._pending.popleft())

    def commit_point(self) -> int | None:
        """The offset Kafka should store now (next to read), or None before the first message."""
        return self._pending[0] if self._pending else self._next

    def committable(self) -> int | None:
        """The commit point when it is ahead of the last commit, else None."""
        point = self.commit_point()
        if point is None or (self.committed is not None and point <= self.committed):
            return None
        return point

    def mark_committed(self, offset: int) -> None:
        if self.committed is None or offset > self.committed:
            self.committed = offset

    @property
    def in_flight(self) -> int:
        """Messages tracked but not contiguously complete."""
        return len(self._pending)

    @property
    def oldest_pending(self) -> int | None:
        return self._pending[0] if self._pending else None
