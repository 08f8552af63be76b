"""Clean stops: SIGTERM at random moments, restart, repeat; zero duplicates and the committed position
equal to what was processed after every stop (see tests/chaos/crash_loop.py for the mechanics).

    python -m tests.chaos.clean_stops --stops 10 --events 1500
"""

from __future__ import annotations

import signal
import sys

from tests.chaos.common import cli, report, standalone_rig
from tests.chaos.crash_loop import kill_loop


def main() -> int:
    args = cli(__doc__.splitlines()[0], stops=10, events=1500, partitions=3, seed=12, max_gap_s=4.0,
               storage="memory")
    with standalone_rig(args.workdir, args.storage) as rig:
        fig = kill_loop(rig, kills=args.stops, events=args.events, sig=signal.SIGTERM,
                        partitions=args.partitions, seed=args.seed, max_gap_s=args.max_gap_s)
        print(f"[chaos] logs in {rig.workdir}")
    return report(fig, zero_duplicates=True)


if __name__ == "__main__":
    sys.exit(main())
