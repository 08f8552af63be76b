"""The consumer under the conditions that lose data in other systems: slow images, rebalances, SIGTERM,
floods. Real tansu broker, real loopback image server, `enrich run` as a subprocess."""

from __future__ import annotations

import re
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest

from consumer.devtools.image_server import ImageServer
from consumer.devtools.produce import events_from_catalog, produce_jsonl
from models.catalog.kaggle import read_catalog
from tests.service_harness import (
    committed,
    end_offsets,
    enrich_env,
    http_get,
    http_port_from_log,
    new_topics,
    read_all,
    source_coordinates,
    start_enrich,
    tail,
    wait_exit,
)

pytestmark = pytest.mark.broker


def _events(sample_catalog: Path, base_url: str, n: int) -> list[dict]:
    products = read_catalog(sample_catalog)
    events = events_from_catalog(products, base_url)
    while len(events) < n:  # reuse products under new ids when the sample is smaller than n
        for e in events_from_catalog(products, base_url):
            e["product_id"] = f"{e['product_id']}-{len(events)}"
            e["event_id"] = f"{e['event_id']}-{len(events)}"
            events.append(e)
    return events[:n]


def _produce(bootstrap: str, topic: str, events: list[dict], tmp_path: Path) -> int:
    feed = tmp_path / f"feed-{uuid.uuid4().hex[:6]}.jsonl"
    feed.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    return produce_jsonl(bootstrap, topic, feed)


def _feeder(bootstrap: str, topic: str, events: list[dict], tmp_path: Path) -> threading.Thread:
    """A steady feed (20 events every 0.4 s), so that stops and rebalances happen mid-stream."""

    def stream() -> None:
        for start in range(0, len(events), 20):
            _produce(bootstrap, topic, events[start : start + 20], tmp_path)
            time.sleep(0.4)

    return threading.Thread(target=stream, daemon=True)


def _wait_for_line(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in (log.read_text(errors="replace") if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert text in log.read_text(errors="replace"), tail(log)


def _count_outputs(bootstrap: str, topic: str, expected: int, timeout: float) -> int:
    return len(read_all(bootstrap, topic, expected=expected, timeout=timeout))


def test_slow_image_for_early_offset_holds_back_the_commit(broker, tiny_bundle, sample_catalog, tmp_path) -> None:
    images = sample_catalog.parent / "images"
    first_image = sorted(images.iterdir())[0].name
    topics = new_topics("slow", broker.bootstrap_servers, partitions=1)
    with ImageServer(images, delay_s={first_image: 8.0}) as server:
        events = _events(sample_catalog, server.base_url, 30)
        events[0]["image_urls"] = [f"{server.base_url}/images/{first_image}"]
        for e in events[1:]:
            e["image_urls"] = [u for u in e["image_urls"] if not u.endswith(first_image)]
        _produce(broker.bootstrap_servers, topics[0], events, tmp_path)
        group = f"g-{topics[0]}"
        log = tmp_path / "enrich.log"
        proc = start_enrich(
            enrich_env(broker.bootstrap_servers, topics, tiny_bundle, group, ENRICH_FETCH__TOTAL_TIMEOUT_S=30),
            log,
            "--idle-exit-s",
            "3",
        )
        # The 29 later events are enriched and delivered while the first one's image is still downloading...
        later = read_all(broker.bootstrap_servers, topics[1], expected=29, timeout=120)
        assert len(later) >= 29, tail(log)
        assert (0, 0) not in source_coordinates(later) or len(later) == 30
        if len(later) == 29:
            # ...and yet nothing past offset 0 may be committed: the slow offset 0 holds the commit back.
            time.sleep(1.0)  # several commit intervals
            assert committed(broker.bootstrap_servers, group, topics[0], [0])[0] < 1
        assert wait_exit(proc, 120, log) == 0, tail(log)
    assert committed(broker.bootstrap_servers, group, topics[0], [0]) == {0: 30}


def test_member_joining_and_leaving_mid_stream_loses_nothing(
    broker, tiny_bundle, sample_catalog, image_server, tmp_path
):
    topics = new_topics("rebalance", broker.bootstrap_servers, partitions=4)
    group = f"g-{topics[0]}"
    events = _events(sample_catalog, image_server.base_url, 360)
    env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, group)
    feeder = _feeder(broker.bootstrap_servers, topics[0], events, tmp_path)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    first = start_enrich(env, log_a)
    feeder.start()
    assert _count_outputs(broker.bootstrap_servers, topics[1], 40, 120) >= 40, tail(log_a)
    second = start_enrich(env, log_b, "--idle-exit-s", "6")  # joins: cooperative rebalance
    time.sleep(6)
    first.send_signal(signal.SIGTERM)  # leaves mid-stream: its partitions move to the second member
    assert wait_exit(first, 60, log_a) == 0, tail(log_a)
    feeder.join()
    assert wait_exit(second, 240, log_b) == 0, tail(log_b)

    outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(events), timeout=60)
    ends = end_offsets(broker.bootstrap_servers, topics[0], expected=len(events))
    expected = {(p, o) for p, end in ends.items() for o in range(end)}
    got = Counter(source_coordinates(outputs))
    assert expected - set(got) == set(), "events lost across rebalances"
    assert sum(ends.values()) == len(events)
    assert committed(broker.bootstrap_servers, group, topics[0], range(4)) == ends
    assert "partitions assigned" in log_b.read_text() and "partitions revoked" in log_a.read_text()


