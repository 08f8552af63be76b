"""Hostile input catalogue: every case below, each with its expected outcome, through one `enrich run`
(real tansu broker, a misbehaving loopback HTTP server), then the shared invariants.

    python -m tests.chaos.hostile_catalogue            # run it, print the figures and the outcome table
    python -m tests.chaos.hostile_catalogue --table    # only print the table (Markdown, docs/reliability.md)

Outcomes: ``dlq:<reason>`` (dead letter with that reason), ``text:<status>`` (enriched from the text only;
its one image recorded with that fetch status), ``image:ok`` (enriched with image evidence), ``enriched``,
``tombstone``, ``skip:<reason>`` (the documented "event skipped" outcome), ``a|b`` (either, by timing).
The image routes and their statuses are those of tests/test_service_hostile_images.py (reused, not copied);
the unit-level checks of each case live in tests/test_events.py, tests/test_fetch.py and tests/test_ssrf.py.
"""

from __future__ import annotations

import io
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from PIL import Image

from tests.chaos.common import Checker, Figures, Member, Rig, read_inputs, send, topics_for
from tests.test_fetch import image, redirect, status
from tests.test_service_hostile_images import CASES as IMAGE_CASES
from tests.test_service_hostile_images import ROUTES as IMAGE_ROUTES


def _stamp(s: int) -> str:
    return f"2026-12-01T00:{s // 60:02d}:{s % 60:02d}Z"


BASE: dict[str, Any] = {"op": "upsert", "retailer": "hostile", "title": "Navy blue cotton t-shirt",
                        "description": "Regular fit", "brand": "Acme", "image_urls": [], "updated_at": _stamp(10)}


def _event(pid: str, **over: Any) -> dict[str, Any]:
    return {**BASE, "event_id": f"e-{pid}-{over.get('updated_at', BASE['updated_at'])}", "product_id": pid, **over}


def _raw(pid: str, **over: Any) -> bytes:
    return orjson.dumps(_event(pid, **over))


def _without(pid: str, field: str) -> bytes:
    return orjson.dumps({k: v for k, v in _event(pid).items() if k != field})


async def _undeclared(request: web.Request) -> web.StreamResponse:
    """3 MB of chunked body, no Content-Length: finite, but past the 1 MB cap."""
    response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    await response.prepare(request)
    for _ in range(48):
        await response.write(b"\xff" * 65536)
    return response


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((side, side)).convert("RGB").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'

#: routes added to those of the service-level hostile image test
EXTRA_ROUTES = {
    "/error-500.jpg": status(500),
    "/svg-as-jpeg.jpg": image(SVG),
    "/undeclared.jpg": _undeclared,
    "/large.png": image(_png(3000), "image/png"),
    "/loop-a": redirect("/loop-b"),
    "/loop-b": redirect("/loop-a"),
}
EXTRA_IMAGE_CASES = {
    "/error-500.jpg": "http_error",
    "/svg-as-jpeg.jpg": "unsupported_format",
    "/undeclared.jpg": "too_large",
    "/loop-a": "too_many_redirects",
    "http://10.1.2.3/a.jpg": "blocked_address",
    "http://[fd00::1]/a.jpg": "blocked_address",
    "http://[::ffff:192.168.0.1]/a.jpg": "blocked_address",
    "not a url": "invalid_url",
}
IMAGE_DESCRIPTIONS = {
    "/missing.jpg": "404", "/slow.jpg": "server never answers (60 s; fetch timeout 2 s)",
    "/endless.jpg": "endless body", "/huge.jpg": "huge declared body (Content-Length 50 MB, cap 1 MB)",
    "/page.jpg": "HTML page (text/html)", "/html-as-jpeg.jpg": "HTML labelled image/jpeg",
    "/truncated.jpg": "truncated JPEG", "/bomb.png": "decompression bomb (60000 x 60000 PNG)",
    "/to-metadata": "redirect to the cloud metadata address", "/to-private": "redirect to a private address",
    "http://192.168.1.20/a.jpg": "private address literal", "http://100.64.0.1/a.jpg": "CGNAT address literal",
    "http://169.254.169.254/latest/meta-data/": "metadata address literal",
    "/error-500.jpg": "500 (retried, then given up)", "/svg-as-jpeg.jpg": "SVG labelled image/jpeg",
    "/undeclared.jpg": "huge undeclared body (3 MB chunked, cap 1 MB)", "/loop-a": "redirect loop",
    "http://10.1.2.3/a.jpg": "private address literal (10/8)", "http://[fd00::1]/a.jpg": "IPv6 unique-local literal",
    "http://[::ffff:192.168.0.1]/a.jpg": "IPv4-mapped IPv6 private literal", "not a url": "not a URL",
}


