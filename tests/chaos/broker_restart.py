"""Broker restart: the tansu process is stopped mid-stream (SIGKILL, then SIGTERM, alternating; a SIGTERM
that has not exited within 5 s is followed by SIGKILL, since tansu waits for its clients to hang up), stays
down ``--down-s`` seconds, and is started again on the same port and the same storage (``s3://`` on a
loopback S3 server, tests/chaos/storage_broker.py; ``memory://`` would come back empty). `enrich run` (a
separate process) must recover by itself (same process, never exits), lose nothing, and ``/livez`` must
answer 200 throughout (the broker is what is down, not the process). Then the shared invariants.

    python -m tests.chaos.broker_restart --restarts 4 --down-s 3 --long-down-s 10 --events 800

The downtimes alternate between ``--down-s`` (shorter than the member's 6 s session timeout: the group
survives) and ``--long-down-s`` (longer: the member's session expires), each with SIGKILL and SIGTERM.
Time to recover = broker serving metadata again until the first input batch sent after that is processed
and committed (committed position of every partition past that batch's offsets: the member is fetching,
producing and committing again); also reported: the broker's own restart time (``broker_up_s``) and, where
the member was given its partitions again, the time to that (``assigned_s``). The input stream is produced
in batches by a thread that never has a batch in flight across a kill (an input batch whose acknowledgement
is lost would be resent, and the checker compares the input topic with what was sent), while the
service's own fetches, produces and commits are caught by it.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import Counter
from datetime import datetime

import orjson
from confluent_kafka import Producer

from tests.chaos.common import (
    Checker,
    Figures,
    Member,
    Rig,
    cli,
    make_workload,
    read_inputs,
    report,
    send,
    topics_for,
    wait_committed_to_end,
)
from tests.chaos.storage_broker import PersistentBroker
from tests.service_harness import committed, http_get


def _check_bound(rig: Rig, topics: tuple[str, str, str], group: str, partitions: int, member: Member,
                 fig: Figures) -> None:
    # A fresh checker each time: a reader that was connected across a restart is not trusted to have read
    # every record exactly once (the checker counts duplicates from what its readers return).
    checker = Checker(rig.bootstrap, topics, group, partitions)
    try:
        checker.check_commit_bound(member.logs, fig)
    finally:
        checker.close()


def _send_marked(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> dict[int, int]:
    """Send ``records``; per partition, the offset after the last one (from the delivery reports)."""
    ends: dict[int, int] = {}

    def delivered(err: object, msg: object) -> None:
        assert err is None, err
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)  # type: ignore[attr-defined]

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 2_000_000})
    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
    assert producer.flush(60) == 0, "input not delivered"
    return ends


def restart(rig: Rig, *, restarts: int, down_s: float, long_down_s: float, events: int, partitions: int = 3,
            seed: int = 37, gap_s: float = 12.0) -> Figures:
    fig = Figures("broker restart")
    broker = rig.broker
    if not isinstance(broker, PersistentBroker):
        raise ValueError("broker restart needs a broker whose storage outlives it: --storage s3")
    t_start = time.monotonic()
    topics = topics_for(rig, "restart", partitions)
    group = f"g-{topics[0]}"
    work = make_workload(rig, events, seed=seed)
    rig.images.delay_s.update(dict.fromkeys(work.slow, 1.5))
    member = Member(rig, topics, group, "pod-0")
    livez: Counter[int] = Counter()
    during: Counter[int] = Counter()
    readyz_during: Counter[int] = Counter()
    down = threading.Event()
    stop = threading.Event()
    send_lock = threading.Lock()

    def probe() -> None:
        while not stop.is_set():
            code = http_get(f"http://127.0.0.1:{member.port}/livez")[0]
            livez[code] += 1
            if down.is_set():
                during[code] += 1
                readyz_during[http_get(f"http://127.0.0.1:{member.port}/readyz")[0]] += 1
            stop.wait(0.5)

    downs = [(down_s, long_down_s)[((r + 1) // 2) % 2] for r in range(restarts)]
    duration = sum(downs) + (restarts + 1) * gap_s
    batch = 20
    batches = iter([work.records[i:i + batch] for i in range(0, len(work.records), batch)])

    def produce() -> None:  # a steady stream across the restarts; never a batch in flight across a kill
        t0 = time.monotonic()
        n = 0
        while True:
            with send_lock:
                chunk = next(batches, None)
                if chunk is None:
                    return
                send(rig.bootstrap, topics[0], chunk)
            n += 1
            stop.wait(max(0.0, t0 + n * duration * batch / len(work.records) - time.monotonic()))

    kills: list[str] = []
    kill_walls: list[float] = []
    broker_up: list[float] = []
    ups: list[float] = []
    pid = None
    try:
        member.start()
        member.wait_ready()
        pid = member.proc.pid if member.proc else None
        threading.Thread(target=probe, daemon=True).start()
        producer = threading.Thread(target=produce)
        producer.start()
        for r in range(restarts):
            time.sleep(gap_s)  # mid-stream: downloads, batches, deliveries and commits in flight
            sig = signal.SIGKILL if r % 2 == 0 else signal.SIGTERM
            with send_lock:
                down.set()
                kill_walls.append(time.time())
                kills.append(f"{sig.name}: {broker.crash(sig)}, down {downs[r]:.0f} s")
                time.sleep(downs[r])
                broker_up.append(broker.start_again())
                t_up, wall_up = time.monotonic(), time.time()
                down.clear()
                marker = next(batches, None)  # the first input after the restart: recovered once it is committed
                want = _send_marked(rig.bootstrap, topics[0], marker) if marker else {}
            fig.faults += 1
            recovered = float("nan")
            while time.monotonic() - t_up < 300:
                now = committed(rig.bootstrap, group, topics[0], range(partitions))
                if all(now[p] >= end for p, end in want.items()):
                    recovered = time.monotonic() - t_up
                    break
                time.sleep(0.25)
            if recovered != recovered:
                fig.problems.append(f"restart {r}: input sent after the restart not committed within 300 s")
            fig.recover_s.append(recovered)
            ups.append(wall_up)
            if not member.alive():
                fig.problems.append(f"the consumer exited after restart {r}")
                break
            _check_bound(rig, topics, group, partitions, member, fig)
        producer.join()
        inputs = read_inputs(rig.bootstrap, topics[0], partitions, len(work.records))
        if not member.alive():  # nothing left to commit the rest: do not wait for it
            fig.problems.append("the consumer exited; the stream was not committed to the end")
        elif not wait_committed_to_end(rig.bootstrap, group, topics[0], inputs.ends, 600):
            fig.problems.append("did not commit to the end within 600 s")
        if not member.alive() or member.proc is None or member.proc.pid != pid:
            fig.problems.append("the consumer restarted or exited")
        stop.set()
        member.signal(signal.SIGTERM)
        if member.wait(60) != 0:
            fig.problems.append("non-zero exit after SIGTERM")
        checker = Checker(rig.bootstrap, topics, group, partitions)
        try:
            checker.final(inputs, member.logs, fig)
        finally:
            checker.close()
    finally:
        stop.set()
        member.kill()
        rig.images.delay_s.clear()
        (rig.workdir / "tansu.log").write_text(broker.logs_text())
    text = member.log.read_text(errors="replace")
    assigned = [datetime.fromisoformat(orjson.loads(line)["timestamp"]).timestamp()
                for line in text.splitlines() if '"partitions assigned"' in line]
    assigned_s = []  # per restart, broker up to "partitions assigned" before the next kill (None: never lost)
    for t, until in zip(ups, [*kill_walls[1:], float("inf")], strict=True):
        after = [a - t for a in assigned if t - 1.0 <= a < until]
        assigned_s.append(round(after[0], 1) if after else None)
    if set(during) != {200}:
        fig.problems.append(f"/livez while the broker was down answered {dict(during)} (want only 200)")
    fig.notes.update(kills=kills, broker_up_s=[round(x, 2) for x in broker_up],
                     assigned_s=assigned_s, livez_while_down=dict(during), livez_all=dict(livez),
                     readyz_while_down=dict(readyz_during),
                     lost_lines=text.count('"partitions lost: discarding'),
                     consumer_errors=text.count('"consumer error"'), restarts=len(member.logs) - 1)
    fig.wall_s = time.monotonic() - t_start
    return fig


def main() -> int:
    from tests.chaos.common import standalone_rig

    args = cli(__doc__.splitlines()[0], restarts=4, down_s=3.0, long_down_s=10.0, events=800, partitions=3,
               seed=37, gap_s=12.0, storage="s3")
    if args.storage == "memory":
        print("[chaos] refused: a broker restart on memory:// storage starts with no topics and no offsets; "
              "use --storage s3", file=sys.stderr)
        return 2
    with standalone_rig(args.workdir, args.storage) as rig:
        fig = restart(rig, restarts=args.restarts, down_s=args.down_s, long_down_s=args.long_down_s,
                      events=args.events,
                      partitions=args.partitions, seed=args.seed, gap_s=args.gap_s)
        print(f"[chaos] logs in {rig.workdir} (the broker's: tansu.log)")
    return report(fig)


if __name__ == "__main__":
    sys.exit(main())
