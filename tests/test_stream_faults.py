"""The streaming core against the faults an outside check found (issue: the enriched topic must be the
catalog's true current state). Each test fails on the old core: real tansu broker, real loopback image
server, `enrich run` as a subprocess."""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from PIL import Image

from consumer.devtools.image_server import ImageServer
from consumer.devtools.produce import events_from_catalog
from models.catalog.kaggle import read_catalog
from tests.service_harness import (
    committed,
    end_offsets,
    enrich_env,
    http_get,
    http_port_from_log,
    new_topics,
    read_all,
    skipped_coordinates,
    source_coordinates,
    start_enrich,
    tail,
    wait_exit,
)

pytestmark = pytest.mark.broker


def _send(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]], partition: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000})
    for key, value in records:
        if partition is None:
            producer.produce(topic, key=key, value=value)
        else:
            producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


def _wait_for_line(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} line:\n{tail(log)}")


def _keyed(events: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(e["product_id"].encode(), orjson.dumps(e)) for e in events]


def _at(seconds: int) -> str:
    return f"2026-12-01T00:00:{seconds:02d}Z"


# ------------------------------------------------------------------------------------ latest wins
@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_slow_upsert_is_never_overtaken_final_records_are_the_tombstone_and_the_newer_version(
    mode: str, broker, tiny_bundle, sample_catalog, tmp_path
) -> None:
    images = sample_catalog.parent / "images"
    names = sorted(p.name for p in images.iterdir())
    slow_a, slow_b = names[0], names[1]
    topics = new_topics("latest", broker.bootstrap_servers, partitions=1)
    with ImageServer(images, delay_s={slow_a: 4.0, slow_b: 4.0}) as server:
        products = read_catalog(sample_catalog)[:12]
        base = events_from_catalog(products, server.base_url, updated_at=_at(0))
        deleted, updated = base[0], base[1]
        deleted["image_urls"] = [server.url_for(slow_a)]
        updated["image_urls"] = [server.url_for(slow_b)]
        for e in base[2:]:
            e["image_urls"] = [u for u in e["image_urls"] if not u.endswith((slow_a, slow_b))]
        delete = {"event_id": "del-1", "op": "delete", "retailer": deleted["retailer"],
                  "product_id": deleted["product_id"], "updated_at": _at(5)}
        newer = {**updated, "event_id": "v2", "title": updated["title"] + " v2", "image_urls": [],
                 "updated_at": _at(6)}
        # upsert(slow) ... delete; upsert(slow) ... newer upsert; filler in between
        feed = [deleted, updated, *base[2:7], delete, *base[7:], newer]
        _send(broker.bootstrap_servers, topics[0], _keyed(feed))
        env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, f"g-{topics[0]}",
                         ENRICH_EXACTLY_ONCE=str(mode == "exactly-once").lower(), POD_NAME=f"m-{mode}")
        log = tmp_path / "enrich.log"
        assert wait_exit(start_enrich(env, log, "--idle-exit-s", "3"), 180, log) == 0, tail(log)

    outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(feed) - 2)
    last = {m.key().decode(): m for m in outputs}  # what a compacted topic keeps
    tomb = last[deleted["product_id"]]
    assert tomb.value() is None, "the delete was overtaken by the slow upsert before it: product resurrected"
    headers = dict(tomb.headers() or [])
    assert headers["enrich.updated_at"] == _at(5).encode() and headers["enrich.source.offset"] == b"7"
    newest = last[updated["product_id"]]
    assert newest.value() is not None and orjson.loads(newest.value())["source_event_id"] == "v2", (
        "an older version overtook the newer one"
    )
    # the slow upserts were superseded (not downloaded to the end, not produced): documented, counted
    skipped = {(p, o): r for p, o, r in skipped_coordinates(log)}
    assert skipped == {(0, 0): "superseded", (0, 1): "superseded"}, tail(log)
    assert len(outputs) == len(feed) - 2
    assert committed(broker.bootstrap_servers, f"g-{topics[0]}", topics[0], [0]) == {0: len(feed)}


def test_stale_update_is_not_emitted_and_counted(broker, tiny_bundle, sample_catalog, image_server, tmp_path) -> None:
    topics = new_topics("stale", broker.bootstrap_servers, partitions=1)
    products = read_catalog(sample_catalog)[:6]
    events = events_from_catalog(products, image_server.base_url, updated_at=_at(30))
    late = {**events[0], "event_id": "late", "title": "an old copy", "updated_at": _at(10)}
    _send(broker.bootstrap_servers, topics[0], _keyed([*events, late]))
    log = tmp_path / "enrich.log"
    env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, f"g-{topics[0]}")
    assert wait_exit(start_enrich(env, log, "--idle-exit-s", "3"), 120, log) == 0, tail(log)
    outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(events))
    assert sorted(orjson.loads(m.value())["source_event_id"] for m in outputs) == sorted(e["event_id"] for e in events)
    assert skipped_coordinates(log) == [(0, len(events), "stale_update")]


