"""A reference materializer: the enriched topic -> the current attributes of every product, in SQLite.

Short on purpose, so a team can copy it into its own indexer. The rules it follows (docs/subscribing.md):

1. **Newer wins by the source's own order, never by arrival order.** A version replaces the stored one only
   if :func:`is_newer` says so: a later source ``updated_at``; at the same ``updated_at``, a later source
   offset in the same input partition; at the same input record (a replay with a new model), the later
   ``enriched_at``. A redelivered or replayed *older* version that arrives late changes nothing.
2. **Deduplicate by ``event_id``.** An id already seen is skipped (counted as a duplicate).
3. **Tombstones delete.** The product's attributes go, but its row stays as a *deletion marker* with the
   delete's ``updated_at``, so an older upsert arriving after the delete cannot bring the product back.
4. **Offsets are committed after the transaction.** Each batch is applied in one SQLite transaction; only
   after it commits are the Kafka offsets committed. A crash in between re-reads the batch, which rules 1-2
   make harmless (applying a batch twice gives the same database).

```python
conn = open_db("catalog.sqlite")
with Reader(bootstrap, "products.enriched", start=Start.committed(), group_id="search-indexer") as reader:
    materialize(reader, conn)              # until reader.done, or forever when following
facets(conn, "color")                      # [("color", "navy blue", 41), ...]
```
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from consumer.subscribe.reader import Reader, Record
from schemas.models import EnrichedEvent, SourceCoordinates, Tombstone, canonical_timestamp

__all__ = ["Stats", "Version", "apply", "facets", "is_newer", "materialize", "open_db", "product"]

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS products (
    product_id    TEXT PRIMARY KEY,
    deleted       INTEGER NOT NULL,   -- 1: deletion marker (keeps updated_at so late older upserts lose)
    updated_at    TEXT,               -- source updated_at, UTC, fixed width: text order = time order
    src_topic     TEXT,
    src_partition INTEGER,
    src_offset    INTEGER,
    enriched_at   TEXT,
    event_id      TEXT,
    retailer      TEXT,
    model_name    TEXT,
    model_version TEXT,
    attributes    TEXT                -- the event's attributes object, JSON
);
CREATE TABLE IF NOT EXISTS attribute_values (   -- one row per (live product, attribute): facets, filters
    product_id TEXT NOT NULL,
    attribute  TEXT NOT NULL,
    value      TEXT,                  -- NULL: below the threshold ("unknown")
    confidence REAL NOT NULL,
    PRIMARY KEY (product_id, attribute)
);
CREATE INDEX IF NOT EXISTS attribute_values_facet ON attribute_values (attribute, value);
CREATE TABLE IF NOT EXISTS seen_events (event_id TEXT PRIMARY KEY);
"""


@dataclass(frozen=True)
class Version:
    """What newer-wins compares: the source's ``updated_at``, its coordinates and the enrichment time."""

    updated_at: str | None  # canonical_timestamp() text
    source: SourceCoordinates | None
    enriched_at: str | None = None
    deleted: bool = False


def is_newer(candidate: Version, current: Version) -> bool:
    """True when ``candidate`` should replace ``current``. Deterministic: arrival order never decides.

    Offsets are only comparable within one input partition. A version missing ``updated_at`` (a tombstone
    from a producer that did not send ``enrich.updated_at``) is ordered by offsets alone when it can be, and
    otherwise applied (the only information left is that it came later).
    """
    both_dated = candidate.updated_at is not None and current.updated_at is not None
    if both_dated and candidate.updated_at != current.updated_at:
        return candidate.updated_at > current.updated_at  # type: ignore[operator]
    same_partition = (
        candidate.source is not None
        and current.source is not None
        and (candidate.source.topic, candidate.source.partition) == (current.source.topic, current.source.partition)
    )
    if same_partition and candidate.source.offset != current.source.offset:  # type: ignore[union-attr]
        return candidate.source.offset > current.source.offset  # type: ignore[union-attr]
    if candidate.updated_at is None or current.updated_at is None:
        return not same_partition  # unordered: take it; same input record: keep what is there
    if candidate.deleted != current.deleted:
        return candidate.deleted  # an upsert and a delete at the same instant in different partitions
    if candidate.enriched_at is not None and current.enriched_at is not None:
        return candidate.enriched_at > current.enriched_at  # same input, re-enriched (a replay): later wins
    return False


@dataclass
class Stats:
    applied: int = 0      # upserts and deletes that changed the database
    stale: int = 0        # older than what is stored: ignored
    duplicates: int = 0   # event_id already applied
    skipped: int = 0      # undecodable, dead letters, or another schema: not product state
    batches: int = 0


