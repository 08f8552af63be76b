"""Shared parts of the chaos scenarios (issue 11): the rig (real tansu broker, real image server, a real
model bundle), the keyed workload with several versions per product and deletes, and the one invariant
checker every scenario runs afterwards with a reader of its own.

Invariants (docs/reliability.md):

* **nothing lost**: every input offset has an enriched record, a tombstone, a dead letter, or a documented
  skip (``"event skipped"`` log line: superseded / stale_update);
* **latest state**: for every product, the last record on the output topic is the one for its newest input
  (newest ``updated_at``, then highest offset), a tombstone when that input is a delete;
* **duplicates**: input coordinates with more than one record on the output + dead-letter topics, counted
  (a scenario says whether zero is required);
* **committed offsets**: never past what was processed (checked at every fault, OffsetValidationTest style)
  and equal to the end of every partition once the stream is done.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from consumer.devtools.embedded_broker import EmbeddedBroker, create_topics
from consumer.devtools.image_server import ImageServer
from consumer.devtools.produce import event_id_for, events_from_catalog
from consumer.stages.events import InvalidEvent, parse_product_event
from models.catalog.kaggle import read_catalog
from tests.service_harness import REPO, committed, enrich_env, http_get, skipped_coordinates, start_enrich, tail

Coord = tuple[int, int]

# ------------------------------------------------------------------------------------------------ rig
#: The conftest's tiny bundle configuration (real `enrich train` code path, trained in about a minute).
TINY_BUNDLE_CONFIG = {
    "image_backbone": "tiny", "image_size": 64, "text_max_len": 32, "text_train_layers": 1,
    "wide_buckets": 4096, "epochs": 4, "max_minutes": 1.5, "batch_size": 32, "min_class_count": 3,
}
CHAOS_CACHE = REPO / ".cache" / "enrich" / "chaos"


@dataclass
class Rig:
    broker: EmbeddedBroker
    images: ImageServer
    catalog: Path
    bundle: Path
    workdir: Path

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers


def ensure_catalog(root: Path) -> Path:
    from models.catalog.synthetic import generate_catalog

    styles = root / "catalog" / "styles.csv"
    if not styles.is_file():
        generate_catalog(root / "catalog", n_products=240, seed=7)
    return styles


def ensure_bundle(catalog: Path) -> Path:
    """ENRICH_TEST_BUNDLE, or a tiny bundle trained once into .cache/enrich/chaos/bundle."""
    reuse = os.environ.get("ENRICH_TEST_BUNDLE")
    if reuse and (Path(reuse) / "manifest.json").is_file():
        return Path(reuse)
    out = CHAOS_CACHE / "bundle"
    if not (out / "manifest.json").is_file():
        from models.train import train_command

        shutil.rmtree(out, ignore_errors=True)
        train_command(catalog=[str(catalog)], out=str(out), name="enrich-chaos", seed=0, progress=False,
                      **TINY_BUNDLE_CONFIG)
    return out


@contextlib.contextmanager
def standalone_rig(workdir: Path | None = None, storage: str = "memory") -> Iterator[Rig]:
    """Everything a scenario needs, for `python -m tests.chaos.<scenario>` (pytest passes its fixtures).
    ``storage``: the broker's (tests/chaos/storage_broker.py: ``memory``, ``s3``; ``postgres`` is refused)."""
    from tests.chaos.storage_broker import check_storage, storage_broker

    check_storage(storage)  # refuse before training a bundle
    CHAOS_CACHE.mkdir(parents=True, exist_ok=True)
    catalog = ensure_catalog(CHAOS_CACHE)
    bundle = ensure_bundle(catalog)
    work = workdir or Path(tempfile.mkdtemp(prefix="enrich-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    with storage_broker(storage) as broker, ImageServer(catalog.parent / "images") as images:
        yield Rig(broker, images, catalog, bundle, work)


def topics_for(rig: Rig, prefix: str, partitions: int) -> tuple[str, str, str]:
    run = uuid.uuid4().hex[:8]
    topics = (f"{prefix}-{run}.in", f"{prefix}-{run}.out", f"{prefix}-{run}.dlq")
    create_topics(rig.bootstrap, list(topics), partitions=partitions)
    return topics


# ------------------------------------------------------------------------------------------- workload
@dataclass
class Workload:
    """Keyed input records in send order; ``slow`` image names are delayed by the image server (so kills land
    during downloads too)."""

    records: list[tuple[bytes | None, bytes]]
    products: int
    deletes: int
    invalid: int
    stale: int
    slow: list[str] = field(default_factory=list)


def make_workload(rig: Rig, n_events: int, *, seed: int, invalid_every: int = 97, stale_every: int = 89,
                  delete_every: int = 13, slow_fraction: float = 0.05) -> Workload:
    """``n_events`` product events over ``~n_events/4`` products: most products get several versions with
    increasing ``updated_at``, some are deleted (and may come back), a few stale copies (older
    ``updated_at``) and a few invalid payloads are mixed in. Deterministic in ``seed``."""
    rng = random.Random(seed)
    catalog = read_catalog(rig.catalog)
    pool = max(4, n_events // 4)
    base = events_from_catalog([catalog[i % len(catalog)] for i in range(pool)], rig.images.base_url)
    t0 = datetime(2026, 12, 1, tzinfo=UTC)

    def stamp_of(v: int) -> str:
        return (t0 + timedelta(seconds=v)).strftime("%Y-%m-%dT%H:%M:%SZ")

    version: Counter[str] = Counter()
    records: list[tuple[bytes | None, bytes]] = []
    deletes = invalid = stale = 0
    names = sorted(p.name for p in (rig.catalog.parent / "images").iterdir())
    slow = rng.sample(names, max(1, int(len(names) * slow_fraction)))
    for i in range(n_events):
        if i % invalid_every == invalid_every - 1:
            records.append((f"bad-{i}".encode(), b'{"not": json at all ' + str(i).encode()))
            invalid += 1
            continue
        src = base[rng.randrange(pool)]
        pid = f"P{rng.randrange(pool):05d}"
        if i % stale_every == stale_every - 1 and version[pid] >= 2:
            stamp = stamp_of(version[pid] - 1)  # an old copy arrives late: older than the newest sent
            stale += 1
        else:
            version[pid] += 1
            stamp = stamp_of(version[pid])
        if i % delete_every == delete_every - 1:
            event: dict[str, Any] = {"event_id": f"del-{pid}-{version[pid]}", "op": "delete",
                                     "retailer": "chaos", "product_id": pid, "updated_at": stamp}
            deletes += 1
        else:
            event = {**src, "retailer": "chaos", "product_id": pid, "updated_at": stamp,
                     "title": f"{src['title']} v{version[pid]}",
                     "event_id": event_id_for("chaos", pid, stamp) + f"-{i}"}
        records.append((pid.encode(), orjson.dumps(event)))
    return Workload(records, len(version), deletes, invalid, stale, slow)


def send(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 2_000_000})
    n = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
    assert producer.flush(60) == 0, "input not delivered"
    return n


# ---------------------------------------------------------------------------------------------- reader
class TopicReader:
    """A reader of its own: assigned every partition from the beginning, it accumulates what it has read and
    catches up on :meth:`drain` (until the topic is quiet). No group, no commits."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, *, read_committed: bool = False) -> None:
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "fetch.max.bytes": 8_000_000,
        })
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.messages: list[Any] = []

    def drain(self, quiet_s: float = 1.5, timeout_s: float = 60.0) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
            got = [m for m in self.consumer.consume(500, 0.2) if m.error() is None]
            if got:
                self.messages.extend(got)
                last = time.monotonic()
        return self.messages

    def close(self) -> None:
        self.consumer.close()


def coord_of(msg: Any) -> Coord:
    headers = dict(msg.headers() or [])
    return int(headers["enrich.source.partition"]), int(headers["enrich.source.offset"])


@dataclass
class Inputs:
    """The input topic as read back: coordinates, keys and what the newest input per product is."""

    coords: set[Coord]
    newest: dict[str, Coord]  # product id -> coordinate of its newest valid input (updated_at, offset)
    newest_is_delete: dict[str, bool]
    ends: dict[int, int]
    stamps: dict[Coord, Any]  # updated_at of every valid input


def read_inputs(bootstrap: str, topic: str, partitions: int, expected: int) -> Inputs:
    reader = TopicReader(bootstrap, topic, partitions)
    try:
        deadline = time.monotonic() + 120
        while len(reader.drain(quiet_s=1.0)) < expected and time.monotonic() < deadline:
            pass
        msgs = reader.messages
    finally:
        reader.close()
    assert len(msgs) == expected, f"input topic holds {len(msgs)} records, {expected} were sent"
    best: dict[str, tuple[Any, int, Coord, bool]] = {}
    ends: dict[int, int] = dict.fromkeys(range(partitions), 0)
    coords = set()
    stamps: dict[Coord, Any] = {}
    for m in msgs:
        c = (m.partition(), m.offset())
        coords.add(c)
        ends[c[0]] = max(ends[c[0]], c[1] + 1)
        try:
            event = parse_product_event(m.value(), max_bytes=1_000_000)
        except InvalidEvent:
            continue  # dead-lettered: no product state
        pid, stamp, is_delete = event.product_id, event.updated_at, event.op == "delete"
        stamps[c] = stamp
        rank = (stamp, c[1])
        if pid not in best or rank > best[pid][:2]:
            best[pid] = (stamp, c[1], c, is_delete)
    return Inputs(coords, {p: v[2] for p, v in best.items()}, {p: v[3] for p, v in best.items()}, ends, stamps)


# ------------------------------------------------------------------------------------------- invariants
@dataclass
class Figures:
    scenario: str
    events: int = 0
    faults: int = 0
    lost: int = 0
    stale: int = 0  # products whose last output record is not their newest input
    #: of which: the last record is a late old copy (older updated_at, higher offset) re-processed by a new
    #: owner that never saw the newer version (docs/schemas.md "Ordering and latest state", point 3)
    stale_reprocessed: int = 0
    duplicates: int = 0
    enriched: int = 0
    tombstones: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    commit_violations: int = 0  # checks where the committed offset had passed an unprocessed input
    committed_at_end: bool = False
    recover_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        rec = (f"{sum(self.recover_s) / len(self.recover_s):.1f}/{max(self.recover_s):.1f}" if self.recover_s
               else "-")
        extra = " ".join(f"{k}={v}" for k, v in self.notes.items())
        return (f"[chaos] {self.scenario}: events={self.events} faults={self.faults} lost={self.lost} "
                f"stale={self.stale} stale_reprocessed={self.stale_reprocessed} duplicates={self.duplicates} "
                f"dead_lettered={self.dead_lettered} "
                f"enriched={self.enriched} tombstones={self.tombstones} skipped={self.skipped} "
                f"commit_violations={self.commit_violations} committed_at_end={self.committed_at_end} "
                f"recover_s(mean/max)={rec} wall_s={self.wall_s:.0f} {extra}").rstrip()

    def verdict(self, *, zero_duplicates: bool = False) -> list[str]:
        bad = list(self.problems)
        if self.lost:
            bad.append(f"{self.lost} input offsets lost")
        if self.stale:
            bad.append(f"{self.stale} products do not end on their newest input")
        if self.commit_violations:
            bad.append(f"committed offset passed unprocessed input {self.commit_violations} times")
        if not self.committed_at_end:
            bad.append("committed offsets did not reach the end")
        if zero_duplicates and self.duplicates:
            bad.append(f"{self.duplicates} duplicates where none are allowed")
        return bad


class Checker:
    """Reads the output and dead-letter topics with readers of its own and checks the invariants."""

    def __init__(self, bootstrap: str, topics: tuple[str, str, str], group: str, partitions: int, *,
                 read_committed: bool = False) -> None:
        self.bootstrap, self.topics, self.group, self.partitions = bootstrap, topics, group, partitions
        self.read_committed = read_committed
        self.out = TopicReader(bootstrap, topics[1], partitions, read_committed=read_committed)
        self.dlq = TopicReader(bootstrap, topics[2], partitions, read_committed=read_committed)

    def outcomes(self, logs: Iterable[Path]) -> tuple[Counter[Coord], set[Coord]]:
        produced: Counter[Coord] = Counter(coord_of(m) for m in self.out.drain() + self.dlq.drain(quiet_s=0.5))
        skipped = {(p, o) for log in logs for p, o, _ in skipped_coordinates(log)}
        return produced, skipped

    def check_commit_bound(self, logs: Iterable[Path], fig: Figures, *, clean: bool = False) -> None:
        """OffsetValidationTest: after a hard kill, every offset below the committed position has an outcome;
        after a clean stop (``clean``) also nothing was processed at or past it (the position equals what
        was processed)."""
        position = committed(self.bootstrap, self.group, self.topics[0], range(self.partitions))
        produced, skipped = self.outcomes(logs)
        done = set(produced) | skipped
        for p, c in position.items():
            missing = [o for o in range(max(c, 0)) if (p, o) not in done]
            if missing:
                fig.commit_violations += 1
                fig.problems.append(f"committed {p}:{c} passes unprocessed offsets {missing[:5]}")
            beyond = sorted(o for q, o in produced if q == p and o >= max(c, 0))
            if clean and beyond:
                fig.commit_violations += 1
                fig.problems.append(f"clean stop: committed {p}:{c} but produced up to {beyond[-1]}")

    def final(self, inputs: Inputs, logs: list[Path], fig: Figures) -> Figures:
        produced, skipped = self.outcomes(logs)
        fig.events = len(inputs.coords)
        lost = inputs.coords - set(produced) - skipped
        fig.lost = len(lost)
        phantom = set(produced) - inputs.coords
        if phantom:
            fig.problems.append(f"outputs for coordinates never sent: {sorted(phantom)[:5]}")
        if lost:
            fig.problems.append(f"lost offsets (first): {sorted(lost)[:10]}")
        fig.duplicates = sum(n - 1 for n in produced.values() if n > 1)
        if fig.duplicates:
            dups = sorted(c for c, n in produced.items() if n > 1)
            detail = []
            for c in dups[:3]:
                for m in self.out.messages + self.dlq.messages:
                    if coord_of(m) == c:
                        detail.append((c, m.topic().rsplit(".", 1)[-1], m.partition(), m.offset()))
            fig.notes["duplicate_coords"] = detail
        fig.skipped = len(skipped - set(produced))
        fig.dead_lettered = len({coord_of(m) for m in self.dlq.messages})
        outs = {coord_of(m): m for m in self.out.messages}
        fig.tombstones = sum(1 for m in outs.values() if m.value() is None)
        fig.enriched = len(outs) - fig.tombstones
        last: dict[str, Any] = {}
        for m in self.out.messages:  # in partition order per output partition; one product = one partition
            last[m.key().decode()] = m
        stale = []
        for pid, coord in inputs.newest.items():
            m = last.get(pid)
            want_delete = inputs.newest_is_delete[pid]
            if m is None or coord_of(m) != coord or (m.value() is None) != want_delete:
                stale.append((pid, coord, coord_of(m) if m is not None else None))
        late = [s for s in stale if s[2] is not None and s[2][0] == s[1][0] and s[2][1] > s[1][1]
                and s[2] in inputs.stamps and inputs.stamps[s[2]] < inputs.stamps[s[1]]]
        fig.stale_reprocessed = len(late)
        fig.stale = len(stale) - len(late)
        if late:
            fig.notes["late_copies_last"] = len(late)
        stale = [s for s in stale if s not in late]
        if stale:
            fig.problems.append(f"not on newest input (product, want, got): {stale[:5]}")
        position = committed(self.bootstrap, self.group, self.topics[0], range(self.partitions))
        fig.committed_at_end = position == inputs.ends
        if not fig.committed_at_end:
            fig.problems.append(f"committed {position} != ends {inputs.ends}")
        return fig

    def close(self) -> None:
        self.out.close()
        self.dlq.close()


# ------------------------------------------------------------------------------------------ processes
class Member:
    """One `enrich run` process (restartable): its own log file per start, the same POD_NAME across restarts
    (a container restarting in its pod keeps its name, so exactly-once fences its own zombie)."""

    def __init__(self, rig: Rig, topics: tuple[str, str, str], group: str, name: str, *args: str,
                 **env: Any) -> None:
        self.rig, self.name, self.args = rig, name, args
        self.env = enrich_env(rig.bootstrap, topics, rig.bundle, group, POD_NAME=name, **env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.port: int | None = None

    def start(self, *extra: str) -> None:
        log = self.rig.workdir / f"{self.name}-{len(self.logs)}.log"
        self.logs.append(log)
        self.port = None
        self.proc = start_enrich(self.env, log, *self.args, *extra)

    @property
    def log(self) -> Path:
        return self.logs[-1]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def http_port(self, timeout: float = 120.0) -> int | None:
        deadline = time.monotonic() + timeout
        while self.port is None and time.monotonic() < deadline and self.alive():
            for line in self.log.read_text(errors="replace").splitlines():
                if '"http endpoints up"' in line:
                    self.port = int(orjson.loads(line)["port"])
                    break
            else:
                time.sleep(0.1)
        return self.port

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds until /readyz answers 200 (model loaded, partitions assigned or not)."""
        t0 = time.monotonic()
        port = self.http_port(timeout)
        while port and self.alive() and time.monotonic() - t0 < timeout:
            if http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready after {timeout}s; log:\n{tail(self.log)}")

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not exit in {timeout}s; log:\n{tail(self.log)}") from None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()


def wait_committed_to_end(bootstrap: str, group: str, topic: str, ends: dict[int, int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if committed(bootstrap, group, topic, list(ends)) == ends:
            return True
        time.sleep(1.0)
    return False


def cli(description: str, **defaults: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    for name, value in defaults.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true", default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here (default: a temp dir)")
    args = parser.parse_args()
    if getattr(args, "storage", None) is not None:
        from tests.chaos.storage_broker import StorageUnavailable, check_storage

        try:
            check_storage(args.storage)
        except StorageUnavailable as exc:
            parser.exit(2, f"[chaos] refused: {exc}\n")
    return args


def report(fig: Figures, *, zero_duplicates: bool = False) -> int:
    print(fig.line(), flush=True)
    bad = fig.verdict(zero_duplicates=zero_duplicates)
    for problem in bad:
        print(f"[chaos] {fig.scenario}: FAIL {problem}", flush=True)
    return 1 if bad else 0
