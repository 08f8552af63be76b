"""Image fetch + decode benchmark on loopback: what JPEG draft mode buys, and fetcher throughput.

Two measurements, printed as Markdown:

1. decode only: a vendor-sized JPEG decoded at full size vs. with ``draft_size`` (JPEG DCT scaling);
2. end to end: N concurrent fetches from a loopback aiohttp server through the real ``ImageFetcher``
   (SSRF guard, byte cap, decode in a thread pool), with and without draft mode.

    .venv/bin/python bench/bench_fetch.py [--size 2000] [--images 200] [--draft 224]

Only loopback traffic: the fetcher runs with ``allow_loopback=True`` against a server this script starts.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from PIL import Image

from consumer.ops.settings import FetchSettings
from consumer.stages.decode import decode_image
from consumer.stages.fetch import ImageFetcher

FORMATS = ["JPEG", "PNG", "WEBP", "GIF"]


def make_jpeg(side: int) -> bytes:
    """A photo-like JPEG (gradient plus noise, so the DCT has real work) of side x side pixels."""
    base = Image.linear_gradient("L").resize((side, side))
    noise = Image.effect_noise((side, side), 40)
    im = Image.merge("RGB", (base, noise, Image.blend(base, noise, 0.5)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def time_decode(data: bytes, draft: tuple[int, int] | None, repeat: int = 5) -> tuple[float, tuple[int, int]]:
    """Median seconds per decode, and the decoded size."""
    times = []
    size = (0, 0)
    for _ in range(repeat):
        started = time.perf_counter()
        im = decode_image(data, allowed_formats=FORMATS, max_pixels=40_000_000, draft_size=draft)
        times.append(time.perf_counter() - started)
        size = im.size
    return statistics.median(times), size


async def fetch_many(data: bytes, n: int, draft: tuple[int, int] | None) -> tuple[float, int]:
    """Seconds to fetch and decode ``n`` images concurrently through ImageFetcher, and how many were ok."""

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=data, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/{name}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = FetchSettings(allow_loopback=True, max_bytes=max(len(data) + 1, 8 * 1024 * 1024))
    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            async with ImageFetcher(settings, draft_size=draft, executor=pool) as fetcher:
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(fetcher.fetch(f"http://127.0.0.1:{port}/{i}.jpg") for i in range(n))
                )
                elapsed = time.perf_counter() - started
    finally:
        await runner.cleanup()
    return elapsed, sum(r.status == "ok" for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2000, help="JPEG side in pixels")
    parser.add_argument("--images", type=int, default=200, help="concurrent fetches in the end-to-end run")
    parser.add_argument("--draft", type=int, default=224, help="draft_size side (the model's decode size)")
    args = parser.parse_args()
    data = make_jpeg(args.size)
    draft = (args.draft, args.draft)

    full_s, full_size = time_decode(data, None)
    draft_s, draft_size = time_decode(data, draft)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; JPEG {args.size}x{args.size}, {len(data) / 1e6:.2f} MB")
    print("\n| decode | size | ms per image | speed-up |")
    print("|---|---|---:|---:|")
    print(f"| full | {full_size[0]}x{full_size[1]} | {full_s * 1000:.1f} | 1.0x |")
    print(f"| draft {draft} | {draft_size[0]}x{draft_size[1]} | {draft_s * 1000:.1f} | {full_s / draft_s:.1f}x |")

    print(f"\n| fetch + decode, {args.images} concurrent, loopback | s | images/s | ok |")
    print("|---|---:|---:|---:|")
    for label, d in (("full", None), (f"draft {draft}", draft)):
        elapsed, ok = asyncio.run(fetch_many(data, args.images, d))
        print(f"| {label} | {elapsed:.2f} | {args.images / elapsed:.0f} | {ok} |")


if __name__ == "__main__":
    main()
