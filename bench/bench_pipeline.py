"""End-to-end pipeline benchmark: events/s, batch sizes and peak memory of the real service.

Runs `enrich demo`'s path (embedded tansu broker, loopback image server, demo bundle, the real consumer
service) at a few catalog sizes and prints a Markdown table for docs/benchmarks.md.

    .venv/bin/python bench/bench_pipeline.py [--sizes 100 300 600]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

from consumer.devtools.demo import DEFAULT_CACHE, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 600])
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        started = time.perf_counter()
        summary = run_demo(catalog=None, bundle=None, products=size, cache=DEFAULT_CACHE, show=0)
        rows.append((size, summary, time.perf_counter() - started))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"
    )
    print("\n| products | events | consumer s | events/s | mean image batch | mean text batch | wall s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size, s, wall in rows:
        events = s["events_in"]
        print(
            f"| {size} | {events} | {s['consumer_seconds']:.1f} | {s['events_per_second']:.1f} | "
            f"{s['batch_sizes'].get('image', 0):.1f} | {s['batch_sizes'].get('text', 0):.1f} | {wall:.1f} |"
        )
    print(f"\npeak RSS of the process: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
