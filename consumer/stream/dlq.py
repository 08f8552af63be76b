"""Dead-letter rate policy: dead-letter single bad events, but stop loudly when most input is failing.

Dead-lettering is right for a vendor's malformed event; it is wrong when every event fails (a schema
change upstream, a broken model bundle), because then the service would quietly move the whole topic into
the dead-letter topic while looking healthy. Arroyo's DLQ policy has the same limit.
"""

from __future__ import annotations

from collections import deque


class DeadLetterRateExceeded(RuntimeError):
    """Raised when the share of dead-lettered events in the recent window is over the limit."""


class DeadLetterPolicy:
    """Remembers the outcome of the last ``window`` events and raises when too many were dead letters.

    The check only applies once the window is full, so a bad first event cannot stop a fresh consumer.
    """

    def __init__(self, *, max_fraction: float, window: int) -> None:
        self._max_fraction = max_fraction
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._dead = 0

    def record(self, dead_lettered: bool) -> None:
        if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
            self._dead -= 1
        self._outcomes.append(dead_lettered)
        self._dead += dead_lettered
        if len(self._outcomes) == self._outcomes.maxlen and self.fraction > self._max_fraction:
            raise DeadLetterRateExceeded(
                f"{self._dead} of the last {len(self._outcomes)} events were dead-lettered "
                f"(limit {self._max_fraction:.0%}); stopping instead of dead-lettering the whole topic"
            )

    @property
    def fraction(self) -> float:
        return self._dead / len(self._outcomes) if self._outcomes else 0.0