@dataclass
class Case:
    name: str
    kind: str  # "event" or "image"
    records: list[tuple[bytes | None, bytes | None]]
    expected: list[str]  # one per record
    check: Callable[[list[Any]], str | None] | None = None  # extra check on the product's output bodies


def catalogue(image_base: str) -> list[Case]:
    def url(path: str) -> str:
        return path if "://" in path or " " in path else image_base + path

    k = b"hostile"
    cases = [
        Case("invalid JSON (cut short)", "event", [(k, b'{"event_id": "x", "op": "ups')], ["dlq:not_json"]),
        Case("not JSON at all (CSV line)", "event", [(k, b"SKU-1,acme,red")], ["dlq:not_json"]),
        Case("empty value", "event", [(k, b"")], ["dlq:not_json"]),
        Case("no value (null message)", "event", [(k, None)], ["dlq:schema_violation"]),
        Case("JSON array instead of an object", "event", [(k, b"[1, 2]")], ["dlq:schema_violation"]),
        Case("NaN in JSON", "event", [(k, b'{"a": NaN}')], ["dlq:not_json"]),
        Case("nesting 2000 deep", "event", [(k, b"[" * 2000 + b"]" * 2000)], ["dlq:not_json"]),
        Case("wrong type: product_id a number", "event", [(k, orjson.dumps(_event("h-1") | {"product_id": 42}))],
             ["dlq:schema_violation"]),
        Case("wrong type: image_urls a string", "event", [(k, _raw("h-2", image_urls="http://x/1.jpg"))],
             ["dlq:schema_violation"]),
        Case("wrong type: nested vendor attribute", "event", [(k, _raw("h-3", vendor_attributes={"fit": {"x": 1}}))],
             ["dlq:schema_violation"]),
        Case("missing field: title on an upsert", "event", [(k, _without("h-4", "title"))], ["dlq:schema_violation"]),
        Case("missing field: updated_at", "event", [(k, _without("h-5", "updated_at"))], ["dlq:schema_violation"]),
        Case("bad date: updated_at 'yesterday'", "event", [(k, _raw("h-6", updated_at="yesterday"))],
             ["dlq:schema_violation"]),
        Case("giant field: title of 2001 chars", "event", [(k, _raw("h-7", title="t" * 2001))],
             ["dlq:schema_violation"]),
        Case("giant field: 21 image URLs", "event", [(k, _raw("h-8", image_urls=["u"] * 21))],
             ["dlq:schema_violation"]),
        Case("giant message: 1.2 MB value (limit 1 MB)", "event", [(k, _raw("h-9", description="d" * 1_200_000))],
             ["dlq:too_large"]),
        Case("giant key: 300 KB key, valid event", "event", [(b"K" * 300_000, _raw("h-10"))], ["enriched"]),
        Case("invalid UTF-8 in a string", "event", [(k, b'{"title": "caf\xe9"}')], ["dlq:not_utf8"]),
        Case("invalid UTF-8: binary garbage", "event", [(k, b"\xff\xfe\x00\x01 binary")], ["dlq:not_utf8"]),
        Case("unknown op 'merge'", "event", [(k, _raw("h-11", op="merge"))], ["dlq:schema_violation"]),
        Case("unknown top-level fields (vendor extras)", "event", [(b"h-12", _raw("h-12", vendor_extra=[1, 2]))],
             ["enriched"]),
        Case("mojibake and control characters in the title", "event",
             [(b"h-13", _raw("h-13", title="NAVY BLUE T-SHIRT Ã©\u0000\u200b\ufffd"))], ["enriched"]),
        Case("duplicate event id (same event twice)", "event",
             [(b"h-14", _raw("h-14")), (b"h-14", _raw("h-14"))], ["skip:superseded|enriched", "enriched"]),
        Case("out-of-order updated_at (older copy after newer)", "event",
             [(b"h-15", _raw("h-15", updated_at=_stamp(20))), (b"h-15", _raw("h-15", updated_at=_stamp(5)))],
             ["skip:superseded|enriched", "skip:stale_update"]),
        Case("delete for an unknown product", "event",
             [(b"h-16", orjson.dumps({"event_id": "d-16", "op": "delete", "retailer": "hostile",
                                      "product_id": "h-16", "updated_at": _stamp(10)}))], ["tombstone"]),
        Case("stale delete (older than the product's upsert)", "event",
             [(b"h-17", _raw("h-17", updated_at=_stamp(30))),
              (b"h-17", orjson.dumps({"event_id": "d-17", "op": "delete", "retailer": "hostile",
                                      "product_id": "h-17", "updated_at": _stamp(1)}))],
             ["skip:superseded|enriched", "skip:stale_update"]),
    ]
    image_cases = {**IMAGE_CASES, **EXTRA_IMAGE_CASES}
    for i, (path, want) in enumerate(image_cases.items()):
        pid = f"img-{i}"
        cases.append(Case(f"image: {IMAGE_DESCRIPTIONS[path]}", "image",
                          [(pid.encode(), _raw(pid, image_urls=[url(path)]))], [f"text:{want}"]))
    cases.append(Case("image: large PNG (3000 x 3000, reduced at decode)", "image",
                      [(b"img-png", _raw("img-png", image_urls=[url("/large.png")]))], ["image:ok"]))
    cases.append(Case("image: a 404 next to a good JPEG", "image",
                      [(b"img-mix", _raw("img-mix", image_urls=[url("/missing.jpg"), url("/good.jpg")]))],
                      ["image:ok"]))
    return cases


