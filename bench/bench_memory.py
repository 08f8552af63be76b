"""Image memory under a flood of large PNGs: peak RSS of `enrich run` against the image memory budget.

PNG has no draft mode, so before the streaming-core rebuild every in-flight event kept its full-size
pictures until it finished. Now every format is reduced to the model's size inside the decode call and
bodies/views in flight share ``ENRICH_IMAGE_MEMORY_BYTES``. This runs the real service (embedded tansu
broker, loopback image server, the demo bundle) on ``--products`` events with two ``--side``-pixel PNGs
each, sampling the process's RSS every 50 ms, once per budget, and prints a Markdown table.

    .venv/bin/python bench/bench_memory.py [--products 60] [--side 3000] [--budgets-mb 32 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

from consumer.devtools.demo import DEFAULT_CACHE, ensure_demo_bundle, ensure_sample_catalog
from consumer.devtools.embedded_broker import EmbeddedBroker, create_topics
from consumer.devtools.image_server import ImageServer
from consumer.devtools.produce import events_from_catalog, produce_jsonl
from models.catalog.kaggle import read_catalog


def rss_kb(pid: int) -> int | None:
    try:
        match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def run_once(broker: EmbeddedBroker, bundle: Path, events: list[dict], budget_mb: int) -> dict:
    run = f"mem-{budget_mb}-{time.time_ns()}"
    topics = [f"{run}.in", f"{run}.out", f"{run}.dlq"]
    create_topics(broker.bootstrap_servers, topics, partitions=1)
    port = 18000 + budget_mb % 1000
    env = {**os.environ, "ENRICH_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "ENRICH_INPUT_TOPIC": topics[0],
           "ENRICH_OUTPUT_TOPIC": topics[1], "ENRICH_DEAD_LETTER_TOPIC": topics[2], "ENRICH_GROUP_ID": run,
           "ENRICH_BUNDLE": str(bundle), "ENRICH_FETCH__ALLOW_LOOPBACK": "true", "ENRICH_HTTP_PORT": str(port),
           "ENRICH_IMAGE_MEMORY_BYTES": str(budget_mb * 1024 * 1024), "ENRICH_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "consumer", "run", "--idle-exit-s", "3"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ready(port) and proc.poll() is None:
        time.sleep(0.2)
    baseline = rss_kb(proc.pid) or 0
    started = time.perf_counter()
    produce_jsonl(broker.bootstrap_servers, topics[0], events)
    samples = []
    while proc.poll() is None:
        rss = rss_kb(proc.pid)
        samples += [rss] if rss else []
        time.sleep(0.05)
    return {"budget_mb": budget_mb, "baseline_mb": baseline / 1024, "peak_mb": max(samples, default=0) / 1024,
            "seconds": time.perf_counter() - started, "exit": proc.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--products", type=int, default=60)
    parser.add_argument("--side", type=int, default=3000)
    parser.add_argument("--budgets-mb", type=int, nargs="+", default=[32, 256])
    args = parser.parse_args()
    styles = ensure_sample_catalog(DEFAULT_CACHE)
    bundle = ensure_demo_bundle(DEFAULT_CACHE, styles)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gradient = Image.linear_gradient("L").resize((args.side, args.side)).convert("RGB")
        for i in range(2 * args.products):
            gradient.save(work / f"{i}.png", compress_level=1)
        with EmbeddedBroker() as broker, ImageServer(work) as server:
            events = events_from_catalog(read_catalog(styles)[: args.products], server.base_url)
            for i, e in enumerate(events):
                e["image_urls"] = [server.url_for(f"{2 * i}.png"), server.url_for(f"{2 * i + 1}.png")]
            rows = [run_once(broker, bundle, events, budget) for budget in args.budgets_mb]
    pixels_mb = 2 * args.products * args.side * args.side * 3 / 2**20
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.products} products x 2 PNGs of {args.side}x{args.side} ({pixels_mb:.0f} MB of decoded RGB in all)")
    print("\n| image memory budget | RSS before the flood | peak RSS | growth | seconds | exit |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['budget_mb']} MiB | {r['baseline_mb']:.0f} MB | {r['peak_mb']:.0f} MB | "
              f"{r['peak_mb'] - r['baseline_mb']:.0f} MB | {r['seconds']:.1f} | {r['exit']} |")


if __name__ == "__main__":
    main()