def test_sigterm_mid_stream_exits_in_grace_and_restart_has_no_duplicates(
    broker, tiny_bundle, sample_catalog, image_server, tmp_path
) -> None:
    topics = new_topics("sigterm", broker.bootstrap_servers, partitions=3)
    group = f"g-{topics[0]}"
    events = _events(sample_catalog, image_server.base_url, 400)
    feeder = _feeder(broker.bootstrap_servers, topics[0], events, tmp_path)
    env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, group, ENRICH_SHUTDOWN_GRACE_S=10)
    log = tmp_path / "first.log"
    proc = start_enrich(env, log)
    _wait_for_line(log, "partitions assigned", 120)  # feed only once it consumes, so SIGTERM lands mid-stream
    feeder.start()
    assert _count_outputs(broker.bootstrap_servers, topics[1], 60, 120) >= 60, tail(log)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 30, log) == 0, tail(log)
    assert time.monotonic() - started < 10.0, "shutdown exceeded the grace period"
    partial = len(read_all(broker.bootstrap_servers, topics[1], expected=len(events), timeout=3))
    assert partial < len(events), "the stream was already finished before SIGTERM; the test proves nothing"
    feeder.join()

    log2 = tmp_path / "second.log"
    assert wait_exit(start_enrich(env, log2, "--idle-exit-s", "4"), 240, log2) == 0, tail(log2)
    outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(events), timeout=60)
    counts = Counter(source_coordinates(outputs))
    assert len(counts) == len(events), "events lost"
    assert [c for c, n in counts.items() if n > 1] == [], "duplicates after restart"


