"""Soak: one `enrich run` at a steady load for a bounded time (not in CI), sampling its RSS, open file
descriptors and sockets every few seconds; then the shared invariants.

    python -m tests.chaos.soak --minutes 30 --rate 10

Bound (stated up front, checked at the end): after a warm-up of ``warmup_min`` minutes, the median of the
last fifth of the samples may exceed the median of the first fifth (after warm-up) by at most 64 MiB of RSS,
16 file descriptors and 8 sockets. A leak of one socket or one decoded picture per event would pass these
within minutes at 10 events/s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

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

RSS_BOUND_MB, FD_BOUND, SOCKET_BOUND = 64, 16, 8


def sample(pid: int) -> tuple[float, int, int] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        fds = os.listdir(f"/proc/{pid}/fd")
        sockets = 0
        for fd in fds:
            with contextlib.suppress(OSError):
                sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        return rss_kb / 1024, len(fds), sockets
    except (OSError, StopIteration):
        return None


def soak(rig: Rig, *, minutes: float, rate: float, every_s: float = 5.0, warmup_min: float = 2.0,
         partitions: int = 3, seed: int = 41) -> Figures:
    fig = Figures("soak")
    t_start = time.monotonic()
    total = int(minutes * 60 * rate)
    topics = topics_for(rig, "soak", partitions)
    group = f"g-{topics[0]}"
    work = make_workload(rig, total, seed=seed)
    member = Member(rig, topics, group, "pod-0")
    checker = Checker(rig.bootstrap, topics, group, partitions)
    samples: list[tuple[float, float, int, int]] = []
    stop = threading.Event()

    def produce() -> None:
        batch = max(1, int(rate))
        t0 = time.monotonic()
        for n, i in enumerate(range(0, len(work.records), batch)):
            send(rig.bootstrap, topics[0], work.records[i:i + batch])
            delay = t0 + (n + 1) * batch / rate - time.monotonic()
            if stop.wait(max(0.0, delay)):
                return

    try:
        member.start()
        member.wait_ready()
        assert member.proc is not None
        pid = member.proc.pid
        producer = threading.Thread(target=produce)
        producer.start()
        while producer.is_alive() and member.alive():
            s = sample(pid)
            if s:
                samples.append((time.monotonic() - t_start, *s))
                t, rss, fds, socks = samples[-1]
                if len(samples) % 12 == 1:
                    print(f"[soak] t={t:.0f}s rss={rss:.0f}MB fds={fds} sockets={socks}", flush=True)
            time.sleep(every_s)
        producer.join()
        inputs = read_inputs(rig.bootstrap, topics[0], partitions, len(work.records))
        wait_committed_to_end(rig.bootstrap, group, topics[0], inputs.ends, 600)
        member.signal(signal.SIGTERM)
        if member.wait(60) != 0:
            fig.problems.append("non-zero exit after SIGTERM")
        checker.final(inputs, member.logs, fig)
    finally:
        stop.set()
        member.kill()
        checker.close()
    steady = [s for s in samples if s[0] >= warmup_min * 60 + samples[0][0]] if samples else []
    if len(steady) >= 10:
        fifth = max(2, len(steady) // 5)
        first, last = steady[:fifth], steady[-fifth:]
        growth = [statistics.median(x[k] for x in last) - statistics.median(x[k] for x in first) for k in (1, 2, 3)]
        fig.notes.update(samples=len(samples), rss_mb_first=round(statistics.median(x[1] for x in first)),
                         rss_mb_last=round(statistics.median(x[1] for x in last)),
                         rss_mb_max=round(max(x[1] for x in samples)), rss_growth_mb=round(growth[0], 1),
                         fds_growth=growth[1], sockets_growth=growth[2],
                         fds_max=max(x[2] for x in samples), sockets_max=max(x[3] for x in samples))
        for value, bound, what in zip(growth, (RSS_BOUND_MB, FD_BOUND, SOCKET_BOUND), ("RSS MB", "fds", "sockets"),
                                      strict=True):
            if value > bound:
                fig.problems.append(f"{what} grew by {value} (bound {bound})")
    else:
        fig.problems.append(f"only {len(steady)} samples after warm-up: run longer")
    fig.notes.update(minutes=minutes, rate=rate)
    fig.wall_s = time.monotonic() - t_start
    return fig


def main() -> int:
    from tests.chaos.common import standalone_rig

    args = cli(__doc__.splitlines()[0], minutes=30.0, rate=10.0, every_s=5.0, warmup_min=2.0)
    with standalone_rig(args.workdir) as rig:
        fig = soak(rig, minutes=args.minutes, rate=args.rate, every_s=args.every_s, warmup_min=args.warmup_min)
        print(f"[chaos] logs in {rig.workdir}")
    return report(fig)


if __name__ == "__main__":
    sys.exit(main())
