"""ImageFetcher against a real aiohttp server on 127.0.0.1 started by each test.

The fetcher runs with ``allow_loopback=True`` so it may talk to that server; every other address a test
mentions (169.254.169.254, 10.0.0.1, ...) must be refused by the guard before any connection is made, so
these tests never send traffic anywhere but loopback. Hosts with DNS names are answered by a fake inner
resolver (see ``fake_dns``), never by real DNS.
"""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import consumer.stages.fetch as fetch_module
from consumer.ops import metrics
from consumer.ops.settings import FetchSettings
from consumer.stages.fetch import FETCH_STATUSES, FetchResult, ImageFetcher
from consumer.stages.ssrf import GuardedResolver

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


JPEG = _encode(Image.linear_gradient("L").resize((64, 48)).convert("RGB"), "JPEG")
PNG = _encode(Image.new("RGBA", (10, 12), (0, 128, 255, 255)), "PNG")
BIG_JPEG = _encode(Image.linear_gradient("L").resize((2000, 2000)).convert("RGB"), "JPEG")


def _bomb_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header is patched to declare width x height (tiny bytes, huge claimed size)."""
    import struct
    import zlib

    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


class ImageServer:
    """Loopback test server: canned image routes, misbehaving routes, and hit/concurrency counters."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.active = 0
        self.max_active = 0
        self.bytes_sent: Counter[str] = Counter()
        self.port = 0
        self.app = web.Application()
        self.app.router.add_get("/{name:.*}", self._dispatch)
        self.routes: dict[str, Handler] = {}

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        handler = self.routes.get(path)
        if handler is None:
            return web.Response(status=404, text="not found")
        return await handler(request)


def image(body: bytes, content_type: str = "image/jpeg") -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type)

    return handler


def status(code: int) -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text=f"status {code}")

    return handler


def redirect(location: str, code: int = 302) -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers={"Location": location})

    return handler


@asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[ImageServer]:
    server = ImageServer()
    server.routes = routes
    # handler_cancellation: a handler sleeping "forever" ends when the fetcher hangs up.
    runner = web.AppRunner(server.app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        await runner.cleanup()


def fetch_settings(**overrides: Any) -> FetchSettings:
    base: dict[str, Any] = {
        "allow_loopback": True, "retries": 2, "backoff_s": 0.01, "total_timeout_s": 3.0,
        "connect_timeout_s": 1.0, "max_bytes": 1_000_000,
    }
    base.update(overrides)
    return FetchSettings(**base)


async def fetch_one(
    routes: dict[str, Handler], path: str, **overrides: Any
) -> tuple[FetchResult, ImageServer]:
    async with serve(routes) as server, ImageFetcher(fetch_settings(**overrides)) as fetcher:
        result = await fetcher.fetch(server.url(path))
    return result, server


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


@functools.cache
def _image_entry_validator() -> jsonschema.Draft202012Validator:
    """The output event schema's ``images[]`` item, the contract ``FetchResult.to_json`` must meet."""
    from pathlib import Path

    schema = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "attributes-enriched.v1.json").read_text())
    return jsonschema.Draft202012Validator({**schema["$defs"]["image"], "$defs": schema["$defs"]})


def assert_matches_schema(*results: FetchResult) -> None:
    for result in results:
        _image_entry_validator().validate(result.to_json())


def fetch_count(status_name: str) -> float:
    return metrics.REGISTRY.get_sample_value("enrich_image_fetches_total", {"status": status_name}) or 0.0


# ---------------------------------------------------------------- success


def test_jpeg_ok() -> None:
    result, server = run(fetch_one({"/a.jpg": image(JPEG)}, "/a.jpg"))
    assert result.status == "ok", result
    assert result.reason is None and result.http_status == 200 and result.nbytes == len(JPEG)
    assert result.image is not None and result.image.mode == "RGB" and result.image.size == (64, 48)
    assert server.hits["/a.jpg"] == 1


def test_png_ok_and_to_json_shape() -> None:
    result, _ = run(fetch_one({"/a.png": image(PNG, "image/png")}, "/a.png"))
    assert result.status == "ok" and result.image is not None and result.image.size == (10, 12)
    doc = result.to_json()
    assert set(doc) == {"url", "status", "reason", "http_status", "bytes", "elapsed_ms"}
    assert doc["status"] == "ok" and doc["bytes"] == len(PNG) and doc["elapsed_ms"] >= 0