# ------------------------------------------------------------------------------------ poison pill
def test_oversized_poison_pill_is_dead_lettered_clipped_and_the_stream_goes_on(
    broker, tiny_bundle, sample_catalog, image_server, tmp_path
) -> None:
    topics = new_topics("poison", broker.bootstrap_servers, partitions=1)
    products = read_catalog(sample_catalog)[:20]
    valid = _keyed(events_from_catalog(products, image_server.base_url))
    pill = (b"k" * 430_000, b"\x00not json at all " * 20_000)  # ~430 KB key, ~340 KB non-JSON value
    _send(broker.bootstrap_servers, topics[0], [pill, *valid])
    log = tmp_path / "enrich.log"
    env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, f"g-{topics[0]}")
    assert wait_exit(start_enrich(env, log, "--idle-exit-s", "3"), 120, log) == 0, tail(log)
    dead = read_all(broker.bootstrap_servers, topics[2], expected=1)
    assert len(dead) == 1
    body = orjson.loads(dead[0].value())
    assert body["reason"] == "not_json" and body["source"]["offset"] == 0
    assert body["source"]["key_truncated"] is True and body["source"]["key_size"] == 430_000
    assert len(dead[0].key()) == 1024 and len(dead[0].value()) < 1_000_000
    outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(valid))
    assert sorted(source_coordinates(outputs)) == [(0, o) for o in range(1, len(valid) + 1)]
    assert committed(broker.bootstrap_servers, f"g-{topics[0]}", topics[0], [0]) == {0: len(valid) + 1}


# ------------------------------------------------------------------------------------ revoke while paused
def test_partition_revoked_while_paused_is_fetched_again_when_assigned_back(
    broker, tiny_bundle, sample_catalog, tmp_path
) -> None:
    images = sample_catalog.parent / "images"
    topics = new_topics("repause", broker.bootstrap_servers, partitions=2)
    group = f"g-{topics[0]}"
    products = read_catalog(sample_catalog)
    with ImageServer(images) as server:
        server.delay_s.update({p.name: 6.0 for p in images.iterdir()})
        first = events_from_catalog(products[:8], server.base_url)
        for p in (0, 1):
            _send(broker.bootstrap_servers, topics[0], _keyed(first[p * 4 : p * 4 + 4]), partition=p)
        env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, group, ENRICH_MAX_IN_FLIGHT=2,
                         ENRICH_REVOKE_DRAIN_TIMEOUT_S=0.5, ENRICH_FETCH__TOTAL_TIMEOUT_S=30)
        log = tmp_path / "enrich.log"
        proc = start_enrich(env, log)
        deadline = time.monotonic() + 90
        while "backpressure pause" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "backpressure pause" in log.read_text(errors="replace"), tail(log)
        # a second member joins while the partitions are paused (cooperative-sticky gives it one), then leaves
        other = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": group,
                          "partition.assignment.strategy": "cooperative-sticky", "enable.auto.commit": False,
                          "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest"})
        other.subscribe([topics[0]])
        deadline = time.monotonic() + 60
        while not other.assignment() and time.monotonic() < deadline:
            other.poll(0.2)
        assert other.assignment(), tail(log)
        taken = other.assignment()[0].partition
        other.pause(other.assignment())  # never read, never commit
        for _ in range(10):
            other.poll(0.2)
        server.delay_s.clear()
        time.sleep(7)  # the slow events finish; the member resumes what it holds
        other.close()  # the partition goes back to the service
        back = f'"{topics[0]}/{taken}"'
        deadline = time.monotonic() + 60  # the partition is assigned to the service a second time
        while time.monotonic() < deadline and sum(
            '"partitions assigned"' in line and back in line for line in log.read_text(errors="replace").splitlines()
        ) < 2:
            time.sleep(0.2)
        # new events only on the partition that came back: nothing else could make the member pause and
        # resume again (which would clear a stale pause flag by accident)
        later = events_from_catalog(products[8:20], server.base_url)
        _send(broker.bootstrap_servers, topics[0], _keyed(later), partition=taken)
        outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(first) + len(later), timeout=120)
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 60, log) == 0, tail(log)
    got = set(source_coordinates(outputs))
    ends = end_offsets(broker.bootstrap_servers, topics[0], expected=len(first) + len(later))
    missing = {(p, o) for p, end in ends.items() for o in range(end)} - got
    assert not missing, f"never enriched (a partition left paused?): {sorted(missing)}\n{tail(log)}"
    assert "partitions revoked" in log.read_text()


