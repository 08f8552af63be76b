"""Model throughput by batch size: why the consumer micro-batches, and what a CPU pod can sustain.

Loads a bundle (default: the demo bundle that ``make demo`` trains) and times ``Bundle.predict_images`` and
``Bundle.predict_texts`` (the exact calls the consumer's inference thread makes) at several batch sizes, plus
the image model under CPU bf16 autocast for comparison (the bundle keeps fp32 on CPU; see models/bundle.py).

    .venv/bin/python bench/bench_inference.py [--bundle DIR] [--batch-sizes 1 8 32] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
from PIL import Image

from consumer.devtools.demo import DEFAULT_CACHE
from consumer.ops.cpus import available_cpus
from models.bundle import Bundle

_TITLE = "Roadster Men Navy Blue Slim Fit Checked Casual Shirt - 100% cotton, machine wash, ships in 2 days"


def rate(fn: Callable[[], object], items: int, seconds: float) -> float:
    """Items per second of ``fn`` (which handles ``items`` items per call), after one warm-up call."""
    fn()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        calls += 1
    return calls * items / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(DEFAULT_CACHE / "demo-bundle"), help="model bundle directory")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [as enrich run: CPU quota]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or available_cpus())

    bundle = Bundle.load(args.bundle, device="auto")
    photo = Image.new("RGB", (600, 800), (30, 60, 120))
    views = bundle.image_views(photo)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__},"
          f" {torch.get_num_threads()} threads, device {bundle.device}")
    print(f"bundle: {bundle.manifest.get('name')} {bundle.manifest.get('version')}, image views {tuple(views.shape)}\n")
    print("| batch | images/s (fp32) | images/s (CPU bf16 autocast) | texts/s |")
    print("|---:|---:|---:|---:|")
    for b in args.batch_sizes:
        batch = [views] * b
        texts = [f"{_TITLE} #{i}" for i in range(b)]
        img = rate(lambda batch=batch, b=b: bundle.predict_images(batch, batch_size=b), b, args.seconds)
        x = torch.stack(batch)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            img_bf16 = rate(lambda x=x: bundle.image_model(x), b, args.seconds) if bundle.device.type == "cpu" else 0
        txt = rate(lambda texts=texts, b=b: bundle.predict_texts(texts, batch_size=b), b, args.seconds)
        print(f"| {b} | {img:.1f} | {img_bf16:.1f} | {txt:.1f} |")


if __name__ == "__main__":
    main()
