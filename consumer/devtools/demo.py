"""``enrich demo``: the whole pipeline end to end on one machine, then a summary a person can read.

It starts everything it needs (an embedded tansu broker, a loopback image server over a catalog, a model
bundle trained by ``enrich train`` on first use and cached), produces product events (with a few broken
image URLs, invalid events and deletes mixed in, as real vendor feeds have), runs the real consumer service
until every event is accounted for, reads the output and dead-letter topics back, and compares the
enriched attributes with the catalog's labels. Everything it started is stopped at the end.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from consumer.devtools.embedded_broker import EmbeddedBroker, create_topics
from consumer.devtools.image_server import ImageServer
from consumer.devtools.produce import events_from_catalog, produce_jsonl
from consumer.ops.settings import FetchSettings, Settings

console = Console()

DEFAULT_CACHE = Path(".cache/enrich")
SAMPLE_PRODUCTS = 600
SAMPLE_SEED = 7


@dataclass
class DemoPlan:
    """The events the demo sends and what it expects back."""

    events: list[bytes]
    labels: dict[str, dict[str, str]]  # product_id -> attribute -> label
    valid: int = 0
    invalid: int = 0
    deletes: int = 0
    broken_images: int = 0
    expected_reasons: Counter[str] = field(default_factory=Counter)


def ensure_sample_catalog(cache: Path) -> Path:
    from models.catalog.synthetic import generate_catalog

    styles = cache / "sample-catalog" / "styles.csv"
    if not styles.is_file():
        with console.status("generating the synthetic sample catalog"):
            generate_catalog(styles.parent, n_products=SAMPLE_PRODUCTS, seed=SAMPLE_SEED)
    return styles


def ensure_demo_bundle(cache: Path, styles: Path) -> Path:
    """The cached demo bundle, (re)trained when missing or made by another demo configuration.

    Why the key file: a checkout updated after its first ``make demo`` would otherwise keep serving a bundle
    that lacks what the new training code adds (``models.train.demo_bundle_key`` changes with it).
    """
    from models.train import demo_bundle_key, train_demo_bundle

    bundle = cache / "demo-bundle"
    key_file = cache / "demo-bundle.key"
    key = demo_bundle_key()
    exists = (bundle / "manifest.json").is_file()
    stale = exists and (not key_file.is_file() or key_file.read_text().strip() != key)
    if stale or not exists:
        why = "the demo configuration changed" if stale else "first run only"
        console.print(f"[bold]training the demo model bundle[/] ({why}; `enrich train` on the sample catalog)")
        started = time.perf_counter()
        train_demo_bundle(styles, bundle)
        key_file.write_text(key + "\n")
        console.print(f"demo bundle trained in {time.perf_counter() - started:.0f}s -> {bundle}")
    return bundle


def plan_events(styles: Path, base_url: str, n_products: int, seed: int) -> DemoPlan:
    """Events from the catalog, with the faults a real feed has: broken image URLs, invalid events, deletes."""
    from models.catalog.kaggle import read_catalog

    rng = random.Random(seed)
    products = read_catalog(styles)
    rng.shuffle(products)
    products = products[:n_products]
    events = events_from_catalog(products, base_url)
    plan = DemoPlan(events=[], labels={p.id: dict(p.labels) for p in products})
    for event in events:
        if event["image_urls"] and rng.random() < 0.05:
            event["image_urls"] = [base_url + f"/images/missing-{event['product_id']}.jpg"]
            plan.broken_images += 1
        plan.events.append(orjson.dumps(event))
        plan.valid += 1
    for event in rng.sample(events, k=max(1, len(events) // 100)):
        delete = {k: event[k] for k in ("retailer", "product_id", "updated_at")}
        delete |= {"event_id": event["event_id"] + "-delete", "op": "delete"}
        plan.events.append(orjson.dumps(delete))
        plan.deletes += 1
    bad = [
        (b"{not json", "not_json"),
        (orjson.dumps({"op": "upsert", "title": "no ids"}), "schema_violation"),
        (b"\xff\xfe\x00garbage", "not_utf8"),
    ]
    for raw, reason in bad:
        plan.events.insert(rng.randrange(len(plan.events)), raw)
        plan.invalid += 1
        plan.expected_reasons[reason] += 1
    return plan


async def _run_service(settings: Settings, total: int) -> tuple[Any, float]:
    from consumer.service import EnrichService

    service = EnrichService(settings)
    started = time.perf_counter()
    task = asyncio.create_task(service.run(install_signal_handlers=False))
    with Progress(
        TextColumn("[bold]enriching"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("events", total=total, detail="loading model")
        while not task.done():
            c = service.counts
            done = c["enriched"] + c["tombstones"] + c["dead_lettered"] + c["skipped"]
            detail = f"out {c['enriched']}  tombstones {c['tombstones']}  dead-lettered {c['dead_lettered']}"
            progress.update(bar, completed=done, detail=detail if service.health.model_loaded else "loading model")
            await asyncio.sleep(0.2)
        c = service.counts
        progress.update(bar, completed=c["enriched"] + c["tombstones"] + c["dead_lettered"] + c["skipped"])
    exit_code = await task
    if exit_code != 0:
        raise RuntimeError(f"the consumer service exited with {exit_code}")
    return service, time.perf_counter() - started


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """Read a topic from the beginning until ``expected`` messages arrived (or the timeout)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"demo-reader-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                messages.append(msg)
    finally:
        consumer.close()
    return messages


