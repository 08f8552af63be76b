"""Broker stall: the tansu process is frozen (SIGSTOP) for longer than the consumer's session timeout (6 s
here) while events are in flight, then resumed (SIGCONT); repeated. The consumer must recover by itself
(same process, never exits), lose nothing, and `/livez` must answer 200 throughout (the poll loop keeps
turning while the broker is away: the process is healthy, restarting it would not help). Time to recover =
SIGCONT until the member holds its partitions again ("partitions assigned"); also reported: SIGCONT until
the group's committed position moves (commit_moved_s: a commit queued during the stall lands at once).

    python -m tests.chaos.broker_stall --stalls 2 --stall-s 20 --events 800

Restart of the broker is not run: tansu 0.6.0 as shipped here has `memory://` storage (a restart starts
empty), `sqlite://` is not compiled in (FeatureNotEnabled libsql), and `postgres://`/`s3://` need a server
this machine does not have (docs/reliability.md).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime

import orjson

from consumer.devtools.embedded_broker import EmbeddedBroker
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
from tests.service_harness import committed, http_get


def stall(base: Rig, *, stalls: int, stall_s: float, events: int, partitions: int = 3, seed: int = 31) -> Figures:
    fig = Figures("broker stall")
    t_start = time.monotonic()
    with EmbeddedBroker() as broker:  # a private broker: freezing it must not touch anyone else's
        rig = replace(base, broker=broker)
        topics = topics_for(rig, "stall", partitions)
        group = f"g-{topics[0]}"
        work = make_workload(rig, events, seed=seed)
        rig.images.delay_s.update(dict.fromkeys(work.slow, 1.5))
        member = Member(rig, topics, group, "pod-0")
        checker = Checker(rig.bootstrap, topics, group, partitions)
        livez: Counter[int] = Counter()
        during: Counter[int] = Counter()
        stalled = threading.Event()
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                code = http_get(f"http://127.0.0.1:{member.port}/livez")[0]
                livez[code] += 1
                if stalled.is_set():
                    during[code] += 1
                stop.wait(0.5)

        commit_moved: list[float] = []
        resumes: list[float] = []
        gap_s = 15.0
        duration = stalls * (stall_s + gap_s) + gap_s

        def produce() -> None:  # a steady stream across the stalls (librdkafka buffers while the broker sleeps)
            batch = 20
            t0 = time.monotonic()
            for n, i in enumerate(range(0, len(work.records), batch)):
                send(rig.bootstrap, topics[0], work.records[i:i + batch])
                stop.wait(max(0.0, t0 + (n + 1) * duration * batch / len(work.records) - time.monotonic()))

        try:
            member.start()
            member.wait_ready()
            pid = member.proc.pid if member.proc else None
            threading.Thread(target=probe, daemon=True).start()
            producer = threading.Thread(target=produce)
            producer.start()
            for s in range(stalls):
                time.sleep(gap_s)  # mid-stream: downloads, batches and deliveries in flight
                before = committed(rig.bootstrap, group, topics[0], range(partitions))
                assert broker.pid is not None
                os.kill(broker.pid, signal.SIGSTOP)
                stalled.set()
                time.sleep(stall_s)
                stalled.clear()
                os.kill(broker.pid, signal.SIGCONT)
                t_resume, wall_resume = time.monotonic(), time.time()
                fig.faults += 1
                while time.monotonic() - t_resume < 300:  # the committed position moves again
                    now = committed(rig.bootstrap, group, topics[0], range(partitions))
                    if any(now[p] > before[p] for p in now):
                        break
                    time.sleep(0.25)
                commit_moved.append(time.monotonic() - t_resume)
                resumes.append(wall_resume)
                if not member.alive():
                    fig.problems.append(f"the consumer exited during stall {s}")
                    break
                checker.check_commit_bound(member.logs, fig)
            producer.join()
            inputs = read_inputs(rig.bootstrap, topics[0], partitions, len(work.records))
            if not wait_committed_to_end(rig.bootstrap, group, topics[0], inputs.ends, 600):
                fig.problems.append("did not commit to the end within 600 s")
            if not member.alive() or member.proc is None or member.proc.pid != pid:
                fig.problems.append("the consumer restarted or exited")
            stop.set()
            member.signal(signal.SIGTERM)
            if member.wait(60) != 0:
                fig.problems.append("non-zero exit after SIGTERM")
            checker.final(inputs, member.logs, fig)
        finally:
            stop.set()
            if broker.pid is not None:
                os.kill(broker.pid, signal.SIGCONT)
            member.kill()
            checker.close()
            rig.images.delay_s.clear()
        text = member.log.read_text(errors="replace")
        assigned = [datetime.fromisoformat(orjson.loads(line)["timestamp"]).timestamp()
                    for line in text.splitlines() if '"partitions assigned"' in line]
        for t in resumes:  # recovered: SIGCONT to the member holding its partitions again
            after = [a - t for a in assigned if a >= t]
            fig.recover_s.append(after[0] if after else float("nan"))
    if set(during) != {200}:
        fig.problems.append(f"/livez during the stalls answered {dict(during)} (want only 200)")
    fig.notes.update(stall_s=stall_s, commit_moved_s=[round(x, 1) for x in commit_moved],
                     livez_during_stall=dict(during), livez_all=dict(livez),
                     lost_lines=text.count('"partitions lost: discarding'),
                     consumer_errors=text.count('"consumer error"'), restarts=len(member.logs) - 1)
    fig.wall_s = time.monotonic() - t_start
    return fig


def main() -> int:
    from tests.chaos.common import standalone_rig

    args = cli(__doc__.splitlines()[0], stalls=2, stall_s=20.0, events=800, partitions=3, seed=31)
    with standalone_rig(args.workdir) as rig:
        fig = stall(rig, stalls=args.stalls, stall_s=args.stall_s, events=args.events, partitions=args.partitions,
                    seed=args.seed)
        print(f"[chaos] logs in {rig.workdir}")
    return report(fig)


if __name__ == "__main__":
    sys.exit(main())