# ------------------------------------------------------------------------------------ bounded memory
def _rss_kb(pid: int) -> int | None:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    match = re.search(r"VmRSS:\s+(\d+)", status.read_text())
    return int(match.group(1)) if match else None


def test_png_flood_keeps_rss_bounded(broker, tiny_bundle, sample_catalog, tmp_path) -> None:
    """30 products x 2 photos of 3000 x 3000 PNG (27 MB of pixels each): kept whole while in flight, that is
    1.6 GB; reduced at decode and budgeted, RSS stays within 600 MB of the service's size before the flood."""
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    gradient = Image.linear_gradient("L").resize((3000, 3000)).convert("RGB")
    for i in range(60):
        gradient.save(pngs / f"{i}.png", compress_level=1)
    topics = new_topics("pngs", broker.bootstrap_servers, partitions=1)
    with ImageServer(pngs) as server:
        events = events_from_catalog(read_catalog(sample_catalog)[:30], server.base_url)
        for i, e in enumerate(events):
            e["image_urls"] = [server.url_for(f"{2 * i}.png"), server.url_for(f"{2 * i + 1}.png")]
        log = tmp_path / "enrich.log"
        env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, f"g-{topics[0]}",
                         ENRICH_IMAGE_MEMORY_BYTES=64 * 1024 * 1024)
        proc = start_enrich(env, log, "--idle-exit-s", "3")
        port = http_port_from_log(log)
        while http_get(f"http://127.0.0.1:{port}/readyz")[0] != 200 and proc.poll() is None:
            time.sleep(0.2)
        baseline = _rss_kb(proc.pid)
        _send(broker.bootstrap_servers, topics[0], _keyed(events))
        samples = []
        while proc.poll() is None:
            rss = _rss_kb(proc.pid)
            samples += [rss] if rss else []
            time.sleep(0.05)
        assert proc.returncode == 0, tail(log)
    outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(events))
    bodies = [orjson.loads(m.value()) for m in outputs]
    assert len(bodies) == len(events) and all("image" in b["modalities"] for b in bodies)
    assert baseline and samples
    growth_mb = (max(samples) - baseline) / 1024
    print(f"PNG flood: baseline RSS {baseline / 1024:.0f} MB, peak {max(samples) / 1024:.0f} MB, "
          f"growth {growth_mb:.0f} MB over {len(samples)} samples")
    assert growth_mb < 600, f"RSS grew by {growth_mb:.0f} MB under the PNG flood"


# ------------------------------------------------------------------------------------ exactly-once scale-out
def test_two_exactly_once_members_neither_fence_each_other_nor_duplicate(
    broker, tiny_bundle, sample_catalog, image_server, tmp_path
) -> None:
    topics = new_topics("eos2", broker.bootstrap_servers, partitions=2)
    group = f"g-{topics[0]}"
    products = read_catalog(sample_catalog)
    events = events_from_catalog(products[:160], image_server.base_url)
    _send(broker.bootstrap_servers, topics[0], _keyed(events[:60]))
    base = {"ENRICH_EXACTLY_ONCE": "true", "ENRICH_SHUTDOWN_GRACE_S": 10}
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start_enrich(enrich_env(broker.bootstrap_servers, topics, tiny_bundle, group, POD_NAME="pod-a", **base), log_a)
    assert len(read_all(broker.bootstrap_servers, topics[1], expected=10, timeout=120)) >= 10, tail(log_a)
    b = start_enrich(enrich_env(broker.bootstrap_servers, topics, tiny_bundle, group, POD_NAME="pod-b", **base), log_b)
    _wait_for_line(log_b, "partitions assigned", 120)  # both members hold a partition (and a producer)
    for start in range(60, len(events), 20):
        _send(broker.bootstrap_servers, topics[0], _keyed(events[start : start + 20]))
        time.sleep(0.5)
    outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(events), timeout=180)  # read_committed
    for proc, log in ((a, log_a), (b, log_b)):
        assert proc.poll() is None, f"a member died while the other one ran:\n{tail(log)}"
        proc.send_signal(signal.SIGTERM)
    assert wait_exit(a, 60, log_a) == 0, tail(log_a)
    assert wait_exit(b, 60, log_b) == 0, tail(log_b)
    counts = Counter(source_coordinates(outputs))
    assert [c for c, n in counts.items() if n > 1] == [], "duplicates visible to a read_committed reader"
    ends = end_offsets(broker.bootstrap_servers, topics[0], expected=len(events))
    assert set(counts) == {(p, o) for p, end in ends.items() for o in range(end)}, "events lost"
    for log in (log_a, log_b):
        text = log.read_text(errors="replace")
        assert "fenced" not in text.lower(), tail(log)
        stopped = [orjson.loads(line) for line in text.splitlines() if '"event": "stopped"' in line]
        assert stopped and stopped[-1]["enriched"] > 0, f"a member did no work:\n{tail(log)}"