def agreement(enriched: list[dict[str, Any]], labels: dict[str, dict[str, str]]) -> dict[str, dict[str, float]]:
    """Per attribute: coverage (a value was given) and agreement with the catalog label where given."""
    stats: dict[str, Counter[str]] = {}
    for event in enriched:
        truth = labels.get(event["product_id"], {})
        for attr, pred in event["attributes"].items():
            if attr not in truth:
                continue
            counter = stats.setdefault(attr, Counter())
            counter["n"] += 1
            if pred is not None and pred.get("value") is not None:
                counter["covered"] += 1
                counter["agree"] += pred["value"].lower() == truth[attr].lower()
    return {
        attr: {
            "n": c["n"],
            "coverage": c["covered"] / c["n"] if c["n"] else 0.0,
            "agreement": c["agree"] / c["covered"] if c["covered"] else 0.0,
        }
        for attr, c in sorted(stats.items())
    }


def run_demo(
    *,
    catalog: Path | None,
    bundle: Path | None,
    products: int,
    cache: Path = DEFAULT_CACHE,
    partitions: int = 3,
    seed: int = 7,
    show: int = 3,
) -> dict[str, Any]:
    """Run the demo; returns the summary (also printed)."""
    from consumer.ops.logs import configure_logging

    configure_logging("ERROR", "console")  # expected dead letters are in the summary, not in the log
    wall_start = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    styles = catalog or ensure_sample_catalog(cache)
    bundle_dir = bundle or ensure_demo_bundle(cache, styles)
    with EmbeddedBroker() as broker, ImageServer(styles.parent / "images") as images:
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            input_topic="demo.products",
            output_topic="demo.products.enriched",
            dead_letter_topic="demo.products.dead-letter",
            group_id="enrich-demo",
            bundle=bundle_dir,
            http_port=0,
            log_format="console",
            log_level="WARNING",
            fetch=FetchSettings(allow_loopback=True),
            commit_interval_s=0.5,
            # tansu holds a new member's group join far longer with librdkafka's default session timeout
            # (45 s); one member on loopback needs no slack. Measured: the demo's consumer finished in 35 s
            # with the default, 22-25 s with these
            kafka={"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"},
        )
        create_topics(
            broker.bootstrap_servers,
            [settings.input_topic, settings.output_topic, settings.dead_letter_topic],
            partitions=partitions,
        )
        console.print(
            f"broker [bold]{broker.bootstrap_servers}[/]  images [bold]{images.base_url}[/]  "
            f"bundle [bold]{bundle_dir}[/]"
        )
        plan = plan_events(styles, images.base_url, products, seed)
        with tempfile.TemporaryDirectory() as tmp:
            feed = Path(tmp) / "events.jsonl"
            feed.write_bytes(b"\n".join(plan.events) + b"\n")
            produce_jsonl(broker.bootstrap_servers, settings.input_topic, feed)
        total = len(plan.events)
        console.print(
            f"produced {total} events ({plan.valid} upserts, {plan.deletes} deletes, "
            f"{plan.invalid} invalid; {plan.broken_images} upserts with a broken image URL)"
        )
        settings.stop_after = total
        service, elapsed = asyncio.run(_run_service(settings, total))
        # a delete that arrives while its product's upsert is still in flight supersedes it (no output)
        expected_outputs = plan.valid + plan.deletes - service.counts["skipped"]
        outputs = read_topic(broker.bootstrap_servers, settings.output_topic, expected_outputs)
        dead = read_topic(broker.bootstrap_servers, settings.dead_letter_topic, plan.invalid)
    enriched = [orjson.loads(m.value()) for m in outputs if m.value() is not None]
    summary = {
        "events_in": service.counts["in"],
        "enriched": len(enriched),
        "tombstones": sum(m.value() is None for m in outputs),
        "superseded_or_stale": service.counts["skipped"],
        "dead_lettered": len(dead),
        "dead_letter_reasons": dict(Counter(orjson.loads(m.value())["reason"] for m in dead)),
        "images_ok": service.counts["images_ok"],
        "images_failed": service.counts["images_failed"],
        "consumer_seconds": elapsed,
        "events_per_second": total / elapsed if elapsed else 0.0,
        "wall_seconds": time.perf_counter() - wall_start,
        "agreement": agreement(enriched, plan.labels),
        "model": enriched[0]["model"] if enriched else None,
        "batch_sizes": {
            name: _mean(sizes)
            for name, sizes in (service.enricher.batch_sizes if service.enricher else {}).items()
        },
    }
    _print_summary(summary, _examples(enriched, show))
    missing = expected_outputs - len(outputs)
    if missing or len(dead) != plan.invalid:
        raise RuntimeError(f"demo incomplete: {missing} outputs missing, {len(dead)}/{plan.invalid} dead letters")
    return summary


