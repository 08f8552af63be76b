"""The subscriber commands, ``enrich tail`` and ``enrich materialize``: ``register(app)`` adds them to a typer app.

Imports nothing of the service (no torch, no aiohttp), so they work with the base ``pip install enrich``.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import typer

__all__ = ["parse_since", "register"]

_DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

Bootstrap = Annotated[
    str,
    typer.Option("--bootstrap-servers", "-b", envvar="ENRICH_BOOTSTRAP_SERVERS", help="Kafka bootstrap servers."),
]
KafkaPassthrough = Annotated[
    list[str] | None,
    typer.Option("--kafka", "-X", help="Raw librdkafka setting KEY=VALUE (repeatable), e.g. -X security.protocol=SSL."),
]
OutputTopic = Annotated[
    str, typer.Option("--topic", envvar="ENRICH_OUTPUT_TOPIC", help="The enriched topic to read.")
]
Format = Annotated[
    str, typer.Option("--format", help="auto (a table on a terminal, JSON lines when piped), table or json.")
]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``2024-05-01T12:00:00Z`` (RFC 3339; a bare date means its midnight UTC) or a duration ago (``15m``, ``2h``)."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"expected an RFC 3339 time or a duration like 15m / 2h, got {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _kafka(pairs: list[str] | None) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--kafka")
        parsed[key.strip()] = value
    return parsed


def _where(pairs: list[str] | None) -> dict[str, str | None]:
    where: dict[str, str | None] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"expected ATTRIBUTE=VALUE, got {pair!r}", param_hint="--where")
        where[name.strip()] = None if value.strip() == "?" else value.strip()
    return where


def _format(value: str) -> Literal["auto", "table", "json"]:
    if value not in ("auto", "table", "json"):
        raise typer.BadParameter("expected auto, table or json", param_hint="--format")
    return value  # type: ignore[return-value]


def tail(
    bootstrap_servers: Bootstrap = _DEFAULT_BOOTSTRAP,
    topic: OutputTopic = "products.enriched",
    dead_letter: Annotated[
        bool, typer.Option("--dead-letter", help="Read the dead-letter topic (--dead-letter-topic) instead.")
    ] = False,
    dead_letter_topic: Annotated[
        str, typer.Option(envvar="ENRICH_DEAD_LETTER_TOPIC", help="The dead-letter topic.")
    ] = "products.dead-letter",
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest record.")] = False,
    since: Annotated[
        str | None, typer.Option(help="Start at the first record at or after this time: RFC 3339, or 15m / 2h ago.")
    ] = None,
    offset: Annotated[
        int | None, typer.Option(min=0, help="Start at this offset (every partition, or --partition).")
    ] = None,
    partition: Annotated[
        int | None, typer.Option(min=0, help="With --offset: only this partition starts there.")
    ] = None,
    product: Annotated[list[str] | None, typer.Option(help="Only this product id (repeatable).")] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(help="Only events predicting ATTRIBUTE=VALUE (repeatable; VALUE ? = unknown): color=red."),
    ] = None,
    attribute: Annotated[
        list[str] | None, typer.Option(help="Attributes to show and to apply the confidence bounds to (repeatable).")
    ] = None,
    min_confidence: Annotated[
        float | None, typer.Option(min=0, max=1, help="Only events with an attribute at or above this confidence.")
    ] = None,
    max_confidence: Annotated[
        float | None, typer.Option(min=0, max=1, help="Only events with an attribute below this confidence.")
    ] = None,
    max_records: Annotated[
        int | None, typer.Option("--max", "-n", min=1, help="Stop after N matching records.")
    ] = None,
    stop_at_end: Annotated[
        bool, typer.Option("--stop-at-end", help="Stop at the end offsets the topic had at start (default: follow).")
    ] = False,
    output: Format = "auto",
    kafka: KafkaPassthrough = None,
) -> None:
    """Print records of the enriched (or dead-letter) topic: from a time, an offset, the beginning or the end."""
    from consumer.subscribe.reader import Reader, Start
    from consumer.subscribe.tail import Filter, run_tail

    if sum((from_beginning, since is not None, offset is not None)) > 1:
        raise typer.BadParameter("choose one of --from-beginning, --since, --offset")
    if partition is not None and offset is None:
        raise typer.BadParameter("--partition goes with --offset", param_hint="--partition")
    if from_beginning:
        start = Start.beginning()
    elif since is not None:
        start = Start.at_time(parse_since(since))
    elif offset is not None:
        start = Start.at_offset(offset, partition)
    else:
        start = Start.end()
    keep = Filter(
        products=frozenset(product or ()),
        where=_where(where),
        attributes=tuple(attribute or ()),
        min_confidence=min_confidence,
        max_confidence=max_confidence,
    )
    name = dead_letter_topic if dead_letter else topic
    reader = Reader(bootstrap_servers, name, start=start, stop_at_end=stop_at_end, config=_kafka(kafka))
    try:
        run_tail(reader, keep, limit=max_records, output=_format(output))
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()


def materialize(
    sqlite: Annotated[
        Path, typer.Option(help="The SQLite database of current product attributes (created if absent).")
    ],
    facets: Annotated[
        bool, typer.Option("--facets", help="Only print facet counts (products per attribute value) from the database.")
    ] = False,
    attribute: Annotated[str | None, typer.Option(help="With --facets: only this attribute.")] = None,
    min_confidence: Annotated[
        float, typer.Option(min=0, max=1, help="With --facets: only values this confident.")
    ] = 0.0,
    bootstrap_servers: Bootstrap = _DEFAULT_BOOTSTRAP,
    topic: OutputTopic = "products.enriched",
    group_id: Annotated[
        str, typer.Option(help="Consumer group whose committed offsets say where to resume (one per database).")
    ] = "enrich-materialize",
    stop_at_end: Annotated[
        bool, typer.Option("--stop-at-end", help="Stop at the end offsets the topic had at start (default: follow).")
    ] = False,
    max_records: Annotated[int | None, typer.Option("--max", "-n", min=1, help="Stop after N records.")] = None,
    output: Format = "auto",
    kafka: KafkaPassthrough = None,
) -> None:
    """Keep the current attributes of every product in SQLite (newer-wins, deduplicated, deletes applied)."""
    from consumer.subscribe import materialize as mat

    as_json = _format(output) == "json" or (output == "auto" and not sys.stdout.isatty())
    conn = mat.open_db(sqlite)
    try:
        if facets:
            rows = mat.facets(conn, attribute, min_confidence=min_confidence)
            _print_facets(rows, as_json)
            return
        from consumer.subscribe.reader import Reader, Start

        reader = Reader(bootstrap_servers, topic, start=Start.committed(), group_id=group_id,
                        stop_at_end=stop_at_end, config=_kafka(kafka))
        stats = mat.Stats()
        try:
            stats = mat.materialize(reader, conn, max_records=max_records,
                                    on_batch=None if as_json else _progress)
        except KeyboardInterrupt:
            pass
        finally:
            reader.close()
        live = conn.execute("SELECT COUNT(*) FROM products WHERE deleted = 0").fetchone()[0]
        summary = {**vars(stats), "products": live}
        if as_json:
            sys.stdout.write(orjson.dumps(summary).decode() + "\n")
        else:
            typer.echo(", ".join(f"{k} {v}" for k, v in summary.items()), err=False)
    finally:
        conn.close()


def _progress(stats: Any) -> None:
    typer.echo(f"batch {stats.batches}: applied {stats.applied}, stale {stats.stale}, "
               f"duplicates {stats.duplicates}, skipped {stats.skipped}", err=True)


def _print_facets(rows: list[tuple[str, str, int]], as_json: bool) -> None:
    if as_json:
        for name, value, count in rows:
            sys.stdout.write(orjson.dumps({"attribute": name, "value": value, "products": count}).decode() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("attribute", "value", "products")
    for name, value, count in rows:
        table.add_row(name, value, str(count))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``tail`` and ``materialize`` to ``app`` (the ``enrich`` command)."""
    app.command("tail")(tail)
    app.command("materialize")(materialize)


def main() -> None:
    """``python -m consumer.subscribe``: the two commands alone, for an install without the service."""
    app = typer.Typer(name="enrich", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      help="Subscriber tools of enrich: read and materialize the enriched topic.")
    register(app)
    app()
