"""Rebalance storm: one steady member and two more that keep joining and leaving (each: start, ready, stay
2..``stay_s`` s, SIGTERM, away 1..4 s, again) while the stream is produced at a steady rate; then the
steady member drains the stream and the invariants are checked.

    python -m tests.chaos.rebalance_storm --events 1500 --storm-s 120
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time

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


def storm(rig: Rig, *, events: int, storm_s: float, partitions: int = 6, seed: int = 21,
          stay_s: float = 6.0) -> Figures:
    fig = Figures("rebalance storm")
    t_start = time.monotonic()
    topics = topics_for(rig, "storm", partitions)
    group = f"g-{topics[0]}"
    work = make_workload(rig, events, seed=seed)
    rig.images.delay_s.update(dict.fromkeys(work.slow, 1.5))
    steady = Member(rig, topics, group, "pod-a")
    movers = [Member(rig, topics, group, f"pod-{n}") for n in ("b", "c")]
    checker = Checker(rig.bootstrap, topics, group, partitions)
    stop = threading.Event()
    moves: list[str] = []
    errors: list[str] = []

    def produce() -> None:
        rate_s = storm_s * 0.8 / max(1, len(work.records) // 50)
        for i in range(0, len(work.records), 50):
            send(rig.bootstrap, topics[0], work.records[i:i + 50])
            time.sleep(rate_s)

    def churn(member: Member, rng: random.Random) -> None:
        time.sleep(rng.uniform(0, 3))
        while not stop.is_set():
            member.start()
            try:
                member.wait_ready()
            except AssertionError as exc:
                errors.append(str(exc)[:300])
                member.kill()
                return
            moves.append(f"{member.name} joined")
            time.sleep(rng.uniform(2, stay_s))
            member.signal(signal.SIGTERM)
            rc = member.wait(60)
            moves.append(f"{member.name} left")
            if rc != 0:
                errors.append(f"{member.name} exit {rc} after SIGTERM")
            stop.wait(rng.uniform(1, 4))

    try:
        steady.start()
        steady.wait_ready()
        producer = threading.Thread(target=produce)
        producer.start()
        threads = [threading.Thread(target=churn, args=(m, random.Random(seed + i))) for i, m in enumerate(movers)]
        for t in threads:
            t.start()
        time.sleep(storm_s)
        stop.set()
        producer.join()
        for t in threads:
            t.join()
        t_calm = time.monotonic()
        logs = steady.logs + [log for m in movers for log in m.logs]
        inputs = read_inputs(rig.bootstrap, topics[0], partitions, len(work.records))
        if not wait_committed_to_end(rig.bootstrap, group, topics[0], inputs.ends, 600):
            fig.problems.append("steady member did not commit to the end within 600 s after the storm")
        fig.recover_s.append(time.monotonic() - t_calm)  # storm over -> everything committed
        steady.signal(signal.SIGTERM)
        if steady.wait(60) != 0:
            fig.problems.append("steady member: non-zero exit after SIGTERM")
        checker.final(inputs, logs, fig)
    finally:
        stop.set()
        for m in [steady, *movers]:
            m.kill()
        checker.close()
        rig.images.delay_s.clear()
    logs = steady.logs + [log for m in movers for log in m.logs]
    fig.faults = len(moves)
    fig.problems += errors
    text = "".join(log.read_text(errors="replace") for log in logs)
    fig.notes.update(joins=sum("joined" in m for m in moves), leaves=sum("left" in m for m in moves),
                     assigned_lines=text.count('"partitions assigned"'),
                     revoked_lines=text.count('"partitions revoked: draining"'),
                     lost_lines=text.count('"partitions lost: discarding'))
    fig.wall_s = time.monotonic() - t_start
    return fig


def main() -> int:
    from tests.chaos.common import standalone_rig

    args = cli(__doc__.splitlines()[0], events=1500, storm_s=120.0, partitions=6, seed=21, stay_s=6.0)
    with standalone_rig(args.workdir) as rig:
        fig = storm(rig, events=args.events, storm_s=args.storm_s, partitions=args.partitions, seed=args.seed,
                    stay_s=args.stay_s)
        print(f"[chaos] logs in {rig.workdir}")
    return report(fig)


if __name__ == "__main__":
    sys.exit(main())
