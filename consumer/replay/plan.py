"""The replay plan: per partition the offsets to start at and stop before, and the inputs to replay.

**No stale overwrite** (docs/operations.md, "Replay"): the replay enriches only the *newest* input of each
product (newest by ``updated_at``, then by position), and only when that input lies inside the replay's
range ``[start, end)`` of its partition. So

* an older version inside the range is skipped (``replay_not_latest``): its output would be overwritten by
  the newer version's anyway, and the compacted topic converges on the same state with less work;
* a product with an input at or after the end offsets (a newer version written before the replay started,
  or after ``--to-timestamp``) is skipped: that newer input is the live consumer's to answer, and a replayed
  older version must never land after the live output;
* products updated live *while* the replay runs are caught by :mod:`consumer.replay.watch`.

How the offsets are found: one read of the input topic from its beginning to each partition's end, which the
replay needs anyway to know every product's newest input. The end is the partition EOF position of that read
(not ListOffsets "latest": tansu, the test broker, answers it per record batch), the start of
``--from-timestamp T`` is the first offset stamped ``>= T`` and the end of ``--to-timestamp T2`` the first
offset stamped ``> T2`` (Kafka's ``offsets_for_times`` semantics, found by reading: tansu answers every
timestamp lookup with the first offset). The read parses only ``product_id`` and ``updated_at``; no images,
no models: a small fraction of the replay's own cost.

Restart: the end offsets are committed at the first start under the group ``<replay group>.plan.<hash of
the range>`` and
read back on a restart (so a restarted replay stops where the first one would have); the start offsets are
committed for the replay group itself where it has no commit yet, so the streaming core simply resumes from
the replay group's commits.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from consumer.ops.logs import get_logger

log = get_logger("enrich.replay.plan")

_MIN_TIME = datetime.min.replace(year=1)


@dataclass(frozen=True, slots=True)
class Version:
    """The newest input seen of one product: its ``updated_at`` and position."""

    updated_at: datetime | None
    partition: int
    offset: int

    def newer_than(self, other: Version) -> bool:
        mine, theirs = self.updated_at or _MIN_TIME, other.updated_at or _MIN_TIME
        if (mine.tzinfo is None) != (theirs.tzinfo is None):
            mine, theirs = mine.replace(tzinfo=None), theirs.replace(tzinfo=None)
        if mine != theirs:
            return mine > theirs
        return (self.partition, self.offset) > (other.partition, other.offset)


@dataclass
class ReplayPlan:
    topic: str
    start: dict[int, int]
    end: dict[int, int]
    #: (partition, offset) of every input to replay: the newest of its product, inside [start, end)
    keep: set[tuple[int, int]] = field(default_factory=set)
    #: counts from the scan, for the summary
    scanned: int = 0
    in_range: int = 0
    products_in_range: int = 0
    products_newer_past_end: int = 0
    resumed: bool = False
    #: where the replay group stands at start (its commits, else the start offsets)
    position: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(max(0, self.end[p] - self.start[p]) for p in self.start)

    def skip_reason(self, partition: int, offset: int) -> str | None:
        """Why an input is not replayed (``None``: replay it)."""
        if partition not in self.end or offset >= self.end[partition]:
            return "replay_past_end"
        if (partition, offset) not in self.keep:
            return "replay_not_latest"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partitions": {str(p): {"start": self.start[p], "end": self.end[p]} for p in sorted(self.start)},
            "events_in_range": self.in_range,
            "to_replay": len(self.keep),
            "products_in_range": self.products_in_range,
            "products_newer_past_end": self.products_newer_past_end,
            "scanned": self.scanned,
            "resumed": self.resumed,
            "position": {str(p): o for p, o in sorted(self.position.items())},
        }


def _product_version(value: bytes | None, partition: int, offset: int) -> tuple[str, Version] | None:
    if value is None:
        return None
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("product_id"), str):
        return None
    if body.get("op") not in ("upsert", "delete"):
        return None
    stamp = body.get("updated_at")
    try:
        updated = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
    except ValueError:
        updated = None
    return body["product_id"], Version(updated, partition, offset)


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    info = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic!r} not found"))
    return sorted(info.partitions)


def scan(
    kafka: dict[str, Any],
    topic: str,
    *,
    from_ms: int | None = None,
    to_ms: int | None = None,
    fixed_end: dict[int, int] | None = None,
    timeout_s: float = 6 * 3600.0,
) -> ReplayPlan:
    """Read ``topic`` from its beginning to each partition's end (EOF) and make the plan.

    ``fixed_end``: end offsets of an earlier start (a restart); otherwise they are found here.
    """
    consumer = Consumer({
        **kafka,
        "group.id": f"enrich-replay-scan-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    try:
        partitions = _partitions(consumer, topic)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        remaining = set(partitions)
        eof: dict[int, int] = dict.fromkeys(partitions, 0)
        last: dict[int, int] = {}  # last data offset read + 1 (an EOF past it is transaction markers)
        first: dict[int, int] = {}  # first offset read (the low watermark, as far as reading tells)
        start: dict[int, int] = {}  # first offset stamped >= from_ms
        cut: dict[int, int] = {}  # first offset stamped > to_ms
        newest: dict[str, Version] = {}
        #: per product, its first input at or after its partition's start (in range unless past the end)
        first_in: dict[str, tuple[int, int]] = {}
        scanned = 0
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the plan scan of {topic} did not reach the end within {timeout_s:.0f}s")
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                p = msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof[p] = max(eof[p], msg.offset())
                        remaining.discard(p)
                        continue
                    if err.fatal() or not err.retriable():
                        raise KafkaException(err)
                    continue
                o = msg.offset()
                scanned += 1
                last[p] = o + 1
                first.setdefault(p, o)
                kind, ts = msg.timestamp()
                if from_ms is not None and p not in start and (kind == 0 or ts >= from_ms):
                    start[p] = o
                if to_ms is not None and p not in cut and kind != 0 and ts > to_ms:
                    cut[p] = o
                found = _product_version(msg.value(), p, o)
                if found is not None:
                    product, version = found
                    seen = newest.get(product)
                    if seen is None or version.newer_than(seen):
                        newest[product] = version
                    if product not in first_in and (from_ms is None or p in start):
                        first_in[product] = (p, o)
    finally:
        consumer.close()
    # the end: after the last data record (the streaming core commits last offset + 1, never past trailing
    # transaction markers), or the EOF position of a partition with no data
    eof = {p: last.get(p, eof[p]) for p in partitions}
    plan_start = {p: start.get(p, eof[p]) if from_ms is not None else first.get(p, eof[p]) for p in partitions}
    if fixed_end is not None:
        plan_end = {p: fixed_end.get(p, plan_start[p]) for p in partitions}
    else:
        plan_end = {p: cut.get(p, eof[p]) if to_ms is not None else eof[p] for p in partitions}
    plan_end = {p: max(plan_start[p], e) for p, e in plan_end.items()}
    plan = ReplayPlan(topic, plan_start, plan_end, scanned=scanned, resumed=fixed_end is not None)
    plan.in_range = plan.total
    for product, version in newest.items():
        p, o = version.partition, version.offset
        if plan_start[p] <= o < plan_end[p]:
            plan.keep.add((p, o))
        elif o >= plan_end[p] and product in first_in:
            q, first = first_in[product]
            if first < plan_end[q]:  # in the range, and updated past its end: the live consumer's
                plan.products_newer_past_end += 1
    plan.products_in_range = len(plan.keep)
    return plan


# ------------------------------------------------------------------------------------------ persistence
class PlanMismatch(ValueError):
    """The replay group holds the plan of a replay with another range (``--replay-group`` names a new one)."""


def _committed(kafka: dict[str, Any], group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    consumer = Consumer({**kafka, "group.id": group, "enable.auto.commit": False})
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in got if tp.offset >= 0}


def _commit(kafka: dict[str, Any], group: str, topic: str, offsets: dict[int, int]) -> None:
    if not offsets:
        return
    consumer = Consumer({**kafka, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in sorted(offsets.items())],
                        asynchronous=False)
    finally:
        consumer.close()


def plan_group(group: str, from_ms: int | None = None, to_ms: int | None = None) -> str:
    """The group whose committed offsets hold the end offsets of a replay with this range.

    The range is in the name (a hash of it): commit metadata would carry it on Kafka, but not every broker
    keeps it (tansu drops it), and a name survives any broker.
    """
    digest = hashlib.sha256(orjson.dumps({"from_ms": from_ms, "to_ms": to_ms})).hexdigest()[:12]
    return f"{group}.plan.{digest}"


def prepare(
    kafka: dict[str, Any],
    topic: str,
    group: str,
    *,
    from_ms: int | None,
    to_ms: int | None,
    persist: bool = True,
) -> ReplayPlan:
    """The plan of a replay under ``group``: a fresh one, or the one a crashed run left (its end offsets).

    ``persist``: commit the end offsets (group :func:`plan_group`) and, where the replay group has no commit
    yet, the start offsets (group ``<group>``), so the streaming core starts and resumes there.
    """
    consumer = Consumer({**kafka, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = _partitions(consumer, topic)
    finally:
        consumer.close()
    ends_group = plan_group(group, from_ms, to_ms)
    saved = _committed(kafka, ends_group, topic, partitions) if persist else {}
    fixed = saved if saved and set(saved) == set(partitions) else None
    if persist and fixed is None and _committed(kafka, group, topic, partitions):
        # the plan is committed before the replay group's first commit: commits without this range's plan
        # are another range's replay, whose positions mean nothing for this one
        raise PlanMismatch(f"the replay group {group!r} holds the positions of a replay of another range "
                           f"(from_ms={from_ms}, to_ms={to_ms} asked); name a new group with --replay-group")
    plan = scan(kafka, topic, from_ms=from_ms, to_ms=to_ms, fixed_end=fixed)
    if persist:
        if fixed is None:
            _commit(kafka, ends_group, topic, plan.end)
        positions = _committed(kafka, group, topic, partitions)
        missing = {p: plan.start[p] for p in partitions if p not in positions}
        _commit(kafka, group, topic, missing)
        plan.position = {p: positions.get(p, plan.start[p]) for p in partitions}
    log.info("replay plan", group=group, **plan.to_json())
    return plan
