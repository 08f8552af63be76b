"""A byte budget for image data in flight: bodies awaiting decode and model views awaiting inference.

Without it, memory grows with the number of events in flight times their images: 512 events of 4 large
PNGs each held their decoded pictures until the event finished, far past a pod's memory limit, and the
pod crash-looped on the same backlog. With it, a download that would overrun the budget waits for room.

Deadlock-free by construction: a reservation is only ever held while waiting for work that needs no
further reservation (a decode, a model batch), so every holder eventually releases. One reservation
larger than the whole budget is admitted when nothing else is held, so an oversized item is slow, not stuck.
"""

from __future__ import annotations

import asyncio

from consumer.ops import metrics


class Reservation:
    """Bytes held from a :class:`MemoryBudget`; :meth:`release` gives back some or all of them."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self._budget = budget
        self.held = nbytes

    def release(self, nbytes: int | None = None) -> None:
        """Give back ``nbytes`` (all when ``None``); releasing more than is held gives back what is held."""
        amount = self.held if nbytes is None else min(nbytes, self.held)
        if amount > 0:
            self.held -= amount
            self._budget._give_back(amount)


class MemoryBudget:
    """An asyncio weighted semaphore over bytes; fair (first come, first served). Loop thread only."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.used = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def reserve(self, nbytes: int) -> Reservation:
        """Wait until ``nbytes`` fit (or nothing is held), then hold them."""
        nbytes = max(0, nbytes)
        if not self._waiters and self._fits(nbytes):
            self._take(nbytes)
            return Reservation(self, nbytes)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, future)
        self._waiters.append(entry)
        metrics.IMAGE_MEMORY_WAITS.inc()
        try:
            await future
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif future.done() and not future.cancelled():
                self._give_back(nbytes)  # granted, but the waiter was cancelled meanwhile
            raise
        return Reservation(self, nbytes)

    def _fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.max_bytes or self.used == 0

    def _take(self, nbytes: int) -> None:
        self.used += nbytes
        metrics.IMAGE_MEMORY_BYTES.set(self.used)

    def _give_back(self, nbytes: int) -> None:
        self.used -= nbytes
        metrics.IMAGE_MEMORY_BYTES.set(self.used)
        while self._waiters and self._fits(self._waiters[0][0]):
            nbytes_next, future = self._waiters.pop(0)
            if future.done():
                continue
            self._take(nbytes_next)
            future.set_result(None)