def _examples(enriched: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """A few telling events: one enriched from image and text, one whose image failed, then the rest."""
    with_image = [e for e in enriched if "image" in e["modalities"]]
    failed_image = [e for e in enriched if any(i["status"] != "ok" for i in e["images"])]
    picks = with_image[:1] + failed_image[:1] + with_image[1:]
    return picks[:count]


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def _print_summary(summary: dict[str, Any], examples: list[dict[str, Any]]) -> None:
    table = Table(title="enrich demo", show_header=False)
    table.add_row("events in", str(summary["events_in"]))
    table.add_row("enriched / tombstones", f"{summary['enriched']} / {summary['tombstones']}")
    table.add_row("dead-lettered", f"{summary['dead_lettered']} {summary['dead_letter_reasons']}")
    table.add_row("superseded / stale (no output)", str(summary["superseded_or_stale"]))
    table.add_row("images ok / failed", f"{summary['images_ok']} / {summary['images_failed']}")
    table.add_row(
        "consumer throughput",
        f"{summary['events_per_second']:.1f} events/s ({summary['consumer_seconds']:.1f}s incl. model load)",
    )
    table.add_row("mean batch size", ", ".join(f"{k} {v:.1f}" for k, v in summary["batch_sizes"].items()))
    if summary["model"]:
        table.add_row("model", f"{summary['model']['name']} {summary['model']['version'][:12]}")
    table.add_row("wall time", f"{summary['wall_seconds']:.1f}s")
    console.print(table)
    agree = Table(title="agreement with the catalog's labels (where a value cleared its threshold)")
    for column in ("attribute", "products", "coverage", "agreement"):
        agree.add_column(column, justify="left" if column == "attribute" else "right")
    for attr, row in summary["agreement"].items():
        agree.add_row(attr, str(row["n"]), f"{row['coverage']:.1%}", f"{row['agreement']:.1%}")
    console.print(agree)
    for event in examples:
        compact = {
            "product_id": event["product_id"],
            "modalities": event["modalities"],
            "images": [{"status": i["status"], "reason": i["reason"]} for i in event["images"]],
            "attributes": {a: (p or {}).get("value") for a, p in event["attributes"].items()},
            "confidence": {a: round((p or {}).get("confidence", 0.0), 2) for a, p in event["attributes"].items()},
            "event_id": event["event_id"],
        }
        console.print_json(orjson.dumps(compact).decode())
