"""enrich replay against the real broker, real image server and real model (tests/conftest.py fixtures).

Inputs are produced with a plain idempotent producer (batched: the replay finds each partition's end by
reading to partition EOF, not by ListOffsets, which tansu answers per record batch); what each test expects
is computed from the delivery reports (partition, offset, timestamp of every input), never hard-coded.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from typer.testing import CliRunner

from consumer.cli import app
from consumer.devtools.embedded_broker import create_topics
from consumer.devtools.produce import events_from_catalog
from models.catalog.kaggle import read_catalog
from models.verify import reseal_bundle
from tests.service_harness import REPO, committed, enrich_env, read_all, skipped_coordinates, source_coordinates, tail

pytestmark = pytest.mark.broker

PARTITIONS = 3
LIVE_GROUP = "live"


def _topics(prefix: str) -> tuple[str, str, str]:
    run = uuid.uuid4().hex[:8]
    return (f"{prefix}-{run}.in", f"{prefix}-{run}.out", f"{prefix}-{run}.dlq")


def produce(bootstrap: str, topic: str, events: list[dict[str, Any] | bytes],
            timestamps: list[int | None] | None = None) -> list[tuple[int, int, int]]:
    """Send events keyed by product id; returns (partition, offset, timestamp ms) per event, in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    got: dict[int, tuple[int, int, int]] = {}

    def report(index: int):
        def on_delivery(err: Any, msg: Message) -> None:
            assert err is None, err
            got[index] = (msg.partition(), msg.offset(), msg.timestamp()[1])
        return on_delivery

    for i, event in enumerate(events):
        value = event if isinstance(event, bytes) else orjson.dumps(event)
        key = None if isinstance(event, bytes) else event["product_id"].encode()
        kwargs = {"timestamp": timestamps[i]} if timestamps and timestamps[i] is not None else {}
        producer.produce(topic, value=value, key=key, on_delivery=report(i), **kwargs)
        producer.poll(0)
    assert producer.flush(30) == 0
    return [got[i] for i in range(len(events))]


def versioned_feed(catalog: Path, base_url: str, products: int, versions: int, deletes: int
                   ) -> tuple[list[dict[str, Any]], set[str]]:
    """``versions`` upserts of each product (titles differ per version, updated_at increasing), one round at
    a time, then a delete of the last ``deletes`` products."""
    items = read_catalog(catalog)[:products]
    events: list[dict[str, Any]] = []
    for v in range(versions):
        for event in events_from_catalog(items, base_url, updated_at=f"2026-11-2{v}T00:00:00Z"):
            events.append({**event, "title": f"{event['title']} v{v}" if v else event["title"]})
    deleted = {e["product_id"] for e in events[-deletes:]} if deletes else set()
    for i, product in enumerate(sorted(deleted)):
        events.append({"event_id": f"del-{i}", "op": "delete", "retailer": "demo-retailer", "product_id": product,
                       "updated_at": "2026-11-29T00:00:00Z"})
    return events, deleted


def newest(events: list[dict[str, Any]], coords: list[tuple[int, int, int]]) -> dict[str, tuple[int, int]]:
    """Per product, the (partition, offset) of its newest input (these feeds: the last one produced)."""
    out: dict[str, tuple[int, int]] = {}
    for event, (p, o, _) in zip(events, coords, strict=True):
        if isinstance(event, dict):
            out[event["product_id"]] = (p, o)
    return out


def start_replay(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    out = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", "consumer", "replay", *args], env=env, cwd=REPO, stdout=out,
                            stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"enrich replay did not stop by itself within {timeout}s:\n{tail(log_path)}") from None


def summary(log_path: Path) -> dict[str, Any]:
    lines = [orjson.loads(line) for line in log_path.read_text().splitlines() if '"replay summary"' in line]
    assert lines, tail(log_path)
    return lines[-1]


def replay_env(broker, topics, bundle: Path, **extra: Any) -> dict[str, str]:
    return enrich_env(broker.bootstrap_servers, topics, bundle, group=LIVE_GROUP, **extra)


