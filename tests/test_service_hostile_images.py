"""Hostile image URLs through the whole service: real tansu broker, a misbehaving HTTP server on loopback,
`enrich run` as a subprocess.

Each product points at one hostile URL (404, a server that never answers, an endless body, a huge declared
file, HTML, non-image bytes labelled image/jpeg, a truncated JPEG, a decompression bomb, redirects to the
cloud metadata address and to private addresses, private and CGNAT literals). Every product must still be
enriched from its text, with the documented per-image status (docs/fetching.md) recorded in its event; no
event is lost or dead-lettered, and the consumer's offsets reach the end. Nothing leaves loopback: the SSRF
guard refuses the non-loopback addresses before connecting. (A redirect to *localhost* cannot be shown here,
because the service must be allowed to reach this loopback server; tests/test_fetch.py and tests/test_ssrf.py
cover loopback refusal, and the per-hop check is the one that refuses 169.254.169.254 below.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from consumer.devtools.embedded_broker import create_topics
from consumer.devtools.image_server import Handler, ImageServer
from consumer.devtools.produce import events_from_catalog, produce_jsonl
from models.catalog.kaggle import read_catalog
from schemas import validator
from tests.service_harness import committed, end_offsets, enrich_env, read_all, start_enrich, tail, wait_exit
from tests.test_fetch import JPEG, _bomb_png, image, redirect

pytestmark = pytest.mark.broker


async def _slow(_: web.Request) -> web.StreamResponse:
    await asyncio.sleep(60)
    return web.Response(body=JPEG, content_type="image/jpeg")


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    await response.prepare(request)
    chunk = b"\xff" * 65536
    while True:  # ends when the client hangs up
        await response.write(chunk)


async def _huge(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(50 * 1024 * 1024)})
    await response.prepare(request)
    await response.write(JPEG)
    return response


#: path on the hostile server (or an absolute URL) -> the status the event must record
CASES: dict[str, str] = {
    "/missing.jpg": "http_error",
    "/slow.jpg": "timeout",
    "/endless.jpg": "too_large",
    "/huge.jpg": "too_large",
    "/page.jpg": "bad_content_type",
    "/html-as-jpeg.jpg": "unsupported_format",
    "/truncated.jpg": "decode_error",
    "/bomb.png": "decompression_bomb",
    "/to-metadata": "blocked_address",
    "/to-private": "blocked_address",
    "http://192.168.1.20/a.jpg": "blocked_address",
    "http://100.64.0.1/a.jpg": "blocked_address",
    "http://169.254.169.254/latest/meta-data/": "blocked_address",
}


#: the misbehaving routes, served next to the catalog photos by the project's own loopback ImageServer
ROUTES: dict[str, Handler] = {
    "/good.jpg": image(JPEG),
    "/slow.jpg": _slow,
    "/endless.jpg": _endless,
    "/huge.jpg": _huge,
    "/page.jpg": image(b"<html>not found</html>", "text/html"),
    "/html-as-jpeg.jpg": image(b"<html>" + b"x" * 2000 + b"</html>"),
    "/truncated.jpg": image(JPEG[: len(JPEG) // 2]),
    "/bomb.png": image(_bomb_png(60_000, 60_000), "image/png"),
    "/to-metadata": redirect("http://169.254.169.254/latest/"),
    "/to-private": redirect("http://10.0.0.1/a.jpg"),
}


@pytest.fixture
def hostile_server(tmp_path: Path) -> Iterator[ImageServer]:
    with ImageServer(tmp_path, routes=ROUTES) as server:
        yield server


def _url(server: ImageServer, path_or_url: str) -> str:
    return path_or_url if "://" in path_or_url else server.base_url + path_or_url


def test_every_hostile_image_degrades_to_text_with_its_documented_status(
    broker, tiny_bundle: Path, sample_catalog: Path, hostile_server: ImageServer, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    topics = (f"hostile-{run}.in", f"hostile-{run}.out", f"hostile-{run}.dlq")
    create_topics(broker.bootstrap_servers, list(topics), partitions=2)
    products = read_catalog(sample_catalog)[: len(CASES) + 1]
    events = events_from_catalog(products, hostile_server.base_url)
    expected: dict[str, str] = {}
    for event, (target, status) in zip(events, CASES.items(), strict=False):
        event["image_urls"] = [_url(hostile_server, target)]
        expected[event["product_id"]] = status
    good = events[len(CASES)]  # a broken image next to a good one: the product keeps its image evidence
    good["image_urls"] = [_url(hostile_server, "/missing.jpg"), _url(hostile_server, "/good.jpg")]
    feed = tmp_path / "events.jsonl"
    feed.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    total = produce_jsonl(broker.bootstrap_servers, topics[0], feed)

    log = tmp_path / "enrich.log"
    env = enrich_env(
        broker.bootstrap_servers, topics, tiny_bundle, group=f"g-{run}",
        ENRICH_FETCH__TOTAL_TIMEOUT_S="2", ENRICH_FETCH__MAX_BYTES="1000000", ENRICH_FETCH__MAX_PIXELS="40000000",
    )
    proc = start_enrich(env, log, "--idle-exit-s", "4")
    assert wait_exit(proc, 180, log) == 0, tail(log)

    outputs = read_all(broker.bootstrap_servers, topics[1], expected=total)
    assert len(outputs) == total, tail(log)
    assert read_all(broker.bootstrap_servers, topics[2], expected=0, timeout=2) == []
    schema = validator("attributes-enriched.v1")
    bodies = {}
    for msg in outputs:
        body = orjson.loads(msg.value())
        schema.validate(body)
        bodies[body["product_id"]] = body

    seen = {pid: bodies[pid]["images"][0]["status"] for pid in expected}
    assert seen == expected, {pid: bodies[pid]["images"][0] for pid in expected if seen[pid] != expected[pid]}
    for pid in expected:
        body = bodies[pid]
        assert body["modalities"] == ["text"], body
        assert body["images"][0]["reason"], body["images"][0]  # always a specific reason
        assert any(a["value"] is not None for a in body["attributes"].values())
    mixed = bodies[good["product_id"]]
    assert [i["status"] for i in mixed["images"]] == ["http_error", "ok"]
    assert "image" in mixed["modalities"]

    ends = end_offsets(broker.bootstrap_servers, topics[0], expected=total)
    assert committed(broker.bootstrap_servers, f"g-{run}", topics[0], range(2)) == ends