def test_common_jpeg_content_type_alias_is_accepted() -> None:
    result, _ = run(fetch_one({"/a.jpg": image(JPEG, "image/jpg")}, "/a.jpg"))
    assert result.status == "ok"


def test_user_agent_is_sent() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("User-Agent", ""))
        return web.Response(body=JPEG, content_type="image/jpeg")

    result, _ = run(fetch_one({"/a.jpg": handler}, "/a.jpg", user_agent="enrich-test/9"))
    assert result.status == "ok" and seen == ["enrich-test/9"]


def test_draft_mode_decodes_large_jpeg_small_and_fast() -> None:
    async def main() -> tuple[FetchResult, float]:
        settings = fetch_settings(max_bytes=10_000_000)
        async with serve({"/big.jpg": image(BIG_JPEG)}) as server, ImageFetcher(settings, draft_size=(224, 224)) as f:
            started = time.perf_counter()
            result = await f.fetch(server.url("/big.jpg"))
            return result, time.perf_counter() - started

    result, elapsed = run(main())
    assert result.status == "ok" and result.image is not None
    # JPEG DCT scaling picks 1/8 here: the smallest scale that still covers 224x224.
    assert result.image.size == (250, 250)
    assert elapsed < 2.0


# ---------------------------------------------------------------- HTTP errors and retries


def test_404_is_http_error_without_retry() -> None:
    result, server = run(fetch_one({}, "/missing.jpg"))
    assert (result.status, result.reason, result.http_status) == ("http_error", "HTTP 404", 404)
    assert server.hits["/missing.jpg"] == 1


def test_400_is_not_retried() -> None:
    result, server = run(fetch_one({"/bad": status(400)}, "/bad"))
    assert result.status == "http_error" and result.http_status == 400
    assert server.hits["/bad"] == 1


def test_500_is_retried_then_http_error() -> None:
    result, server = run(fetch_one({"/err": status(500)}, "/err", retries=2))
    assert result.status == "http_error" and result.http_status == 500
    assert result.reason == "HTTP 500 (after 3 attempts)"
    assert server.hits["/err"] == 3  # first try + 2 retries