def bundle_version(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["version"]


def ends(coords: list[tuple[int, int, int]]) -> dict[int, int]:
    out = dict.fromkeys(range(PARTITIONS), 0)
    for p, o, _ in coords:
        out[p] = max(out[p], o + 1)
    return out


# ------------------------------------------------------------------------------------------ the replay
def test_replay_enriches_the_newest_input_of_each_product_once_and_stops(
    broker, tiny_bundle: Path, sample_catalog: Path, image_server, tmp_path: Path
) -> None:
    topics = _topics("replay")
    create_topics(broker.bootstrap_servers, list(topics), partitions=PARTITIONS)
    events, deleted = versioned_feed(sample_catalog, image_server.base_url, products=70, versions=3, deletes=8)
    events.append(b"{not json")  # an invalid input: not a product version, not replayed
    coords = produce(broker.bootstrap_servers, topics[0], events)
    keep = newest(events, coords)
    assert len(events) >= 200

    log = tmp_path / "replay.log"
    code = finish(start_replay(replay_env(broker, topics, tiny_bundle), log, "--bundle", str(tiny_bundle),
                               "--from-beginning"), log)
    assert code == 0, tail(log)

    out = read_all(broker.bootstrap_servers, topics[1], expected=len(keep))
    assert sorted(source_coordinates(out)) == sorted(keep.values())  # exactly one output per replayed input
    version = bundle_version(tiny_bundle)
    bodies = [orjson.loads(m.value()) for m in out if m.value() is not None]
    assert bodies and all(b["model"]["version"] == version for b in bodies)
    assert {m.key().decode() for m in out if m.value() is None} == deleted
    assert not read_all(broker.bootstrap_servers, topics[2], expected=0, timeout=2)  # nothing dead-lettered
    skipped = skipped_coordinates(log)
    assert sorted((p, o) for p, o, _ in skipped) == sorted(
        (p, o) for p, o, _ in coords if (p, o) not in set(keep.values()))
    assert {r for *_, r in skipped} == {"replay_not_latest"}

    s = summary(log)
    assert s["exit_code"] == 0 and s["complete"] is True and s["group"] == f"{LIVE_GROUP}-replay-{version}"
    assert {int(p): v["end"] for p, v in s["plan"]["partitions"].items()} == ends(coords)
    assert s["enriched"] + s["tombstones"] == len(keep) and s["skipped"]["replay_not_latest"] == len(skipped)
    assert committed(broker.bootstrap_servers, s["group"], topics[0], range(PARTITIONS)) == ends(coords)
    live = committed(broker.bootstrap_servers, LIVE_GROUP, topics[0], range(PARTITIONS))
    assert all(o < 0 for o in live.values())  # the live group was never touched
    assert "replay progress" in log.read_text()  # not a terminal: progress as log lines


def test_replay_killed_halfway_resumes_from_its_commits_without_loss(
    broker, tiny_bundle: Path, sample_catalog: Path, image_server, tmp_path: Path
) -> None:
    topics = _topics("replay-kill")
    create_topics(broker.bootstrap_servers, list(topics), partitions=PARTITIONS)
    events, _ = versioned_feed(sample_catalog, image_server.base_url, products=60, versions=2, deletes=4)
    coords = produce(broker.bootstrap_servers, topics[0], events)
    keep = set(newest(events, coords).values())

    log = tmp_path / "replay.log"
    env = replay_env(broker, topics, tiny_bundle)
    proc = start_replay(env, log, "--bundle", str(tiny_bundle), "--from-beginning", "--max-rate", "6")
    deadline = time.monotonic() + 180
    seen: list[Message] = []
    while len(seen) < len(keep) // 3 and time.monotonic() < deadline and proc.poll() is None:
        seen = read_all(broker.bootstrap_servers, topics[1], expected=len(keep) // 3, timeout=3)
    assert proc.poll() is None, "the replay ended before it could be killed:\n" + tail(log)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_plan = next(orjson.loads(x) for x in log.read_text().splitlines() if '"replay plan"' in x)

    # other products written after the first start: past its end offsets, not replayed by the second run
    produce(broker.bootstrap_servers, topics[0],
            events_from_catalog(read_catalog(sample_catalog)[60:65], image_server.base_url, updated_at=None))
    log2 = tmp_path / "replay2.log"
    assert finish(start_replay(env, log2, "--bundle", str(tiny_bundle), "--from-beginning"), log2) == 0, tail(log2)

    s = summary(log2)
    assert s["plan"]["resumed"] is True
    assert s["plan"]["partitions"] == first_plan["partitions"]  # the first run's end offsets, kept
    resumed_at = {int(p): o for p, o in s["plan"]["position"].items()}  # the first run's commits
    plan = {int(p): v for p, v in s["plan"]["partitions"].items()}
    assert any(resumed_at[p] > plan[p]["start"] for p in plan), resumed_at  # resumed part-way, not from scratch
    assert any(resumed_at[p] < plan[p]["end"] for p in plan), resumed_at
    out = read_all(broker.bootstrap_servers, topics[1], expected=len(keep))
    got = source_coordinates(out)
    assert set(got) >= keep  # no loss
    assert set(got) <= keep  # nothing else (at-least-once: an output redone after the kill is a duplicate)
    version = bundle_version(tiny_bundle)
    assert all(orjson.loads(m.value())["model"]["version"] == version for m in out if m.value() is not None)


def test_from_and_to_timestamp_start_and_stop_at_the_right_offsets(
    broker, tiny_bundle: Path, sample_catalog: Path, image_server, tmp_path: Path
) -> None:
    topics = _topics("replay-time")
    create_topics(broker.bootstrap_servers, list(topics), partitions=PARTITIONS)
    items = read_catalog(sample_catalog)[:45]
    t0 = 1_790_000_000_000
    groups = [events_from_catalog(items[i * 15:(i + 1) * 15], image_server.base_url,
                                  updated_at=f"2026-11-2{i}T00:00:00Z") for i in range(3)]
    again = {**groups[1][0], "event_id": "newer", "updated_at": "2026-11-28T00:00:00Z"}  # B's first, updated in C
    events = groups[0] + groups[1] + groups[2] + [again]
    stamps = [t0 + 1000 * (i // 15) * 60 + i for i in range(45)] + [t0 + 120_000 + 999]
    coords = produce(broker.bootstrap_servers, topics[0], events, stamps)
    window = (t0 + 60_000, t0 + 60_000 + 29)  # exactly group B's stamps
    in_b = [(p, o) for (p, o, ts) in coords if window[0] <= ts <= window[1]]
    assert len(in_b) == 15
    starts = {p: min((o for q, o, ts in coords if q == p and ts >= window[0]), default=None) for p in range(PARTITIONS)}
    stops = {p: min((o for q, o, ts in coords if q == p and ts > window[1]), default=None) for p in range(PARTITIONS)}

    log = tmp_path / "replay.log"
    to_iso = datetime.fromtimestamp(window[1] / 1000, UTC).isoformat(timespec="milliseconds")  # both forms
    group = "r-" + topics[0]
    args = ("--bundle", str(tiny_bundle), "--from-timestamp", str(window[0]), "--to-timestamp", to_iso,
            "--replay-group", group)
    assert finish(start_replay(replay_env(broker, topics, tiny_bundle), log, *args), log) == 0, tail(log)
    s = summary(log)
    for p, v in s["plan"]["partitions"].items():
        assert v["start"] == starts[int(p)] and v["end"] == stops[int(p)], (p, v, starts, stops)
    updated = coords[15][:2]  # B's first product has a newer input past the end: left to the live consumer
    assert s["plan"]["products_newer_past_end"] == 1
    out = read_all(broker.bootstrap_servers, topics[1], expected=14)
    assert sorted(source_coordinates(out)) == sorted(c for c in in_b if c != updated)

    other = tmp_path / "other.log"  # the same group asked for another range: refused, never a mixed resume
    proc = start_replay(replay_env(broker, topics, tiny_bundle), other, "--bundle", str(tiny_bundle),
                        "--from-timestamp", str(window[0] - 1), "--to-timestamp", to_iso, "--replay-group", group)
    assert finish(proc, other) == 2 and "a replay of another range" in other.read_text(), tail(other)


def test_max_rate_holds_the_rate_within_ten_percent(
    broker, tiny_bundle: Path, sample_catalog: Path, image_server, tmp_path: Path
) -> None:
    topics = _topics("replay-rate")
    create_topics(broker.bootstrap_servers, list(topics), partitions=PARTITIONS)
    events = events_from_catalog(read_catalog(sample_catalog)[:60], image_server.base_url,
                                 updated_at="2026-11-24T00:00:00Z")
    produce(broker.bootstrap_servers, topics[0], events)
    log = tmp_path / "replay.log"
    rate = 8.0
    proc = start_replay(replay_env(broker, topics, tiny_bundle), log, "--bundle", str(tiny_bundle),
                        "--from-beginning", "--max-rate", str(rate))
    assert finish(proc, log) == 0, tail(log)
    out = read_all(broker.bootstrap_servers, topics[1], expected=len(events))
    assert len(out) == len(events)
    stamps = sorted(m.timestamp()[1] for m in out)  # producer create time of each output, ms
    measured = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1000)
    print(f"max-rate {rate}/s: measured {measured:.2f}/s over {len(stamps)} outputs")
    assert rate * 0.9 <= measured <= rate * 1.1


def test_a_newer_live_update_stays_the_last_record_of_its_product(
    broker, tiny_bundle: Path, sample_catalog: Path, image_server, tmp_path: Path
) -> None:
    """The live consumer (a real `enrich run`, started at the end offsets) answers an update written while the
    replay runs; the replay, which had that product still to do, leaves it alone."""
    topics = _topics("replay-live")
    create_topics(broker.bootstrap_servers, list(topics), partitions=PARTITIONS)
    events = events_from_catalog(read_catalog(sample_catalog)[:40], image_server.base_url,
                                 updated_at="2026-11-24T00:00:00Z")
    coords = produce(broker.bootstrap_servers, topics[0], events)
    target = events[-1]  # the last input of its partition: the replay gets to it last
    # the live consumer has already processed the history: its group committed at the end offsets
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": LIVE_GROUP + topics[0]})
    consumer.commit(offsets=[TopicPartition(topics[0], p, o) for p, o in ends(coords).items()], asynchronous=False)
    consumer.close()
    live_log = tmp_path / "live.log"
    live = subprocess.Popen([sys.executable, "-m", "consumer", "run", "--idle-exit-s", "15"],
                            env=enrich_env(broker.bootstrap_servers, topics, tiny_bundle, group=LIVE_GROUP + topics[0]),
                            cwd=REPO, stdout=live_log.open("ab"), stderr=subprocess.STDOUT)
    log = tmp_path / "replay.log"
    replay = start_replay(replay_env(broker, topics, tiny_bundle), log, "--bundle", str(tiny_bundle),
                          "--from-beginning", "--replay-group", "r-" + topics[0], "--max-rate", "4")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ('"replaying"' in log.read_text()
                                               and '"partitions assigned"' in live_log.read_text()):
        time.sleep(0.3)
    newer = {**target, "event_id": "live-update", "title": target["title"] + " (new)",
             "updated_at": "2026-11-25T00:00:00Z"}
    (p_new, o_new, _), = produce(broker.bootstrap_servers, topics[0], [newer])
    assert finish(replay, log) == 0, tail(log)
    live.wait(180)
    out = read_all(broker.bootstrap_servers, topics[1], expected=len(events))
    mine = [m for m in out if m.key().decode() == target["product_id"]]
    assert mine, tail(live_log)
    assert source_coordinates(mine[-1:]) == [(p_new, o_new)]  # the live answer is the product's last record
    s = summary(log)
    assert s["skipped"].get("replay_newer_live") == 1 and s["live_updates_seen"] == 1
    assert len(out) == len(events)  # every other product replayed, plus the one live output


# ------------------------------------------------------------------------------------------ dry run
def _strict_colour_copy(bundle: Path, out: Path) -> Path:
    """A deliberately different bundle: colour needs a confidence of 1.0 (every colour value becomes null
    below it), resealed so that it verifies."""
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["thresholds"]["color"] = dict.fromkeys(manifest["thresholds"]["color"], 1.0)
    (out / "manifest.json").write_text(json.dumps(manifest))
    reseal_bundle(out)
    return out


def test_dry_run_counts_exactly_the_changes_of_a_different_bundle(
    broker, tiny_bundle: Path, sample_catalog: Path, image_server, tmp_path: Path
) -> None:
    topics = _topics("replay-dry")
    create_topics(broker.bootstrap_servers, list(topics), partitions=PARTITIONS)
    events, deleted = versioned_feed(sample_catalog, image_server.base_url, products=40, versions=2, deletes=3)
    produce(broker.bootstrap_servers, topics[0], events)
    env = replay_env(broker, topics, tiny_bundle)
    log = tmp_path / "replay.log"  # the enriched topic as readers see it: replayed with the current bundle
    assert finish(start_replay(env, log, "--bundle", str(tiny_bundle), "--from-beginning"), log) == 0, tail(log)
    current = read_all(broker.bootstrap_servers, topics[1], expected=40)
    latest = {m.key().decode(): m.value() for m in current}
    colours = {k: orjson.loads(v)["attributes"]["color"] for k, v in latest.items() if v is not None}
    expected = sorted((c["value"], None) for c in colours.values() if c["value"] is not None and c["confidence"] < 1)
    assert expected  # the comparison below has something to count

    strict = _strict_colour_copy(tiny_bundle, tmp_path / "strict")
    for baseline in (topics[1], str(tiny_bundle)):
        report_dir = tmp_path / f"report-{len(baseline)}"
        result = subprocess.run(
            [sys.executable, "-m", "consumer", "replay", "--bundle", str(strict), "--from-beginning", "--dry-run",
             "--compare-to", baseline, "--report", str(report_dir)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        report = json.loads((report_dir / "compare.json").read_text())
        assert (report_dir / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "changes per attribute" in result.stdout
        colour = report["attributes"]["color"]
        assert colour["changed"] == colour["value_to_null"] == len(expected)
        assert colour["null_to_value"] == colour["value_to_value"] == 0
        assert sorted((x["old"], x["new"]) for x in colour["pairs"] for _ in range(x["count"])) == expected
        assert all(a["changed"] == 0 for name, a in report["attributes"].items() if name != "color")
        assert report["products"]["compared"] == 40 - len(deleted)
        assert report["products"]["changed"] == len(expected)
        assert report["products"]["deleted_in_both"] == len(deleted)
    # nothing was produced, nothing committed by the dry runs
    assert len(read_all(broker.bootstrap_servers, topics[1], expected=41, timeout=3)) == 40


# ------------------------------------------------------------------------------------------ bundle check
def test_a_tampered_bundle_is_refused_by_replay_run_and_check_config(tiny_bundle: Path, tmp_path: Path) -> None:
    from models.verify import BundleVerificationError, verify_bundle

    assert verify_bundle(tiny_bundle) == bundle_version(tiny_bundle)
    edited = tmp_path / "edited"
    shutil.copytree(tiny_bundle, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["thresholds"]["color"]["text"] = 0.01  # a hand edit, version left as it was
    (edited / "manifest.json").write_text(json.dumps(manifest))
    cut = tmp_path / "half-copied"
    shutil.copytree(tiny_bundle, cut)
    weights = cut / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    env = enrich_env("127.0.0.1:1", ("a", "b", "c"), edited, "g")
    result = subprocess.run([sys.executable, "-m", "consumer", "replay", "--bundle", str(edited), "--from-beginning"],
                            capture_output=True, text=True, timeout=120, cwd=REPO, env=env)  # as a process
    assert result.returncode == 2 and "bundle refused" in result.stderr and "does not match" in result.stderr
    cli = CliRunner()
    for bad in (edited, cut):
        with pytest.raises(BundleVerificationError, match="does not match"):
            verify_bundle(bad)
        for args in (["replay", "--bundle", str(bad), "--from-beginning"], ["run", "--bundle", str(bad)],
                     ["check-config", "--bundle", str(bad)]):
            got = cli.invoke(app, args, env={"ENRICH_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
            assert got.exit_code == 2, (args, got.output[-2000:])
            assert "bundle refused" in got.output and "does not match" in got.output
    same_group = subprocess.run(  # the replay never joins the live group
        [sys.executable, "-m", "consumer", "replay", "--bundle", str(tiny_bundle), "--from-beginning",
         "--replay-group", "g"], capture_output=True, text=True, timeout=120, cwd=REPO,
        env=enrich_env("127.0.0.1:1", ("a", "b", "c"), tiny_bundle, "g"))
    assert same_group.returncode == 2 and "live group" in same_group.stderr
    with pytest.raises(BundleVerificationError, match="does not match"):
        from models.bundle import Bundle

        Bundle.load(edited, device="cpu")
    assert reseal_bundle(edited) != bundle_version(tiny_bundle)  # a deliberate edit gets a version of its own
    assert verify_bundle(edited) == bundle_version(edited)
