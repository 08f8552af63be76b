"""Crash loop: `enrich run` killed (SIGKILL, or SIGTERM for clean stops) at random moments and restarted,
while the input stream arrives in chunks; then a last run drains the stream and the invariants are checked.

    python -m tests.chaos.crash_loop --kills 20 --events 3000            # at-least-once, hard kills
    python -m tests.chaos.crash_loop --kills 20 --events 3000 --exactly-once   # read_committed reader
    python -m tests.chaos.clean_stops --stops 10 --events 1500           # SIGTERM: zero duplicates
    python -m tests.chaos.crash_loop --exactly-once --storage s3 ...     # broker on s3:// (storage_broker.py)

Moments: each cycle sends the next chunk, starts the member, waits until it is ready, then kills it after a
random 0.2..``max_gap_s`` s; some images are served slowly (1.5 s), so kills land during downloads,
micro-batches, produce and commit alike. After every fault the committed offsets are checked against what
the topics hold (never past an unprocessed input; after a clean stop, not short of what was produced).
"""

from __future__ import annotations

import random
import signal
import sys
import time

from tests.chaos.common import Checker, Figures, Member, Rig, cli, make_workload, read_inputs, report, send, topics_for


def kill_loop(rig: Rig, *, kills: int, events: int, sig: signal.Signals = signal.SIGKILL,
              exactly_once: bool = False, partitions: int = 3, seed: int = 11, max_gap_s: float = 4.0,
              scenario: str | None = None) -> Figures:
    name = scenario or ("exactly-once crash loop" if exactly_once else
                        "clean stops" if sig == signal.SIGTERM else "crash loop")
    rng = random.Random(seed)
    fig = Figures(name)
    t_start = time.monotonic()
    topics = topics_for(rig, name.replace(" ", "-"), partitions)
    group = f"g-{topics[0]}"
    work = make_workload(rig, events, seed=seed)
    rig.images.delay_s.update(dict.fromkeys(work.slow, 1.5))
    env = {"ENRICH_EXACTLY_ONCE": str(exactly_once).lower(), "ENRICH_SHUTDOWN_GRACE_S": 20}
    member = Member(rig, topics, group, "pod-0", **env)
    checker = Checker(rig.bootstrap, topics, group, partitions, read_committed=exactly_once)
    step = max(1, len(work.records) // (kills + 1))
    chunks = [work.records[i * step:(i + 1) * step] for i in range(kills)] + [work.records[kills * step:]]
    sent = 0
    exit_codes = []
    try:
        for k in range(kills):
            sent += send(rig.bootstrap, topics[0], chunks[k])
            member.start()
            fig.recover_s.append(member.wait_ready())
            time.sleep(rng.uniform(0.2, max_gap_s))
            member.signal(sig)
            rc = member.wait(60)
            exit_codes.append(rc)
            if sig == signal.SIGTERM and rc != 0:
                fig.problems.append(f"SIGTERM {k}: exit code {rc}")
            fig.faults += 1
            checker.check_commit_bound(member.logs, fig, clean=sig == signal.SIGTERM)
        sent += send(rig.bootstrap, topics[0], chunks[-1])
        member.start("--idle-exit-s", "6")
        fig.recover_s.append(member.wait_ready())
        rc = member.wait(600)
        if rc != 0:
            fig.problems.append(f"final run exit code {rc}")
        inputs = read_inputs(rig.bootstrap, topics[0], partitions, sent)
        checker.final(inputs, member.logs, fig)
    finally:
        member.kill()
        checker.close()
        rig.images.delay_s.clear()
    fig.wall_s = time.monotonic() - t_start
    fig.notes.update(products=work.products, deletes_sent=work.deletes, invalid_sent=work.invalid,
                     stale_copies_sent=work.stale, restarts=len(member.logs))
    if exactly_once:
        fig.notes["set_equal"] = fig.lost == 0 and not any("never sent" in p for p in fig.problems)
    return fig


def main() -> int:
    from tests.chaos.common import standalone_rig

    args = cli(__doc__.splitlines()[0], kills=20, events=3000, exactly_once=False, partitions=3, seed=11,
               max_gap_s=4.0, storage="memory")
    with standalone_rig(args.workdir, args.storage) as rig:
        fig = kill_loop(rig, kills=args.kills, events=args.events, exactly_once=args.exactly_once,
                        partitions=args.partitions, seed=args.seed, max_gap_s=args.max_gap_s)
        print(f"[chaos] logs in {rig.workdir}")
    return report(fig, zero_duplicates=args.exactly_once)


if __name__ == "__main__":
    sys.exit(main())