def test_503_then_200_succeeds_on_retry() -> None:
    calls = Counter[str]()

    async def flaky(_: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.Response(status=503)
        return web.Response(body=JPEG, content_type="image/jpeg")

    result, server = run(fetch_one({"/flaky.jpg": flaky}, "/flaky.jpg"))
    assert result.status == "ok" and result.http_status == 200
    assert server.hits["/flaky.jpg"] == 2


def test_backoff_grows_exponentially() -> None:
    times: list[float] = []

    async def failing(_: web.Request) -> web.StreamResponse:
        times.append(time.perf_counter())
        return web.Response(status=502)

    result, _ = run(fetch_one({"/e": failing}, "/e", retries=3, backoff_s=0.05))
    assert result.status == "http_error" and len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # delay = backoff_s * 2**n * jitter(0.5..1): 25-50 ms, 50-100 ms, 100-200 ms (plus scheduling).
    assert gaps[0] >= 0.024 and gaps[1] >= 0.049 and gaps[2] >= 0.099


def _shedding(first: int, retry_after: str | None, times: list[float]) -> Handler:
    """``first`` with ``Retry-After: retry_after`` on the first request, the JPEG afterwards."""

    async def handler(_: web.Request) -> web.StreamResponse:
        times.append(time.perf_counter())
        if len(times) == 1:
            return web.Response(status=first, headers={"Retry-After": retry_after} if retry_after else {})
        return web.Response(body=JPEG, content_type="image/jpeg")

    return handler


@pytest.mark.parametrize("code", [503, 429])
def test_retry_after_is_waited_for_before_the_retry(code: int) -> None:
    times: list[float] = []
    result, _ = run(fetch_one({"/shed.jpg": _shedding(code, "1", times)}, "/shed.jpg", backoff_s=0.01))
    assert result.status == "ok" and len(times) == 2
    assert times[1] - times[0] >= 0.99  # our own backoff alone would have come back within 10 ms


def test_429_without_retry_after_is_retried_with_backoff() -> None:
    times: list[float] = []
    result, _ = run(fetch_one({"/shed.jpg": _shedding(429, None, times)}, "/shed.jpg"))
    assert result.status == "ok" and len(times) == 2


def test_retry_after_past_the_deadline_fails_at_once_with_the_reason() -> None:
    times: list[float] = []
    result, _ = run(fetch_one({"/shed.jpg": _shedding(503, "30", times)}, "/shed.jpg", total_timeout_s=3.0))
    assert (result.status, result.http_status) == ("http_error", 503)
    assert result.reason == "HTTP 503 (after 1 attempt; the server asked to retry after 30 s, past the deadline)"
    assert len(times) == 1 and result.elapsed_ms < 1000  # did not sleep into a timeout


def test_retry_after_values() -> None:
    now = 1_700_000_000.0
    date = "Tue, 14 Nov 2023 22:13:40 GMT"  # now + 20 s
    assert fetch_module.retry_after_seconds("120", now) == 120.0
    assert fetch_module.retry_after_seconds(" 0 ", now) == 0.0
    assert fetch_module.retry_after_seconds(date, now) == pytest.approx(20.0)
    assert fetch_module.retry_after_seconds("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0  # in the past
    for unreadable in (None, "", "soon", "-5", "1.5", "\u00b2", "Tue, 99 Nov 2023 25:00:00 GMT"):
        assert fetch_module.retry_after_seconds(unreadable, now) is None, unreadable


def test_connection_refused_is_retried_connection_error() -> None:
    async def main() -> FetchResult:
        with socket.socket() as sock:  # a loopback port that is certainly closed
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        async with ImageFetcher(fetch_settings(retries=1)) as fetcher:
            return await fetcher.fetch(f"http://127.0.0.1:{port}/a.jpg")

    result = run(main())
    assert result.status == "connection_error"
    assert "after 2 attempts" in (result.reason or "")


def test_body_cut_short_is_connection_error() -> None:
    async def liar(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": "5000"})
        await resp.prepare(request)
        await resp.write(JPEG[:100])
        assert request.transport is not None
        request.transport.close()
        return resp

    result, server = run(fetch_one({"/cut.jpg": liar}, "/cut.jpg", retries=1))
    assert result.status == "connection_error", result
    assert server.hits["/cut.jpg"] == 2


# ---------------------------------------------------------------- time and size limits


def test_slow_handler_times_out_within_total_timeout() -> None:
    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        return web.Response(body=JPEG, content_type="image/jpeg")

    started = time.perf_counter()
    result, _ = run(fetch_one({"/slow.jpg": slow}, "/slow.jpg", total_timeout_s=0.3))
    assert result.status == "timeout", result
    assert_matches_schema(result)
    assert 0.25 <= result.elapsed_ms / 1000 < 1.0
    assert time.perf_counter() - started < 3.0


def test_timeout_while_queued_for_the_per_host_limit_says_so() -> None:
    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def main() -> list[FetchResult]:
        settings = fetch_settings(per_host_connections=1, total_timeout_s=0.3)
        async with serve({"/slow": slow}) as server, ImageFetcher(settings) as fetcher:
            return list(await asyncio.gather(*(fetcher.fetch(server.url("/slow")) for _ in range(3))))

    # Three fetches, one connection: all deadlines fall together, and when the holder's expires it frees the
    # slot, so one queued fetch may just reach "connecting" first (a 1-in-5 race with only two fetches); the
    # other queued one is still waiting for the per-host limit when its deadline passes.
    reasons = [r.reason or "" for r in run(main())]
    assert "no complete response within 0.3 s (while waiting for response headers)" in reasons, reasons
    queued = "no complete response within 0.3 s (while waiting for a free connection (per-host limit))"
    assert queued in reasons, reasons


def test_retries_stop_at_the_overall_deadline() -> None:
    # First backoff 0.2-0.4 s fits in the 0.5 s deadline, the second (0.4-0.8 s) cannot.
    result, server = run(fetch_one({"/err": status(500)}, "/err", retries=10, backoff_s=0.4, total_timeout_s=0.5))
    assert (result.status, result.reason) == ("http_error", "HTTP 500 (after 2 attempts; no time left to retry)")
    assert server.hits["/err"] == 2
    assert result.elapsed_ms < 500


def test_endless_chunked_body_is_cut_at_the_cap() -> None:
    sent = Counter[str]()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b"\xff" * 16384
        while True:  # ends when the client hangs up (write fails or the handler is cancelled)
            await resp.write(chunk)
            sent["bytes"] += len(chunk)

    cap = 200_000
    result, _ = run(fetch_one({"/endless.jpg": endless}, "/endless.jpg", max_bytes=cap))
    assert result.status == "too_large", result
    assert_matches_schema(result)
    assert result.reason == f"body exceeded {cap} bytes"
    assert result.nbytes is not None and cap < result.nbytes <= cap + 1  # never read past cap + 1
    assert sent["bytes"] < 50 * cap  # and the server was stopped, not drained


def test_huge_content_length_is_refused_before_reading() -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(10**12)})
        await resp.prepare(request)
        await resp.write(b"\xff\xd8" + b"\x00" * 1000)
        await asyncio.sleep(10)
        return resp

    before = metrics.REGISTRY.get_sample_value("enrich_image_fetch_bytes_total") or 0.0
    result, _ = run(fetch_one({"/huge.jpg": huge}, "/huge.jpg", max_bytes=1000))
    assert result.status == "too_large" and result.nbytes is None
    assert result.reason == f"Content-Length {10**12} exceeds 1000 bytes"
    assert (metrics.REGISTRY.get_sample_value("enrich_image_fetch_bytes_total") or 0.0) == before
    assert result.elapsed_ms < 2000


# ---------------------------------------------------------------- content checks and decoding


def test_html_is_bad_content_type() -> None:
    result, _ = run(fetch_one({"/page": image(b"<html></html>", "text/html")}, "/page"))
    assert result.status == "bad_content_type" and result.reason == "Content-Type 'text/html' not allowed"
    assert result.nbytes is None  # refused on the headers


def test_image_content_type_with_non_image_bytes() -> None:
    result, _ = run(fetch_one({"/fake.jpg": image(b"hello, not an image" * 50)}, "/fake.jpg"))
    assert result.status in ("unsupported_format", "decode_error")
    assert result.image is None


def test_format_outside_allow_list_is_unsupported() -> None:
    bmp = _encode(Image.new("RGB", (4, 4)), "BMP")
    result, _ = run(fetch_one({"/a.jpg": image(bmp)}, "/a.jpg"))
    assert result.status == "unsupported_format"


def test_truncated_jpeg_is_decode_error() -> None:
    big = _encode(Image.linear_gradient("L").resize((256, 256)).convert("RGB"), "JPEG")
    result, _ = run(fetch_one({"/t.jpg": image(big[: len(big) // 2])}, "/t.jpg"))
    assert result.status == "decode_error", result
    assert result.http_status == 200 and result.nbytes == len(big) // 2


def test_empty_body_is_decode_error() -> None:
    result, _ = run(fetch_one({"/e.jpg": image(b"")}, "/e.jpg"))
    assert (result.status, result.reason) == ("decode_error", "empty body")


def test_decompression_bomb_is_rejected() -> None:
    bomb = _bomb_png(20000, 20000)
    assert len(bomb) < 100
    result, _ = run(fetch_one({"/bomb.png": image(bomb, "image/png")}, "/bomb.png"))
    assert result.status == "decompression_bomb", result


def test_configured_pixel_limit_applies() -> None:
    result, _ = run(fetch_one({"/a.jpg": image(JPEG)}, "/a.jpg", max_pixels=1000))
    assert result.status == "decompression_bomb"
    assert "3072 pixels exceeds 1000" in (result.reason or "")


# ---------------------------------------------------------------- URLs and the SSRF guard


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://127.0.0.1/a.jpg", "scheme 'ftp'"),
        ("gopher://127.0.0.1:70/_x", "scheme 'gopher'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("/relative/a.jpg", "scheme ''"),
        ("http:///a.jpg", "no host"),
        ("http://user:secret@127.0.0.1/a.jpg", "credentials in URL"),
        ("http://127.0.0.1:0/a.jpg", "bad port"),
        ("http://2130706433/a.jpg", "non-canonical numeric IPv4"),
        ("http://0x7f.1/a.jpg", "non-canonical numeric IPv4"),
        ("http://127.1/a.jpg", "non-canonical numeric IPv4"),
        ("http://017700000001/a.jpg", "non-canonical numeric IPv4"),
        ("http://ex ample.com/a.jpg", "bad host name"),
        ("http://example.com/a\x00.jpg", "control character"),
        ("http://example.com:99999/a.jpg", "unparseable"),
        ("http://" + "a" * 9000 + ".com/", "longer than"),
    ],
)
def test_invalid_urls_are_refused_without_any_request(url: str, fragment: str) -> None:
    async def main() -> FetchResult:
        async with ImageFetcher(fetch_settings(allow_loopback=False)) as fetcher:
            return await fetcher.fetch(url)

    result = run(main())
    assert result.status == "invalid_url", result
    assert fragment in (result.reason or "")
    assert "secret" not in result.url
    assert_matches_schema(result)  # url clipped to 2048 characters


def test_loopback_refused_unless_allowed() -> None:
    async def main() -> tuple[list[FetchResult], ImageServer]:
        async with serve({"/a.jpg": image(JPEG)}) as server:
            async with ImageFetcher(fetch_settings(allow_loopback=False)) as fetcher:
                results = [
                    await fetcher.fetch(server.url("/a.jpg")),  # IP literal: checked before connecting
                    await fetcher.fetch(server.url("/a.jpg", host="[::1]")),
                    await fetcher.fetch(server.url("/a.jpg", host="localhost")),  # via the resolver
                ]
            return results, server

    results, server = run(main())
    assert [r.status for r in results] == ["blocked_address"] * 3
    assert results[0].reason == "resolved to 127.0.0.1 (loopback)"
    assert results[2].reason is not None and results[2].reason.startswith("localhost resolved to")
    assert server.hits["/a.jpg"] == 0


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data", "resolved to 169.254.169.254 (link-local)"),
        ("http://10.0.0.1/a.jpg", "resolved to 10.0.0.1 (private)"),
        ("http://100.64.0.1/a.jpg", "resolved to 100.64.0.1 (CGNAT)"),
        ("http://224.0.0.1/a.jpg", "resolved to 224.0.0.1 (multicast)"),
        ("http://0.0.0.0/a.jpg", "resolved to 0.0.0.0 (unspecified)"),
        ("http://[fd00:ec2::254]/latest", "resolved to fd00:ec2::254 (private)"),
        (
            "http://[::ffff:a9fe:a9fe]/latest",
            "resolved to ::ffff:a9fe:a9fe (link-local via IPv4-mapped 169.254.169.254)",
        ),
    ],
)
def test_redirect_to_forbidden_address_is_blocked(target: str, reason: str) -> None:
    before = fetch_count("blocked_address")
    result, server = run(fetch_one({"/r": redirect(target)}, "/r"))
    assert result.status == "blocked_address", result
    assert result.reason is not None and result.reason.startswith(reason)
    assert "redirect hop 1" in result.reason
    assert server.hits["/r"] == 1
    assert fetch_count("blocked_address") == before + 1


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/a.jpg", "http://u:p@127.0.0.1/x"])
def test_redirect_to_invalid_url_is_refused(target: str) -> None:
    result, _ = run(fetch_one({"/r": redirect(target)}, "/r"))
    assert result.status == "invalid_url" and "redirect hop 1" in (result.reason or "")


def test_relative_redirect_chain_is_followed() -> None:
    routes = {"/r1": redirect("/r2", 301), "/r2": redirect("r3", 307), "/r3": redirect("/a.jpg", 308),
              "/a.jpg": image(JPEG)}
    result, server = run(fetch_one(routes, "/r1"))
    assert result.status == "ok" and server.hits["/a.jpg"] == 1


def test_redirect_loop_is_too_many_redirects() -> None:
    routes = {"/a": redirect("/b"), "/b": redirect("/a")}
    result, server = run(fetch_one(routes, "/a"))
    assert result.status == "too_many_redirects" and "loop" in (result.reason or "")
    assert server.hits["/a"] == 1 and server.hits["/b"] == 1


def test_redirect_chain_longer_than_limit() -> None:
    routes: dict[str, Handler] = {f"/r{i}": redirect(f"/r{i + 1}") for i in range(10)}
    routes["/r10"] = image(JPEG)
    result, server = run(fetch_one(routes, "/r0", max_redirects=3))
    assert (result.status, result.reason) == ("too_many_redirects", "more than 3 redirects")
    assert sum(server.hits.values()) == 4
    ok, _ = run(fetch_one(routes, "/r0", max_redirects=10))
    assert ok.status == "ok"


def test_redirect_without_location_is_http_error() -> None:
    result, _ = run(fetch_one({"/r": status(302)}, "/r"))
    assert (result.status, result.reason) == ("http_error", "HTTP 302 without Location")


class FakeDNS(AbstractResolver):
    """Answers a fixed table, so that DNS-name tests send no query and no packet off loopback."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(f"fake DNS: no such host {host}")
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                          proto=0, flags=0)
            for a in self.table[host]
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Make the fetcher's GuardedResolver ask a table instead of the system resolver."""
    table: dict[str, list[str]] = {}
    monkeypatch.setattr(fetch_module, "GuardedResolver", functools.partial(GuardedResolver, inner=FakeDNS(table)))
    return table


def test_dns_name_resolving_to_forbidden_address_is_blocked_on_redirect_hop(fake_dns: dict[str, list[str]]) -> None:
    fake_dns.update({"images.test": ["127.0.0.1"], "evil.test": ["10.0.0.1"], "mixed.test": ["127.0.0.1", "10.0.0.1"]})

    async def main() -> tuple[list[FetchResult], ImageServer]:
        async with serve({"/a.jpg": image(JPEG)}) as server:
            port = server.port
            server.routes["/to-evil"] = redirect(f"http://evil.test:{port}/a.jpg")
            server.routes["/to-mixed"] = redirect(f"http://mixed.test:{port}/a.jpg")
            async with ImageFetcher(fetch_settings()) as fetcher:
                results = [
                    await fetcher.fetch(server.url("/a.jpg", host="images.test")),
                    await fetcher.fetch(server.url("/to-evil", host="images.test")),
                    await fetcher.fetch(server.url("/to-mixed", host="images.test")),
                ]
            return results, server

    (ok, evil, mixed), server = run(main())
    assert ok.status == "ok"
    assert evil.status == "blocked_address"
    assert evil.reason == f"evil.test resolved to 10.0.0.1 (private) (redirect hop 1: http://evil.test:{server.port}/a.jpg)"
    # One refused answer refuses the host, even though its other answer (loopback) is allowed here.
    assert mixed.status == "blocked_address" and "10.0.0.1 (private)" in (mixed.reason or "")
    assert server.hits["/a.jpg"] == 1
    assert server.hits["/to-evil"] == 1 and server.hits["/to-mixed"] == 1


def test_blocked_address_is_not_retried(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["evil.test"] = ["169.254.169.254"]

    async def main() -> FetchResult:
        async with ImageFetcher(fetch_settings(retries=5, backoff_s=1.0)) as fetcher:
            return await fetcher.fetch("http://evil.test/latest/meta-data")

    result = run(main())
    assert result.status == "blocked_address" and result.elapsed_ms < 500


# ---------------------------------------------------------------- concurrency, fan-out, metrics


def test_per_host_connection_limit_is_respected() -> None:
    state = {"active": 0, "max": 0}

    async def slow_image(_: web.Request) -> web.StreamResponse:
        state["active"] += 1
        state["max"] = max(state["max"], state["active"])
        try:
            await asyncio.sleep(0.05)
        finally:
            state["active"] -= 1
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def main() -> list[FetchResult]:
        async with serve({"/s.jpg": slow_image}) as server, ImageFetcher(fetch_settings(per_host_connections=2)) as f:
            return list(await asyncio.gather(*(f.fetch(server.url("/s.jpg")) for _ in range(10))))

    results = run(main())
    assert all(r.status == "ok" for r in results)
    assert state["max"] == 2


def test_fetch_all_caps_images_per_product_and_keeps_order() -> None:
    async def main() -> list[FetchResult]:
        routes = {"/a.jpg": image(JPEG), "/b.png": image(PNG, "image/png")}
        async with serve(routes) as server, ImageFetcher(fetch_settings(max_images_per_product=3)) as fetcher:
            urls = [server.url("/a.jpg"), "ftp://x/y", server.url("/nope"), server.url("/b.png"), server.url("/a.jpg")]
            return await fetcher.fetch_all(urls)

    before = fetch_count("skipped")
    results = run(main())
    assert [r.status for r in results] == ["ok", "invalid_url", "http_error", "skipped", "skipped"]
    assert_matches_schema(*results)
    assert results[3].reason == "over max_images_per_product=3" and results[3].url.endswith("/b.png")
    assert fetch_count("skipped") == before + 2


def test_all_images_failing_still_yields_one_result_each() -> None:
    async def main() -> list[FetchResult]:
        async with serve({}) as server, ImageFetcher(fetch_settings()) as fetcher:
            return await fetcher.fetch_all([server.url("/x.jpg"), "file:///etc/passwd"])

    results = run(main())
    assert [r.to_json()["status"] for r in results] == ["http_error", "invalid_url"]
    assert all(r.image is None and r.reason for r in results)


def test_metrics_count_each_outcome() -> None:
    names = ("ok", "http_error", "invalid_url")
    before = {n: fetch_count(n) for n in names}
    bytes_before = metrics.REGISTRY.get_sample_value("enrich_image_fetch_bytes_total") or 0.0
    seconds_before = metrics.REGISTRY.get_sample_value("enrich_image_fetch_seconds_count") or 0.0

    async def main() -> None:
        async with serve({"/a.jpg": image(JPEG)}) as server, ImageFetcher(fetch_settings()) as fetcher:
            await fetcher.fetch_all([server.url("/a.jpg"), server.url("/a.jpg"), server.url("/404"), "nope"])

    run(main())
    assert {n: fetch_count(n) - before[n] for n in names} == {"ok": 2, "http_error": 1, "invalid_url": 1}
    assert (metrics.REGISTRY.get_sample_value("enrich_image_fetch_bytes_total") or 0.0) - bytes_before == 2 * len(JPEG)
    assert (metrics.REGISTRY.get_sample_value("enrich_image_fetch_seconds_count") or 0.0) - seconds_before == 4


def test_cancellation_propagates() -> None:
    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def main() -> None:
        async with serve({"/slow": slow}) as server, ImageFetcher(fetch_settings()) as fetcher:
            task = asyncio.create_task(fetcher.fetch(server.url("/slow")))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(main())


_url_text = st.one_of(
    st.text(max_size=60),
    st.builds(lambda s, rest: s + rest, st.sampled_from(["http://", "https://", "HTTP://", "http://[", "//"]),
              st.text(max_size=40)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_url_text, min_size=1, max_size=8))
def test_fetch_never_raises(fake_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch, urls: list[str]) -> None:
    """Arbitrary strings: every one ends in a documented status, nothing raises, nothing leaves loopback.

    DNS names go to the empty fake table (a connection_error), and every IP literal is refused, so a
    generated public address cannot be contacted either.
    """
    monkeypatch.setattr(fetch_module, "literal_refusal", lambda host, allow_loopback: f"test refuses {host}"
                        if fetch_module.parse_ip(host) is not None else None)

    async def main() -> list[FetchResult]:
        async with ImageFetcher(fetch_settings(retries=0, max_images_per_product=8)) as fetcher:
            return await fetcher.fetch_all(urls)

    results = run(main())
    assert len(results) == len(urls)
    assert_matches_schema(*results)
    assert all(r.status in FETCH_STATUSES and r.status != "ok" for r in results)
    assert {r.status for r in results} <= {"invalid_url", "blocked_address", "connection_error"}


def test_status_list_matches_documentation_and_schema() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "fetching.md").read_text()
    for name in FETCH_STATUSES:
        assert f"`{name}`" in doc, name
    schema_statuses = _image_entry_validator().schema["properties"]["status"]["enum"]
    assert sorted(schema_statuses) == sorted(FETCH_STATUSES)
