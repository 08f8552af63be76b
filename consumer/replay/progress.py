"""Replay progress per partition: a rich bar with rate and ETA on a terminal, log lines otherwise.

A partition's progress is its committed position (inputs whose outcome is delivered or skipped, and
committed) between the plan's start and end offsets; a resumed replay starts part-way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from consumer.ops.logs import get_logger
from consumer.replay.plan import ReplayPlan

log = get_logger("enrich.replay.progress")


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- ev/s" if speed is None else f"{speed:.1f} ev/s", style="progress.data.speed")


class ReplayProgress:
    """``update(positions)`` with ``{partition: committed position}``; ``close()`` at the end."""

    def __init__(self, plan: ReplayPlan, *, terminal: bool | None = None, log_every_s: float = 10.0,
                 console: Console | None = None) -> None:
        self.plan = plan
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.log_every_s = log_every_s
        self._started = time.monotonic()
        self._first = dict(plan.position or plan.start)
        self._last_log = 0.0
        self._progress: Progress | None = None
        self._tasks: dict[int, Any] = {}
        if self.terminal:
            self._progress = Progress(
                TextColumn("partition {task.fields[partition]}"), BarColumn(), MofNCompleteColumn(),
                RateColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console or Console(stderr=True), transient=False, refresh_per_second=4,
            )
            for p in sorted(plan.start):
                total = plan.end[p] - plan.start[p]
                done = min(total, max(0, self._first.get(p, plan.start[p]) - plan.start[p]))
                self._tasks[p] = self._progress.add_task("", total=max(total, 0), completed=done, partition=p)
            self._progress.start()

    def done_of(self, positions: dict[int, int]) -> dict[int, int]:
        return {p: min(self.plan.end[p], max(self.plan.start[p], positions.get(p, self._first.get(p, 0))))
                - self.plan.start[p] for p in self.plan.start}

    def update(self, positions: dict[int, int], force: bool = False) -> None:
        done = self.done_of(positions)
        if self._progress is not None:
            for p, n in done.items():
                self._progress.update(self._tasks[p], completed=n)
            return
        now = time.monotonic()
        if not force and now - self._last_log < self.log_every_s:
            return
        self._last_log = now
        elapsed = max(1e-6, now - self._started)
        for p in sorted(done):
            total = self.plan.end[p] - self.plan.start[p]
            fresh = done[p] - (min(self.plan.end[p], self._first.get(p, self.plan.start[p])) - self.plan.start[p])
            rate = fresh / elapsed
            left = total - done[p]
            log.info("replay progress", partition=p, done=done[p], total=total, rate_per_s=round(rate, 2),
                     eta_s=None if rate <= 0 else round(left / rate, 1) if left else 0.0)

    def close(self, positions: dict[int, int]) -> None:
        self.update(positions, force=True)
        if self._progress is not None:
            self._progress.stop()


def positions_of(states: Callable[[], dict[Any, Any]], topic: str) -> dict[int, int]:
    """The committed position of every partition state the pipeline holds."""
    out = {}
    for (t, p), state in states().items():
        if t == topic and state.offsets.committed is not None:
            out[p] = state.offsets.committed
    return out
