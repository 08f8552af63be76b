"""Size- and time-bounded micro-batching in front of a model (the Triton / Ray Serve batcher idea).

Items are submitted one by one from the event loop, from any partition; a batch closes when it holds
``max_size`` items or when its first item has waited ``max_wait_s``. The batch function runs in the
given executor (the single inference thread) so downloads keep flowing while the model works. While a
batch runs, new items queue up, and the next batch takes them all at once: under a burst batches fill
instead of trickling through one at a time (the most common complaint about dynamic batchers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from consumer.ops import metrics

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Batches :meth:`submit` calls into calls of ``fn(list_of_items) -> list_of_results``.

    Contract: ``fn`` returns exactly one result per item, in order; if it raises, every item of that batch
    gets the exception. :meth:`submit` must be awaited on the loop that called :meth:`start`. A caller that
    stops waiting (cancellation) does not disturb other items of the batch.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_size: int,
        max_wait_s: float,
        executor: Executor | None = None,
        on_busy: Callable[[bool], None] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.name = name
        self._fn = fn
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._executor = executor
        self._on_busy = on_busy
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batch_sizes: list[int] = []  # kept for tests and the demo summary; bounded below
        self._size_metric = metrics.BATCH_SIZE.labels(model=name)
        self._time_metric = metrics.INFERENCE_SECONDS.labels(model=name)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        """Stop the batcher; items still queued get a CancelledError."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.cancel()

    async def submit(self, item: T) -> R:
        if self._task is None:
            raise RuntimeError(f"batcher {self.name} is not started")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    def _call(self, items: list[T]) -> Sequence[R]:
        """Runs in the executor: the model call, reported to ``on_busy`` (the liveness probe)."""
        if self._on_busy is None:
            return self._fn(items)
        self._on_busy(True)
        try:
            return self._fn(items)
        finally:
            self._on_busy(False)

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self._max_wait_s
        while len(batch) < self._max_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.done()]
            if not live:
                continue
            items = [item for item, _ in live]
            self._size_metric.observe(len(items))
            if len(self.batch_sizes) < 100_000:
                self.batch_sizes.append(len(items))
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._call, items)
                if len(results) != len(items):
                    raise RuntimeError(f"{self.name}: batch of {len(items)} gave {len(results)} results")
            except Exception as exc:  # every waiter learns why; the batcher itself keeps running
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self._time_metric.observe(time.perf_counter() - started)
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
