"""Helpers for tests that run `enrich run` as a real subprocess against a real broker and image server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, TopicPartition

from consumer.devtools.embedded_broker import create_topics

REPO = Path(__file__).resolve().parents[1]


def new_topics(prefix: str, bootstrap: str, partitions: int) -> tuple[str, str, str]:
    """Fresh input, output and dead-letter topics (unique names, so tests share one broker)."""
    run = uuid.uuid4().hex[:8]
    topics = (f"{prefix}-{run}.in", f"{prefix}-{run}.out", f"{prefix}-{run}.dlq")
    create_topics(bootstrap, list(topics), partitions=partitions)
    return topics


def enrich_env(bootstrap: str, topics: tuple[str, str, str], bundle: Path, group: str, **extra: Any) -> dict[str, str]:
    """Environment for an `enrich run` subprocess (configuration through ENRICH_* as in production)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICH_")}
    env.update(
        {
            "ENRICH_BOOTSTRAP_SERVERS": bootstrap,
            "ENRICH_INPUT_TOPIC": topics[0],
            "ENRICH_OUTPUT_TOPIC": topics[1],
            "ENRICH_DEAD_LETTER_TOPIC": topics[2],
            "ENRICH_GROUP_ID": group,
            "ENRICH_BUNDLE": str(bundle),
            "ENRICH_FETCH__ALLOW_LOOPBACK": "true",
            "ENRICH_HTTP_PORT": "0",
            "ENRICH_COMMIT_INTERVAL_S": "0.3",
            "ENRICH_KAFKA": '{"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}',
            "ENRICH_LOG_LEVEL": "INFO",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_enrich(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "consumer", "run", *args], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
    )


def wait_exit(proc: subprocess.Popen[bytes], timeout: float, log_path: Path) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"enrich run did not exit within {timeout}s; log:\n{tail(log_path)}") from None


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def http_port_from_log(log_path: Path, timeout: float = 60.0) -> int:
    """The bound port of /metrics etc., from the service's JSON start-up log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if '"http endpoints up"' in line:
                return int(orjson.loads(line)["port"])
        time.sleep(0.2)
    raise AssertionError(f"no 'http endpoints up' line; log:\n{tail(log_path)}")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):  # the server is not (or no longer) listening
        return 0, ""


def read_all(bootstrap: str, topic: str, *, expected: int, timeout: float = 60.0) -> list[Message]:
    """Read a topic from the start (read_committed) until ``expected`` messages arrived or the timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.5):
                if msg.error() is None:
                    out.append(msg)
        # A short grace period to catch unexpected extra messages (duplicates).
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            out.extend(m for m in consumer.consume(100, 0.2) if m.error() is None)
    finally:
        consumer.close()
    return out


def committed(bootstrap: str, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        result = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in result}


def end_offsets(bootstrap: str, topic: str, *, expected: int) -> dict[int, int]:
    """Next offset after the last message of each partition, found by reading the topic.

    (tansu answers ListOffsets "latest" per record batch rather than per record, so watermarks from the
    broker would undercount; reading the messages is exact.)
    """
    ends: dict[int, int] = {}
    for msg in read_all(bootstrap, topic, expected=expected):
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
    return ends


def source_coordinates(messages: Iterable[Message]) -> list[tuple[int, int]]:
    """(partition, offset) of the input event behind each output, from the headers every output carries."""
    coords = []
    for msg in messages:
        headers = dict(msg.headers() or [])
        coords.append((int(headers["enrich.source.partition"]), int(headers["enrich.source.offset"])))
    return coords


def skipped_coordinates(log_path: Path) -> list[tuple[int, int, str]]:
    """(partition, offset, reason) of every input completed without an output (superseded, stale_update),
    from the service's "event skipped" log lines: the documented outcome of those offsets."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"event skipped"' in line:
            record = orjson.loads(line)
            out.append((int(record["partition"]), int(record["offset"]), str(record["reason"])))
    return out
