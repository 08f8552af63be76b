"""``--max-rate``: a token bucket awaited by every replayed event before it is enriched.

Tokens are taken one at a time, in arrival order (one waiter at a time holds the lock), and the bucket
holds at most ``burst`` tokens (default: a tenth of a second's worth, at least two), so over any stretch
longer than a second the rate stays within ``burst / (rate * seconds)`` of ``rate``: a replay cannot take
the live consumer's CPU, GPU or broker capacity in bursts either.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        # at least 2: with a cap of 1, every late wake-up of the waiter (a busy loop) would be time lost
        # for good and the long-run rate would sag below ``rate``
        self.burst = max(2.0, float(burst) if burst is not None else self.rate * 0.1)
        self._tokens = 1.0  # no initial burst: the first event goes at once, the rest at the rate
        self._last: float | None = None  # no credit for the time before the first event (start-up)
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        if self._last is None:
            self._last = now
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)
