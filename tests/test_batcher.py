"""Micro-batcher behaviour: size and time bounds, bursts fill batches, errors reach every waiter."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.stages.batcher import MicroBatcher


def _double(items: list[int]) -> list[int]:
    return [2 * i for i in items]


def test_results_match_items_in_order() -> None:
    async def main() -> None:
        batcher = MicroBatcher("t", _double, max_size=8, max_wait_s=0.01)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(50)))
        await batcher.close()
        assert results == [2 * i for i in range(50)]
        assert max(batcher.batch_sizes) <= 8

    asyncio.run(main())


def test_burst_fills_batches_while_model_is_busy() -> None:
    """A slow model plus a burst: batches are full, not a trickle of ones."""
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        time.sleep(0.02)
        return items

    async def main() -> list[int]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher("t", slow, max_size=16, max_wait_s=0.0, executor=pool)
            batcher.start()
            first = asyncio.ensure_future(batcher.submit(-1))
            await asyncio.sleep(0.05)  # the first batch (of one) is now running in the model thread
            burst = [asyncio.ensure_future(batcher.submit(i)) for i in range(64)]
            await asyncio.sleep(0.05)
            gate.set()
            await asyncio.gather(first, *burst)
            await batcher.close()
            return batcher.batch_sizes

    sizes = asyncio.run(main())
    assert sizes[0] == 1
    assert sizes[1:] == [16, 16, 16, 16]


def test_time_bound_closes_partial_batch() -> None:
    async def main() -> None:
        batcher = MicroBatcher("t", _double, max_size=100, max_wait_s=0.05)
        batcher.start()
        started = time.perf_counter()
        assert await batcher.submit(3) == 6
        assert time.perf_counter() - started < 2.0
        await batcher.close()
        assert batcher.batch_sizes == [1]

    asyncio.run(main())


def test_exception_reaches_every_item_and_batcher_survives() -> None:
    calls = {"n": 0}

    def flaky(items: list[int]) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("model exploded")
        return items

    async def main() -> None:
        batcher = MicroBatcher("t", flaky, max_size=4, max_wait_s=0.05)
        batcher.start()
        first = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in first)
        assert await batcher.submit(7) == 7
        await batcher.close()

    asyncio.run(main())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=1, max_value=200), max_size=st.integers(min_value=1, max_value=32))
def test_every_item_answered_and_bound_respected(n: int, max_size: int) -> None:
    async def main() -> None:
        batcher = MicroBatcher("t", _double, max_size=max_size, max_wait_s=0.001)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(n)))
        await batcher.close()
        assert results == [2 * i for i in range(n)]
        assert sum(batcher.batch_sizes) == n
        assert max(batcher.batch_sizes) <= max_size

    asyncio.run(main())


def test_submit_requires_start() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError):
            await MicroBatcher("t", _double, max_size=2, max_wait_s=0).submit(1)

    asyncio.run(main())
