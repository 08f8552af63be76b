"""Products updated live while a replay runs: a reader of the input topic from the replay's end offsets on.

The replay checks it before enriching an input and again just before handing the output over to be
produced; a product seen here is skipped (``replay_newer_live``): its newer input is the live consumer's to
answer, and the replay's older version must not land after that answer in the compacted topic. The reader
parses only ``product_id`` and never waits on a model, so it runs far ahead of any enrichment: the window
left is a live update whose input this reader has not seen yet but whose enriched output the live
consumer has already produced, i.e. the live consumer faster than a plain read (docs/operations.md).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from consumer.ops.logs import get_logger

log = get_logger("enrich.replay.watch")


class LiveWatch:
    """A thread that records every product id found in ``topic`` at or after ``end`` (per partition)."""

    def __init__(self, kafka: dict[str, Any], topic: str, end: dict[int, int]) -> None:
        self.seen: set[str] = set()
        self.read = 0
        self._conf = {
            **kafka,
            "group.id": f"enrich-replay-watch-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
        }
        self._topic = topic
        self._end = dict(end)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replay-watch", daemon=True)

    def __contains__(self, product: object) -> bool:
        return product in self.seen

    def start(self) -> LiveWatch:
        self._thread.start()
        self._ready.wait(15)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        consumer = Consumer(self._conf)
        try:
            consumer.assign([TopicPartition(self._topic, p, o) for p, o in sorted(self._end.items())])
            self._ready.set()
            while not self._stop.is_set():
                for msg in consumer.consume(500, 0.05):
                    if msg.error() is not None or msg.value() is None:
                        continue
                    self.read += 1
                    try:
                        body = orjson.loads(msg.value())
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(body, dict) and isinstance(body.get("product_id"), str):
                        if body["product_id"] not in self.seen:
                            log.info("live update past the replay's end", product_id=body["product_id"],
                                     partition=msg.partition(), offset=msg.offset())
                        self.seen.add(body["product_id"])
        except Exception as exc:  # the replay must not trust a dead watch: it stops (see runner)
            log.error("live watch failed", error=f"{type(exc).__name__}: {exc}")
            self.failed = exc
        finally:
            self._ready.set()
            consumer.close()

    failed: BaseException | None = None