def test_flood_pauses_partitions_bounds_in_flight_and_loses_nothing(
    broker, tiny_bundle, sample_catalog, image_server, tmp_path
) -> None:
    topics = new_topics("flood", broker.bootstrap_servers, partitions=2)
    events = _events(sample_catalog, image_server.base_url, 500)
    _produce(broker.bootstrap_servers, topics[0], events, tmp_path)
    log = tmp_path / "enrich.log"
    env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, f"g-{topics[0]}", ENRICH_MAX_IN_FLIGHT=24)
    proc = start_enrich(env, log, "--idle-exit-s", "3")
    port = http_port_from_log(log)
    in_flight_seen, paused_seen, rss_kb = [], [], []
    while proc.poll() is None:
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        if status == 200:
            in_flight_seen += [float(v) for v in re.findall(r"^enrich_in_flight_events (\S+)$", body, re.M)]
            paused_seen += [float(v) for v in re.findall(r"^enrich_paused_partitions (\S+)$", body, re.M)]
        status_file = Path(f"/proc/{proc.pid}/status")
        if status_file.exists():
            match = re.search(r"VmRSS:\s+(\d+)", status_file.read_text())
            rss_kb += [int(match.group(1))] if match else []
        time.sleep(0.05)
    assert proc.returncode == 0, tail(log)
    assert in_flight_seen and max(in_flight_seen) <= 24
    assert max(paused_seen) > 0, "partitions were never paused under a flood"
    outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(events), timeout=60)
    assert len(set(source_coordinates(outputs))) == len(events)
    # Memory: once the model is loaded, RSS must not grow with the backlog (500 events queued).
    steady = rss_kb[len(rss_kb) // 3 :]
    assert steady and max(steady) - min(steady) < 300_000, f"RSS grew from {min(steady)} to {max(steady)} kB"


def test_metrics_and_health_endpoints_over_http(broker, tiny_bundle, sample_catalog, image_server, tmp_path) -> None:
    topics = new_topics("metrics", broker.bootstrap_servers, partitions=2)
    events = _events(sample_catalog, image_server.base_url, 60)
    events[0]["image_urls"] = [image_server.base_url + "/images/missing.jpg"]
    _produce(broker.bootstrap_servers, topics[0], events, tmp_path)
    log = tmp_path / "enrich.log"
    env = enrich_env(
        broker.bootstrap_servers,
        topics,
        tiny_bundle,
        f"g-{topics[0]}",
        ENRICH_KAFKA='{"session.timeout.ms": "6000", "statistics.interval.ms": "500"}',
        ENRICH_GIT_REVISION="0123456789abcdef",  # as the image build sets it (an ENRICH_* that is no setting)
    )
    proc = start_enrich(env, log)
    try:
        port = http_port_from_log(log)
        assert http_get(f"http://127.0.0.1:{port}/livez")[0] == 200
        assert read_all(broker.bootstrap_servers, topics[1], expected=60, timeout=120)
        deadline = time.monotonic() + 30
        while http_get(f"http://127.0.0.1:{port}/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, why = http_get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and "partitions assigned" in why
        def scrape() -> dict[str, float]:
            status, body = http_get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            # "name{labels} value": label values may hold spaces ("casual shoes"), the value never does
            samples = (line.rsplit(" ", 1) for line in body.splitlines() if line and line[0] != "#")
            return {name: float(value) for name, value in samples}

        # the lag gauge follows the last commit (1 s interval) and its own refresh: on a loaded machine give
        # both a few turns to show a drained input, rather than one fixed second
        deadline = time.monotonic() + 30
        while True:
            metrics = scrape()
            lag_now = [v for k, v in metrics.items() if k.startswith("enrich_consumer_lag_messages{")]
            if (len(lag_now) == 2 and not any(lag_now)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert metrics[f'enrich_events_in_total{{topic="{topics[0]}"}}'] == 60
        assert metrics['enrich_events_out_total{kind="enriched"}'] == 60
        assert metrics['enrich_image_fetches_total{status="http_error"}'] >= 1
        assert metrics['enrich_image_fetches_total{status="ok"}'] >= 1
        assert metrics['enrich_batch_size_count{model="text"}'] >= 1
        assert metrics["enrich_assigned_partitions"] == 2
        assert any(k.startswith("enrich_model_info{") and "version=" in k for k in metrics)
        assert metrics['enrich_commits_total{outcome="ok"}'] >= 1
        assert any(k.startswith("enrich_end_to_end_seconds_count") for k in metrics)
        lag = {k: v for k, v in metrics.items() if k.startswith("enrich_consumer_lag_messages{")}
        assert len(lag) == 2 and all(v == 0 for v in lag.values()), lag  # from librdkafka statistics
        # the standard process metrics, on the service's own registry
        assert metrics["process_resident_memory_bytes"] > 50e6  # torch and the bundle are loaded
        assert metrics["process_open_fds"] > 0 and metrics["process_cpu_seconds_total"] > 0
        assert metrics["process_start_time_seconds"] > 0 and any(k.startswith("python_info{") for k in metrics)
        import torch

        build = [k for k in metrics if k.startswith("enrich_build_info{")]
        assert len(build) == 1 and metrics[build[0]] == 1, build
        labels = dict(re.findall(r'(\w+)="([^"]*)"', build[0]))
        assert labels.pop("device") in ("cpu", "cuda") and labels.pop("version") not in ("", "unknown")
        assert labels == {"revision": "0123456789abcdef", "torch_version": torch.__version__}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 30, log) == 0, tail(log)
    lines = [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all("timestamp" in rec and "level" in rec for rec in lines)


def test_exactly_once_mode_outputs_each_event_once_with_offsets_in_the_transaction(
    broker, tiny_bundle, sample_catalog, image_server, tmp_path
) -> None:
    topics = new_topics("eos", broker.bootstrap_servers, partitions=2)
    group = f"g-{topics[0]}"
    events = _events(sample_catalog, image_server.base_url, 240)
    feeder = _feeder(broker.bootstrap_servers, topics[0], events, tmp_path)
    env = enrich_env(
        broker.bootstrap_servers,
        topics,
        tiny_bundle,
        group,
        ENRICH_EXACTLY_ONCE="true",
        ENRICH_TRANSACTIONAL_ID=f"tx-{topics[0]}",
        ENRICH_SHUTDOWN_GRACE_S=10,
    )
    log = tmp_path / "first.log"
    proc = start_enrich(env, log)
    feeder.start()
    assert _count_outputs(broker.bootstrap_servers, topics[1], 40, 120) >= 40, tail(log)
    proc.send_signal(signal.SIGTERM)  # stop mid-stream, then resume from the transactionally committed offsets
    assert wait_exit(proc, 30, log) == 0, tail(log)
    feeder.join()
    log2 = tmp_path / "second.log"
    assert wait_exit(start_enrich(env, log2, "--idle-exit-s", "4"), 240, log2) == 0, tail(log2)
    outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(events), timeout=60)  # read_committed
    counts = Counter(source_coordinates(outputs))
    assert len(counts) == len(events), "events lost"
    assert [c for c, n in counts.items() if n > 1] == [], "duplicates visible to read_committed readers"
    ends = end_offsets(broker.bootstrap_servers, topics[0], expected=len(events))
    assert committed(broker.bootstrap_servers, group, topics[0], range(2)) == ends


def test_mostly_invalid_input_stops_the_consumer_loudly(broker, tiny_bundle, tmp_path) -> None:
    topics = new_topics("dlqrate", broker.bootstrap_servers, partitions=1)
    feed = tmp_path / "garbage.jsonl"
    feed.write_bytes(b"\n".join(b"{broken %d" % i for i in range(120)) + b"\n")
    produce_jsonl(broker.bootstrap_servers, topics[0], feed)
    log = tmp_path / "enrich.log"
    env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, f"g-{topics[0]}", ENRICH_DLQ_WINDOW=20)
    assert wait_exit(start_enrich(env, log), 120, log) == 3, tail(log)
    assert "dead-letter rate exceeded" in log.read_text()


def test_member_frozen_past_its_session_loses_partitions_without_committing(
    broker, tiny_bundle, sample_catalog, image_server, tmp_path
) -> None:
    """SIGSTOP a member longer than its session: the group gives its partitions to another member; when it
    wakes, librdkafka reports the assignment *lost*, and the member must discard that work and never commit it
    (the new owner's commits must not be overwritten). Nothing may be lost; duplicates are allowed."""
    topics = new_topics("lost", broker.bootstrap_servers, partitions=2)
    group = f"g-{topics[0]}"
    events = _events(sample_catalog, image_server.base_url, 240)
    env = enrich_env(broker.bootstrap_servers, topics, tiny_bundle, group)
    feeder = _feeder(broker.bootstrap_servers, topics[0], events, tmp_path)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    first = start_enrich(env, log_a)
    feeder.start()
    assert _count_outputs(broker.bootstrap_servers, topics[1], 30, 120) >= 30, tail(log_a)
    first.send_signal(signal.SIGSTOP)  # no heartbeats: its session (6 s) expires
    try:
        second = start_enrich(env, log_b, "--idle-exit-s", "8")
        _wait_for_line(log_b, "partitions assigned", 90)
    finally:
        first.send_signal(signal.SIGCONT)
    _wait_for_line(log_a, "partitions lost", 60)
    feeder.join()
    assert wait_exit(second, 240, log_b) == 0, tail(log_b)
    first.send_signal(signal.SIGTERM)
    assert wait_exit(first, 60, log_a) == 0, tail(log_a)

    outputs = read_all(broker.bootstrap_servers, topics[1], expected=len(events), timeout=60)
    ends = end_offsets(broker.bootstrap_servers, topics[0], expected=len(events))
    assert set(source_coordinates(outputs)) == {(p, o) for p, end in ends.items() for o in range(end)}
    assert committed(broker.bootstrap_servers, group, topics[0], range(2)) == ends
