"""``enrich replay --dry-run --compare-to <bundle DIR | enriched topic>``: what a replay would change.

Nothing is produced and nothing is committed. The replay's inputs (the plan's: the newest input of each
product in the range, :mod:`.plan`) are enriched by the new bundle with the real enricher (images fetched,
both models run), and compared, product by product and attribute by attribute, with

* another bundle run on the same inputs (``--compare-to DIR``), or
* the latest record per product of an enriched topic (``--compare-to TOPIC``): what readers see now.

The report counts, per attribute, the products whose value would change, each (old value, new value) pair,
and the changes from a value to ``null`` (below the threshold) and from ``null`` to a value; as a table on
the terminal, JSON and a PNG plot (:func:`write_report`). It is the check an ML team runs before a rollout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from consumer.ops.logs import get_logger
from consumer.ops.settings import Settings
from consumer.replay.plan import ReplayPlan, scan
from consumer.stages.enricher import Enricher
from consumer.stages.events import SourceCoordinates
from consumer.stages.outputs import Enriched, Tombstone

log = get_logger("enrich.replay.compare")

#: per product: {attribute: value or None}, or None for a deleted product (tombstone)
State = dict[str, dict[str, str | None] | None]


def _reader(kafka: dict[str, Any]) -> Consumer:
    return Consumer({
        **kafka, "group.id": f"enrich-replay-dry-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "enable.partition.eof": True, "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })


def read_inputs(kafka: dict[str, Any], plan: ReplayPlan, timeout_s: float = 600.0
                ) -> list[tuple[SourceCoordinates, bytes | None]]:
    """The plan's inputs to replay, read from the input topic."""
    consumer = _reader(kafka)
    todo = {p for p in plan.start if plan.end[p] > plan.start[p]}
    out = []
    try:
        if todo:
            consumer.assign([TopicPartition(plan.topic, p, plan.start[p]) for p in sorted(todo)])
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                err, p = msg.error(), msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(p)
                    elif err.fatal():
                        raise KafkaException(err)
                    continue
                if msg.offset() >= plan.end[p] - 1:
                    todo.discard(p)
                if (p, msg.offset()) in plan.keep:
                    kind, ts = msg.timestamp()
                    out.append((SourceCoordinates(topic=plan.topic, partition=p, offset=msg.offset(),
                                                  timestamp_ms=ts if kind else None, key=msg.key()), msg.value()))
    finally:
        consumer.close()
    return out


def _attributes(value: bytes) -> dict[str, str | None]:
    body = orjson.loads(value)
    return {a: (p or {}).get("value") for a, p in (body.get("attributes") or {}).items()}


def read_latest(kafka: dict[str, Any], topic: str, timeout_s: float = 600.0) -> tuple[State, Counter[str]]:
    """The latest record per product (key) of an enriched topic, and how many carry each model version."""
    consumer = _reader(kafka)
    latest: dict[str, bytes | None] = {}
    try:
        info = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if info is None or info.error is not None:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic!r} not found"))
        todo = set(info.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(todo)])
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(msg.partition())
                    continue
                if msg.key() is not None:
                    latest[msg.key().decode("utf-8", "replace")] = msg.value()
    finally:
        consumer.close()
    versions: Counter[str] = Counter()
    state: State = {}
    for product, value in latest.items():
        if value is None:
            state[product] = None
            continue
        body = orjson.loads(value)
        versions[str((body.get("model") or {}).get("version"))] += 1
        state[product] = _attributes(value)
    return state, versions


async def enrich_all(bundle: Any, settings: Settings, inputs: list[tuple[SourceCoordinates, bytes | None]],
                     concurrency: int = 64) -> tuple[State, int]:
    """Run the real enricher over the inputs; returns the state per product and the count of invalid ones."""
    state: State = {}
    invalid = 0
    gate = asyncio.Semaphore(concurrency)
    async with Enricher(bundle, settings) as enricher:

        async def one(source: SourceCoordinates, raw: bytes | None) -> None:
            nonlocal invalid
            parsed = enricher.parse(raw, source)
            if not hasattr(parsed, "product_id"):
                invalid += 1
                return
            async with gate:
                out = await enricher.handle(parsed, source)  # type: ignore[arg-type]
            if isinstance(out, Tombstone):
                state[out.key] = None
            elif isinstance(out, Enriched):
                state[out.key] = _attributes(out.value)

        await asyncio.gather(*(one(s, r) for s, r in inputs))
    return state, invalid


