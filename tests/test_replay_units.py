"""enrich replay's pure parts: token bucket, time parsing, plan decisions, progress bars, the comparison."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from consumer.cli import app
from consumer.cli.replay import parse_time
from consumer.replay.compare import compare
from consumer.replay.plan import ReplayPlan, Version
from consumer.replay.progress import ReplayProgress
from consumer.replay.throttle import TokenBucket


def test_token_bucket_holds_the_rate() -> None:
    async def take(n: int, rate: float) -> float:
        bucket = TokenBucket(rate)
        start = time.monotonic()
        await asyncio.gather(*(bucket.acquire() for _ in range(n)))
        return time.monotonic() - start

    elapsed = asyncio.run(take(41, 200.0))  # the first at once, then 40 at 200/s: 0.2 s
    assert 0.2 * 0.9 <= elapsed <= 0.2 * 1.1 + 0.02
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_parse_time_takes_iso_with_a_zone_or_epoch_ms() -> None:
    assert parse_time("1790000060029", "--x") == 1_790_000_060_029
    iso = datetime.fromtimestamp(1_790_000_060.029, UTC).isoformat(timespec="milliseconds")
    assert parse_time(iso, "--x") == 1_790_000_060_029
    assert parse_time(iso.replace("+00:00", "Z"), "--x") == 1_790_000_060_029
    assert parse_time(None, "--x") is None
    for bad in ("2026-11-24T00:00:00", "yesterday"):
        with pytest.raises(typer.BadParameter):
            parse_time(bad, "--x")


def test_plan_skips_past_the_end_and_all_but_the_newest() -> None:
    plan = ReplayPlan("t", start={0: 10, 1: 0}, end={0: 20, 1: 5}, keep={(0, 12), (1, 4)})
    assert plan.skip_reason(0, 12) is None and plan.skip_reason(1, 4) is None
    assert plan.skip_reason(0, 11) == "replay_not_latest"
    assert plan.skip_reason(0, 20) == plan.skip_reason(1, 9) == plan.skip_reason(2, 0) == "replay_past_end"
    assert plan.total == 15
    early, late = datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC)
    assert Version(late, 0, 1).newer_than(Version(early, 0, 9))  # updated_at first (the live stale rule)
    assert Version(early, 0, 9).newer_than(Version(early, 0, 1))  # then position
    assert Version(early, 0, 1).newer_than(Version(None, 0, 9))


def test_progress_bar_per_partition_with_rate_and_eta_on_a_terminal() -> None:
    plan = ReplayPlan("t", start={0: 0, 1: 100}, end={0: 50, 1: 300}, position={0: 0, 1: 100})
    out = io.StringIO()
    progress = ReplayProgress(plan, terminal=True, console=Console(file=out, force_terminal=True, width=140))
    for step in range(1, 4):
        progress.update({0: 10 * step, 1: 100 + 20 * step})
        time.sleep(0.3)
    progress.close({0: 50, 1: 300})
    text = out.getvalue()
    assert "partition 0" in text and "partition 1" in text
    assert "50/50" in text and "200/200" in text and "ev/s" in text and "ETA" in text


def test_compare_counts_per_attribute_pairs_and_null_changes() -> None:
    old = {"a": {"color": "red", "gender": "men"}, "b": {"color": None, "gender": "women"},
           "c": {"color": "blue", "gender": "men"}, "d": None, "e": {"color": "red", "gender": "men"}}
    new = {"a": {"color": "navy", "gender": "men"}, "b": {"color": "red", "gender": "women"},
           "c": {"color": None, "gender": "men"}, "d": None, "e": None, "f": {"color": "red", "gender": "men"}}
    report = compare(old, new)
    colour = report["attributes"]["color"]
    kinds = ("changed", "value_to_value", "value_to_null", "null_to_value")
    assert tuple(colour[k] for k in kinds) == (3, 1, 1, 1)
    assert sorted(((p["old"], p["new"], p["count"]) for p in colour["pairs"]), key=str) == sorted(
        [("red", "navy", 1), (None, "red", 1), ("blue", None, 1)], key=str)
    assert report["attributes"]["gender"]["changed"] == 0
    assert report["products"] == {"replayed": 6, "compared": 3, "changed": 3, "missing_in_baseline": 1,
                                  "deleted_in_both": 1, "would_delete": 1, "would_undelete": 0}


@pytest.mark.parametrize("args", [
    ["replay", "--bundle", "x"],  # no start
    ["replay", "--bundle", "x", "--from-beginning", "--from-timestamp", "1"],  # two starts
    ["replay", "--bundle", "x", "--from-beginning", "--dry-run"],  # a dry run compares with something
    ["replay", "--bundle", "x", "--from-timestamp", "2026-11-25T00:00:00Z", "--to-timestamp", "2026-11-24T00:00:00Z"],
    ["replay", "--bundle", "x", "--from-timestamp", "2026-11-25T00:00:00"],  # no zone
])
def test_replay_refuses_inconsistent_options_with_exit_2(args: list[str]) -> None:
    assert CliRunner().invoke(app, args).exit_code == 2
