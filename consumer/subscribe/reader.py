"""A typed reader of enrich's output topics: Kafka records in, :class:`Record` (record + typed event) out.

For subscribers: needs only ``confluent-kafka`` and :mod:`schemas` (no torch). It reads every partition of
one topic by explicit assignment, from a :class:`Start` position (the beginning, the end, an offset, a time,
or a consumer group's committed offsets), optionally only until it has caught up with every partition, and
decodes each record with :func:`schemas.models.decode`.

```python
from consumer.subscribe.reader import Reader, Start

with Reader("127.0.0.1:9092", "products.enriched", start=Start.beginning(), stop_at_end=True) as reader:
    for record in reader:
        print(record.partition, record.offset, record.event)   # EnrichedEvent | Tombstone | DeadLetter
```

A record that does not decode (not JSON, a schema violation, a ``schema`` this version does not know) is
still yielded, with ``event=None`` and ``error`` set: the caller decides whether to skip, count or stop, and
a reader never wedges on one bad record. Committing is the caller's business (:meth:`Reader.commit`); the
reader never commits by itself (``enable.auto.commit=false``).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Self

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition

from schemas.models import DecodeError, Event, decode, headers_dict

__all__ = ["Reader", "Record", "Start"]


@dataclass(frozen=True)
class Start:
    """Where a :class:`Reader` starts in every partition.

    ``kind``: ``beginning``, ``end``, ``offset`` (``offset`` in every partition, or only in ``partition``
    when given; the others then start at the end), ``time`` (the first record at or after ``time``, the end
    where none is), ``committed`` (the group's committed offsets, the beginning where there are none).
    """

    kind: Literal["beginning", "end", "offset", "time", "committed"]
    offset: int | None = None
    partition: int | None = None
    time: datetime | None = None

    @classmethod
    def beginning(cls) -> Start:
        return cls("beginning")

    @classmethod
    def end(cls) -> Start:
        return cls("end")

    @classmethod
    def at_offset(cls, offset: int, partition: int | None = None) -> Start:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        return cls("offset", offset=offset, partition=partition)

    @classmethod
    def at_time(cls, moment: datetime) -> Start:
        if moment.tzinfo is None:
            raise ValueError("the start time must be timezone-aware")
        return cls("time", time=moment)

    @classmethod
    def committed(cls) -> Start:
        return cls("committed")


@dataclass(frozen=True)
class Record:
    """One Kafka record of an output topic and its typed event (``None`` with ``error`` when it does not decode)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    headers: dict[str, str] = field(default_factory=dict)
    value: bytes | None = None
    event: Event | None = None
    error: str | None = None

    @classmethod
    def from_message(cls, message: Message) -> Record:
        kind, ts = message.timestamp()
        value = message.value()
        key = message.key()
        headers = message.headers()
        try:
            event: Event | None = decode(value, key=key, headers=headers)
            error = None
        except DecodeError as exc:
            event, error = None, str(exc)
        return cls(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            timestamp_ms=ts if kind != 0 else None,  # 0 = TIMESTAMP_NOT_AVAILABLE
            key=key,
            headers=headers_dict(headers),
            value=value,
            event=event,
            error=error,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON line ``enrich tail`` prints: record coordinates, key, headers and the value as sent.

        ``value`` is the event payload exactly as on the topic (a JSON object), ``null`` for a tombstone, or
        ``value_b64`` instead when it is not JSON. :meth:`from_json` turns a line back into a typed record.
        """
        line: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": None if self.key is None else self.key.decode("utf-8", "backslashreplace"),
            "headers": self.headers,
        }
        if self.value is None:
            line["value"] = None
        else:
            try:
                line["value"] = orjson.loads(self.value)
            except orjson.JSONDecodeError:
                line["value_b64"] = base64.b64encode(self.value).decode("ascii")
        if self.error is not None:
            line["error"] = self.error
        return line

    @classmethod
    def from_json(cls, line: Mapping[str, Any] | str | bytes) -> Record:
        """Parse a line of ``enrich tail --format json`` back into a record with its typed event."""
        data = orjson.loads(line) if isinstance(line, str | bytes) else line
        if "value_b64" in data:
            value: bytes | None = base64.b64decode(data["value_b64"])
        else:
            value = None if data["value"] is None else orjson.dumps(data["value"])
        key = None if data["key"] is None else data["key"].encode("utf-8")
        try:
            event: Event | None = decode(value, key=key, headers=data.get("headers"))
            error = None
        except DecodeError as exc:
            event, error = None, str(exc)
        return cls(data["topic"], data["partition"], data["offset"], data["timestamp_ms"], key,
                   dict(data.get("headers") or {}), value, event, error)


class Reader:
    """Reads every partition of ``topic`` from ``start``; iterate it for :class:`Record` values.

    ``stop_at_end``: stop once every partition has been read up to its end (its high watermark when the
    reader gets there: records written meanwhile are read too, so a partition written faster than it is read
    never ends). Otherwise it follows the topic until :meth:`close`. ``group_id`` is needed for
    ``Start.committed()`` and :meth:`commit`; without one, a throwaway group id is used and nothing is ever
    committed. ``config``: raw librdkafka settings.

    ``Start.at_time``: the broker's timestamp index says where to start, and records stamped before the time
    are skipped as well (producers' clocks are not monotonic, and some brokers, tansu among them, answer
    every timestamp lookup with the first offset).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        start: Start | None = None,
        stop_at_end: bool = False,
        group_id: str | None = None,
        config: Mapping[str, Any] | None = None,
        poll_timeout_s: float = 0.5,
        batch_size: int = 500,
    ) -> None:
        self.topic = topic
        self.start = start or Start.end()
        self.stop_at_end = stop_at_end
        self.group_id = group_id
        self.poll_timeout_s = poll_timeout_s
        self.batch_size = batch_size
        if self.start.kind == "committed" and group_id is None:
            raise ValueError("Start.committed() needs a group_id")
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id or f"enrich-reader-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "isolation.level": "read_committed",  # never show an aborted transaction's outputs
            **(config or {}),
        })
        self._remaining: set[int] = set()  # partitions not yet caught up with (stop_at_end)
        self._min_timestamp_ms = (
            int(self.start.time.timestamp() * 1000) if self.start.kind == "time" and self.start.time else None
        )
        self._assigned = False

    # ------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    # ------------------------------------------------------------------------------------ assignment
    def partitions(self, timeout_s: float = 10.0) -> list[int]:
        metadata = self._consumer.list_topics(self.topic, timeout=timeout_s)
        info = metadata.topics.get(self.topic)
        if info is None or info.error is not None or not info.partitions:
            reason = "not found" if info is None or info.error is None else info.error.str()
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {self.topic!r}: {reason}"))
        return sorted(info.partitions)

    def _start_offsets(self, partitions: list[int]) -> list[TopicPartition]:
        start = self.start
        if start.kind == "beginning":
            return [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions]
        if start.kind == "end":
            return [TopicPartition(self.topic, p, OFFSET_END) for p in partitions]
        if start.kind == "offset":
            return [
                TopicPartition(self.topic, p, start.offset if start.partition in (None, p) else OFFSET_END)
                for p in partitions
            ]
        if start.kind == "time":
            assert start.time is not None
            ms = int(start.time.timestamp() * 1000)
            found = self._consumer.offsets_for_times([TopicPartition(self.topic, p, ms) for p in partitions], 10.0)
            # -1: no record at or after that time in the partition, so start at its end.
            return [TopicPartition(self.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                    for tp in found]
        committed = self._consumer.committed([TopicPartition(self.topic, p) for p in partitions], timeout=10.0)
        return [TopicPartition(self.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                for tp in committed]

    def _assign(self) -> None:
        partitions = self.partitions()
        self._consumer.assign(self._start_offsets(partitions))
        self._remaining = set(partitions)
        self._assigned = True

    # ------------------------------------------------------------------------------------ reading
    @property
    def done(self) -> bool:
        """True once ``stop_at_end`` and every partition was read to its end."""
        return self.stop_at_end and self._assigned and not self._remaining

    def poll(self) -> list[Record]:
        """The next records (possibly none, after ``poll_timeout_s``); raises ``KafkaException`` on fatal errors."""
        if not self._assigned:
            self._assign()
        if self.done:
            return []
        records: list[Record] = []
        for message in self._consumer.consume(self.batch_size, self.poll_timeout_s):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    # Caught up with the high watermark of the fetch response (librdkafka sends it for
                    # empty partitions too, and after transaction markers, which are never delivered).
                    self._remaining.discard(message.partition())
                    continue
                if error.fatal() or not error.retriable():
                    raise KafkaException(error)
                continue
            if self._min_timestamp_ms is not None:
                kind, ts = message.timestamp()
                if kind != 0 and ts < self._min_timestamp_ms:
                    continue
            records.append(Record.from_message(message))
        return records

    def __iter__(self) -> Iterator[Record]:
        while not self.done:
            yield from self.poll()

    def commit(self, positions: Mapping[int, int]) -> None:
        """Commit ``{partition: next offset to read}`` for this reader's group, synchronously."""
        if self.group_id is None:
            raise ValueError("commit needs the reader to have a group_id")
        if positions:
            self._consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in sorted(positions.items())], asynchronous=False
            )