def compare(old: State, new: State) -> dict[str, Any]:
    """Per attribute: products changed, (old, new) pairs, value->null, null->value."""
    attrs: dict[str, dict[str, Any]] = {}
    pairs: dict[str, Counter[tuple[str | None, str | None]]] = {}
    products = {"replayed": len(new), "compared": 0, "changed": 0, "missing_in_baseline": 0,
                "deleted_in_both": 0, "would_delete": 0, "would_undelete": 0}
    for product in sorted(new):
        n = new[product]
        if product not in old:
            products["missing_in_baseline"] += 1
            continue
        o = old[product]
        if n is None or o is None:
            key = "deleted_in_both" if n is None and o is None else "would_delete" if n is None else "would_undelete"
            products[key] += 1
            continue
        products["compared"] += 1
        changed = False
        for attr in sorted(set(n) | set(o)):
            a = attrs.setdefault(attr, {"changed": 0, "value_to_value": 0, "value_to_null": 0, "null_to_value": 0})
            before, after = o.get(attr), n.get(attr)
            if before == after:
                continue
            changed = True
            a["changed"] += 1
            kind = "value_to_null" if after is None else "null_to_value" if before is None else "value_to_value"
            a[kind] += 1
            pairs.setdefault(attr, Counter())[(before, after)] += 1
        products["changed"] += changed
    for attr, a in attrs.items():
        a["pairs"] = [{"old": o, "new": n, "count": c}
                      for (o, n), c in sorted(pairs.get(attr, Counter()).items(),
                                              key=lambda kv: (-kv[1], str(kv[0][0]), str(kv[0][1])))]
    return {"products": products, "attributes": dict(sorted(attrs.items()))}


async def dry_run(settings: Settings, compare_to: str, *, from_ms: int | None, to_ms: int | None) -> dict[str, Any]:
    from consumer.replay.runner import load_bundle

    kafka = settings.kafka_common()
    plan = await asyncio.to_thread(scan, kafka, settings.input_topic, from_ms=from_ms, to_ms=to_ms)
    inputs = await asyncio.to_thread(read_inputs, kafka, plan)
    log.info("dry run: enriching the replay's inputs", inputs=len(inputs), **plan.to_json())
    bundle = await asyncio.to_thread(load_bundle, settings)
    new, invalid = await enrich_all(bundle, settings, inputs)
    baseline: dict[str, Any]
    if Path(compare_to).is_dir():
        other = await asyncio.to_thread(load_bundle, settings.model_copy(update={"bundle": Path(compare_to)}))
        old, _ = await enrich_all(other, settings, inputs)
        baseline = {"kind": "bundle", "path": compare_to, "name": other.name, "version": other.version}
    else:
        old, versions = await asyncio.to_thread(read_latest, kafka, compare_to)
        baseline = {"kind": "topic", "topic": compare_to, "model_versions": dict(versions)}
    report = compare(old, new)
    report.update(new={"name": bundle.name, "version": bundle.version, "path": str(settings.bundle)},
                  baseline=baseline, plan=plan.to_json(), invalid_inputs=invalid)
    log.info("dry run report", products=report["products"],
             changed={a: r["changed"] for a, r in report["attributes"].items()})
    return report


# ------------------------------------------------------------------------------------------ output
def print_table(report: dict[str, Any], console: Any = None, top: int = 8) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    p = report["products"]
    base = report["baseline"]
    console.print(f"dry run: {report['new']['name']} {report['new']['version']} vs "
                  f"{base.get('version') or base.get('topic')}: {p['compared']} products compared, "
                  f"{p['changed']} would change ({p['missing_in_baseline']} not in the baseline, "
                  f"{p['would_delete']} would be deleted, {p['would_undelete']} undeleted)")
    table = Table(title="changes per attribute")
    for col in ("attribute", "changed", "value -> value", "value -> null", "null -> value", "top (old -> new)"):
        table.add_column(col, justify="left" if col in ("attribute", "top (old -> new)") else "right")
    for attr, a in report["attributes"].items():
        tops = ", ".join(f"{x['old']} -> {x['new']} ({x['count']})" for x in a["pairs"][:top])
        table.add_row(attr, str(a["changed"]), str(a["value_to_value"]), str(a["value_to_null"]),
                      str(a["null_to_value"]), tops)
    console.print(table)


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """``compare.json`` and ``compare.png`` (changes per attribute, stacked by kind) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "compare.json"
    json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    attrs = list(report["attributes"])
    fig, ax = plt.subplots(figsize=(8, 0.5 * max(3, len(attrs)) + 1.5))
    left = [0] * len(attrs)
    for kind, colour in (("value_to_value", "#4477aa"), ("value_to_null", "#ee6677"), ("null_to_value", "#228833")):
        counts = [report["attributes"][a][kind] for a in attrs]
        ax.barh(attrs, counts, left=left, color=colour, label=kind.replace("_", " "))
        left = [x + c for x, c in zip(left, counts, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel(f"products that would change (of {report['products']['compared']} compared)")
    base = report["baseline"].get("version") or report["baseline"].get("topic")
    ax.set_title(f"{report['new']['version']} vs {base}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    png_path = out_dir / "compare.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [json_path, png_path]