def table(cases: list[Case], seen: dict[str, list[str]] | None = None) -> str:
    rows = ["| # | input | kind | expected outcome | observed |", "|---|---|---|---|---|"]
    for i, case in enumerate(cases, 1):
        got = "; ".join(seen[case.name]) if seen else ""
        want = "; ".join(case.expected).replace("|", " or ")
        rows.append(f"| {i} | {case.name} | {case.kind} | {want} | {got} |")
    return "\n".join(rows)


def _outcome(coord: tuple[int, int], outs: dict, dlq: dict, skips: dict) -> str:
    if coord in dlq:
        return f"dlq:{orjson.loads(dlq[coord].value())['reason']}"
    if coord in outs:
        msg = outs[coord]
        if msg.value() is None:
            return "tombstone"
        body = orjson.loads(msg.value())
        if not body["images"]:
            return "enriched"
        if "image" in body["modalities"]:
            return "image:ok"
        return f"text:{body['images'][0]['status']}"
    if coord in skips:
        return f"skip:{skips[coord]}"
    return "lost"


def run_catalogue(rig: Rig) -> tuple[Figures, list[Case], dict[str, list[str]]]:
    from consumer.devtools.image_server import ImageServer
    from tests.service_harness import skipped_coordinates

    fig = Figures("hostile catalogue")
    t0 = time.monotonic()
    with ImageServer(rig.workdir, routes={**IMAGE_ROUTES, **EXTRA_ROUTES}) as server:
        cases = catalogue(server.base_url)
        topics = topics_for(rig, "catalogue", 1)
        group = f"g-{topics[0]}"
        records = [r for c in cases for r in c.records]
        sent = send(rig.bootstrap, topics[0], records)
        member = Member(rig, topics, group, "pod-0", "--idle-exit-s", "5",
                        ENRICH_FETCH__TOTAL_TIMEOUT_S="2", ENRICH_FETCH__MAX_BYTES="1000000",
                        ENRICH_FETCH__MAX_PIXELS="40000000")
        checker = Checker(rig.bootstrap, topics, group, 1)
        try:
            member.start()
            rc = member.wait(300)
            if rc != 0:
                fig.problems.append(f"exit code {rc}")
            inputs = read_inputs(rig.bootstrap, topics[0], 1, sent)
            checker.final(inputs, member.logs, fig)
            outs = {(0, int(dict(m.headers())["enrich.source.offset"])): m for m in checker.out.messages}
            dlq = {(0, int(dict(m.headers())["enrich.source.offset"])): m for m in checker.dlq.messages}
            skips = {(p, o): r for log in member.logs for p, o, r in skipped_coordinates(log)}
        finally:
            member.kill()
            checker.close()
    seen: dict[str, list[str]] = {}
    offset = 0
    for case in cases:
        got = []
        for want in case.expected:
            outcome = _outcome((0, offset), outs, dlq, skips)
            got.append(outcome)
            if outcome not in want.split("|"):
                fig.problems.append(f"{case.name}: offset {offset} expected {want}, got {outcome}")
            offset += 1
        seen[case.name] = got
    fig.faults = len(cases)
    fig.notes.update(cases=len(cases), records=sent, mismatches=sum("expected" in p for p in fig.problems))
    fig.wall_s = time.monotonic() - t0
    return fig, cases, seen


def main() -> int:
    if "--table" in sys.argv:
        print(table(catalogue("http://127.0.0.1:PORT")))
        return 0
    from tests.chaos.common import report, standalone_rig

    with standalone_rig(Path(f"/tmp/enrich-chaos-catalogue-{uuid.uuid4().hex[:6]}")) as rig:
        fig, cases, seen = run_catalogue(rig)
    print(table(cases, seen))
    return report(fig, zero_duplicates=True)


if __name__ == "__main__":
    sys.exit(main())