def open_db(path: str | Path) -> sqlite3.Connection:
    """Open (and create) the materialized catalog. ``isolation_level=None``: transactions are explicit."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA_SQL)
    return conn


def _stored(conn: sqlite3.Connection, product_id: str) -> Version | None:
    row = conn.execute(
        "SELECT updated_at, src_topic, src_partition, src_offset, enriched_at, deleted FROM products"
        " WHERE product_id = ?",
        (product_id,),
    ).fetchone()
    if row is None:
        return None
    source = None if row[1] is None else SourceCoordinates(topic=row[1], partition=row[2], offset=row[3])
    return Version(row[0], source, row[4], bool(row[5]))


def apply(conn: sqlite3.Connection, record: Record, stats: Stats) -> None:
    """Apply one record inside the caller's transaction (rules 1-3 of the module docstring)."""
    event = record.event
    if not isinstance(event, EnrichedEvent | Tombstone):
        stats.skipped += 1
        return
    if event.event_id is not None:
        if conn.execute("SELECT 1 FROM seen_events WHERE event_id = ?", (event.event_id,)).fetchone():
            stats.duplicates += 1
            return
        conn.execute("INSERT INTO seen_events (event_id) VALUES (?)", (event.event_id,))
    updated_at = None if event.updated_at is None else canonical_timestamp(event.updated_at)
    source = SourceCoordinates(topic=event.source.topic, partition=event.source.partition,
                               offset=event.source.offset) if event.source is not None else None
    enriched_at = canonical_timestamp(event.enriched_at) if isinstance(event, EnrichedEvent) else None
    candidate = Version(updated_at, source, enriched_at, isinstance(event, Tombstone))
    current = _stored(conn, event.product_id)
    if current is not None and not is_newer(candidate, current):
        stats.stale += 1
        return
    coords = (None, None, None) if source is None else (source.topic, source.partition, source.offset)
    conn.execute("DELETE FROM attribute_values WHERE product_id = ?", (event.product_id,))
    if isinstance(event, Tombstone):
        conn.execute(
            "INSERT OR REPLACE INTO products VALUES (?, 1, ?, ?, ?, ?, NULL, ?, NULL, NULL, NULL, NULL)",
            (event.product_id, updated_at, *coords, event.event_id),
        )
    else:
        attributes = {name: p.model_dump(mode="json") for name, p in event.attributes.items()}
        conn.execute(
            "INSERT OR REPLACE INTO products VALUES (?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event.product_id, updated_at, *coords, enriched_at, event.event_id, event.retailer,
             event.model.name, event.model.version, json.dumps(attributes)),
        )
        conn.executemany(
            "INSERT INTO attribute_values VALUES (?, ?, ?, ?)",
            [(event.product_id, name, p.value, p.confidence) for name, p in event.attributes.items()],
        )
    stats.applied += 1


def materialize(
    reader: Reader,
    conn: sqlite3.Connection,
    *,
    max_records: int | None = None,
    on_batch: Callable[[Stats], None] | None = None,
) -> Stats:
    """Apply ``reader``'s records batch by batch: one SQLite transaction per batch, then a Kafka commit.

    Runs until the reader is done (``stop_at_end``), ``max_records`` were read, or forever. The reader needs
    a ``group_id`` (its committed offsets are where the next run resumes).
    """
    stats = Stats()
    seen = 0
    while not reader.done and (max_records is None or seen < max_records):
        records = reader.poll()
        if max_records is not None:
            records = records[: max_records - seen]
        if not records:
            continue
        seen += len(records)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for record in records:
                apply(conn, record, stats)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        # Only now: a crash before this line re-reads the batch, which applying twice makes harmless.
        positions: dict[int, int] = {}
        for record in records:
            positions[record.partition] = max(positions.get(record.partition, 0), record.offset + 1)
        reader.commit(positions)
        stats.batches += 1
        if on_batch is not None:
            on_batch(stats)
    return stats


def facets(
    conn: sqlite3.Connection, attribute: str | None = None, *, min_confidence: float = 0.0
) -> list[tuple[str, str, int]]:
    """Products per attribute value, ``(attribute, value, count)``, most frequent first within an attribute.

    Only live products and known values (not ``null``) count; ``min_confidence`` narrows to confident ones.
    """
    sql = (
        "SELECT attribute, value, COUNT(*) FROM attribute_values WHERE value IS NOT NULL AND confidence >= ?"
        + (" AND attribute = ?" if attribute is not None else "")
        + " GROUP BY attribute, value ORDER BY attribute, COUNT(*) DESC, value"
    )
    params: tuple[object, ...] = (min_confidence,) if attribute is None else (min_confidence, attribute)
    return [(a, v, n) for a, v, n in conn.execute(sql, params)]


def product(conn: sqlite3.Connection, product_id: str) -> dict[str, str | None] | None:
    """``{attribute: value}`` of a live product, or None when unknown or deleted."""
    row = conn.execute("SELECT attributes FROM products WHERE product_id = ? AND deleted = 0", (product_id,)).fetchone()
    if row is None:
        return None
    return {name: p["value"] for name, p in json.loads(row[0]).items()}
