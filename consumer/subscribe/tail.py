"""``enrich tail``: filter records of the enriched or dead-letter topic and print them.

Readable rows on a terminal (a rich table, printed batch by batch so it streams), JSON lines when piped
(one :meth:`Record.to_json` object per line, which :meth:`Record.from_json` reads back as typed models).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Literal

import orjson
from rich.console import Console
from rich.table import Table

from consumer.subscribe.reader import Reader, Record
from schemas.models import DeadLetter, EnrichedEvent, Tombstone

__all__ = ["Filter", "render_table", "run_tail", "write_json_lines"]


@dataclass(frozen=True)
class Filter:
    """Which records to keep. Every condition given must hold.

    ``products``: the record's product id (in the payload, or the record key) is one of these.
    ``where``: ``{attribute: value}`` pairs the enriched event must predict (value compared
    case-insensitively; ``None`` matches "unknown").
    ``attributes``: the attributes ``min_confidence`` / ``max_confidence`` look at (default: those of
    ``where``, else all); an event passes when at least one of them is at or above ``min_confidence`` /
    below ``max_confidence``. Tombstones and dead letters pass only the product filter (they have no
    attributes): asking for attribute values or confidences drops them.
    """

    products: frozenset[str] = frozenset()
    where: dict[str, str | None] = field(default_factory=dict)
    attributes: tuple[str, ...] = ()
    min_confidence: float | None = None
    max_confidence: float | None = None
    include_undecodable: bool = True

    @property
    def _needs_attributes(self) -> bool:
        return bool(self.where) or self.min_confidence is not None or self.max_confidence is not None

    def __call__(self, record: Record) -> bool:
        event = record.event
        if event is None:
            return self.include_undecodable and not self.products and not self._needs_attributes
        if self.products and not self.products & _ids(record):
            return False
        if not self._needs_attributes:
            return True
        if not isinstance(event, EnrichedEvent):
            return False
        for name, wanted in self.where.items():
            prediction = event.attributes.get(name)
            if prediction is None:
                return False
            if wanted is None:
                if prediction.value is not None:
                    return False
            elif prediction.value is None or prediction.value.casefold() != wanted.casefold():
                return False
        names = self.attributes or tuple(self.where) or tuple(event.attributes)
        confidences = [event.attributes[n].confidence for n in names if n in event.attributes]
        if self.min_confidence is not None and not any(c >= self.min_confidence for c in confidences):
            return False
        return self.max_confidence is None or any(c < self.max_confidence for c in confidences)


def _ids(record: Record) -> set[str | None]:
    """The product id of the event and the record key as text (a dead letter's key is the input's key)."""
    key = None if record.key is None else record.key.decode("utf-8", "replace")
    return {key, None if record.event is None else record.event.product_id}


def _product_id(record: Record) -> str | None:
    if record.event is not None and record.event.product_id is not None:
        return record.event.product_id
    return None if record.key is None else record.key.decode("utf-8", "replace")


def write_json_lines(records: Iterable[Record], out: IO[str]) -> int:
    count = 0
    for record in records:
        out.write(orjson.dumps(record.to_json()).decode("utf-8") + "\n")
        count += 1
    out.flush()
    return count


def _summary(record: Record, attributes: tuple[str, ...]) -> tuple[str, str, str, str]:
    """(kind, product, model / reason, details) of one record, as text."""
    event = record.event
    if isinstance(event, EnrichedEvent):
        names = [n for n in attributes if n in event.attributes] if attributes else list(event.attributes)
        parts = []
        for name in names:
            p = event.attributes[name]
            parts.append(f"{name}={p.value if p.value is not None else '?'} ({p.confidence:.2f})")
        return "enriched", event.product_id, event.model.version[:12], ", ".join(parts)
    if isinstance(event, Tombstone):
        when = "" if event.updated_at is None else f"updated_at {event.updated_at.isoformat()}"
        return "deleted", event.product_id, "", when
    if isinstance(event, DeadLetter):
        src = event.source
        return "dead letter", event.product_id or "", event.reason, f"{src.topic}/{src.partition}@{src.offset}: " \
            + event.detail
    return "undecodable", _product_id(record) or "", "", record.error or ""


def render_table(records: list[Record], console: Console, *, header: bool, attributes: tuple[str, ...] = ()) -> None:
    table = Table(show_header=header, box=None, pad_edge=False, expand=False)
    table.add_column("partition:offset", width=16, no_wrap=True)
    table.add_column("kind", width=11, no_wrap=True)
    table.add_column("product", width=18, overflow="fold")
    table.add_column("model / reason", width=16, no_wrap=True)
    table.add_column("attributes / detail", overflow="fold")
    for record in records:
        kind, product, model, details = _summary(record, attributes)
        style = {"deleted": "yellow", "dead letter": "red", "undecodable": "red"}.get(kind)
        table.add_row(f"{record.partition}:{record.offset}", kind, product, model, details, style=style)
    console.print(table)


def _filtered(reader: Reader, keep: Filter, limit: int | None) -> Iterator[list[Record]]:
    shown = 0
    while not reader.done and (limit is None or shown < limit):
        batch = [r for r in reader.poll() if keep(r)]
        if limit is not None:
            batch = batch[: limit - shown]
        shown += len(batch)
        if batch:
            yield batch


def run_tail(
    reader: Reader,
    keep: Filter,
    *,
    limit: int | None = None,
    output: Literal["auto", "table", "json"] = "auto",
    out: IO[str] | None = None,
) -> int:
    """Print the records that pass ``keep`` until ``limit`` were shown or the reader is done; returns the count."""
    out = out or sys.stdout
    as_json = output == "json" or (output == "auto" and not out.isatty())
    count = 0
    console = None if as_json else Console(file=out)
    for batch in _filtered(reader, keep, limit):
        if console is None:
            count += write_json_lines(batch, out)
        else:
            render_table(batch, console, header=count == 0, attributes=keep.attributes or tuple(keep.where))
            count += len(batch)
    return count
