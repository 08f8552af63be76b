"""``enrich replay``: re-enrich the input topic with a bundle, as its own consumer group (consumer/replay/).

Registered on the ``enrich`` app by :func:`register`; heavy imports stay inside the command.
"""


import asyncio
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer


def parse_time(value: str | None, flag: str) -> int | None:
    """ISO 8601 (``2026-11-24T00:00:00Z``; a zone is required) or epoch milliseconds -> epoch ms."""
    if value is None:
        return None
    if value.strip().lstrip("-").isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 time or epoch milliseconds: {value!r}", param_hint=flag) from exc
    if moment.tzinfo is None:
        raise typer.BadParameter(f"{value!r} has no time zone (add Z or +00:00)", param_hint=flag)
    return round(moment.timestamp() * 1000)


def verified_version(bundle: Path) -> str:
    """The bundle's version after verifying its content hash; exit 2 with the reason otherwise."""
    from models.verify import BundleVerificationError, verify_bundle

    try:
        return verify_bundle(bundle)
    except BundleVerificationError as exc:
        typer.secho(f"bundle refused: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def _print_summary(summary: dict[str, Any]) -> None:
    plan = summary.get("plan", {})
    typer.echo(
        f"replay {'complete' if summary.get('complete') else 'stopped'}: group {summary['group']}, model "
        f"{summary.get('model', {}).get('version')} -> {summary['output_topic']}; {summary['enriched']} enriched, "
        f"{summary['tombstones']} tombstones, {summary['dead_lettered']} dead-lettered, skipped "
        f"{sum(summary['skipped'].values())} of {plan.get('events_in_range')} inputs in range "
        f"in {summary['seconds']} s ({summary['rate_per_s']} outputs/s over {summary.get('processing_seconds')} s "
        f"of processing); exit {summary['exit_code']}"
    )


#: Settings without a flag on `enrich replay`: it stops by itself at its end offsets.
REPLAY_CONTROLS = ("stop_after", "idle_exit_s")


def register(app: typer.Typer) -> None:
    from consumer.cli.flags import settings_command, settings_overrides
    from consumer.cli.service import load_settings

    @settings_command(app, "replay", exclude=REPLAY_CONTROLS)
    def replay(
        flags: dict[str, Any],
        from_beginning: Annotated[
            bool, typer.Option("--from-beginning", help="Replay from each partition's first offset.")
        ] = False,
        from_timestamp: Annotated[
            str | None, typer.Option(help="Replay from the first input stamped at or after this time (ISO 8601 "
                                          "with a zone, or epoch ms).")
        ] = None,
        to_timestamp: Annotated[
            str | None, typer.Option(help="Stop before the first input stamped after this time [the end "
                                          "offsets at start].")
        ] = None,
        replay_group: Annotated[
            str | None, typer.Option(help="The replay's consumer group [<group-id>-replay-<bundle version>, "
                                          "plus -<from ms>-<to ms> for a time range, -<topic> for another "
                                          "--output-topic].")
        ] = None,
        max_rate: Annotated[
            float | None, typer.Option(min=0.001, help="At most this many events per second enriched [no limit].")
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Produce nothing; report what would change (needs --compare-to).")
        ] = False,
        compare_to: Annotated[
            str | None, typer.Option(help="Dry run: a bundle directory, or an enriched topic (its latest record "
                                          "per product), to compare with.")
        ] = None,
        report: Annotated[
            Path | None, typer.Option(help="Dry run: write compare.json and compare.png into this directory.")
        ] = None,
        progress: Annotated[
            bool | None, typer.Option("--progress/--no-progress", help="Progress bars [when on a terminal; log "
                                                                     "lines otherwise].", show_default=False)
        ] = None,
    ) -> None:
        """Re-enrich the input topic (or a time range of it) with BUNDLE, next to the live consumer.

        Its own consumer group; stops by itself at the end offsets captured at start (or --to-timestamp),
        exit 0 with a summary; resumes from its commits after a crash. Only the newest input of each
        product in the range is enriched, and a product with a newer input (before or during the replay)
        is left to the live consumer: a replay never overwrites newer state (docs/operations.md).
        """
        if flags["bundle"] is None and not any(k.upper() == "ENRICH_BUNDLE" for k in os.environ):
            raise typer.BadParameter("the bundle to replay with is required (--bundle or ENRICH_BUNDLE)",
                                     param_hint="--bundle")
        if from_beginning == (from_timestamp is not None):
            raise typer.BadParameter("give exactly one of --from-beginning and --from-timestamp")
        if dry_run != (compare_to is not None):
            raise typer.BadParameter("--dry-run and --compare-to go together", param_hint="--compare-to")
        from_ms = parse_time(from_timestamp, "--from-timestamp")
        to_ms = parse_time(to_timestamp, "--to-timestamp")
        if from_ms is not None and to_ms is not None and to_ms < from_ms:
            raise typer.BadParameter("--to-timestamp is before --from-timestamp", param_hint="--to-timestamp")
        settings = load_settings(settings_overrides(flags))
        from consumer.ops.settings import Settings

        version = verified_version(settings.bundle)
        # a time range gets a group of its own: a group's commits mean nothing for another range
        span = "" if from_ms is None and to_ms is None else f"-{from_ms or 'start'}-{to_ms or 'end'}"
        # and so does another output topic: a shadow replay's commits must not end the replay of the history
        configured = os.environ.get("ENRICH_OUTPUT_TOPIC", Settings.model_fields["output_topic"].default)
        shadow = "" if settings.output_topic == configured else f"-{settings.output_topic}"
        group = replay_group or f"{settings.group_id}-replay-{version}{span}{shadow}"
        if group == settings.group_id:
            typer.secho(f"the replay group must not be the live group {group!r}", fg="red", err=True)
            raise typer.Exit(2)
        settings = settings.model_copy(update={"group_id": group})
        if max_rate:  # in-flight events wait for tokens: keep only a few seconds' worth polled
            settings.max_in_flight = min(settings.max_in_flight, max(16, int(max_rate * 4)))
        from consumer.ops.logs import configure_logging

        configure_logging(settings.log_level, settings.log_format)
        if dry_run:
            from consumer.replay.compare import dry_run as run_dry

            assert compare_to is not None
            if Path(compare_to).is_dir():
                verified_version(Path(compare_to))
            try:
                result = asyncio.run(run_dry(settings, compare_to, from_ms=from_ms, to_ms=to_ms))
            except Exception as exc:  # e.g. an unknown topic: one clear line, not a traceback
                typer.secho(f"dry run failed: {type(exc).__name__}: {exc}", fg="red", err=True)
                raise typer.Exit(1) from exc
            from consumer.replay.compare import print_table, write_report

            print_table(result)
            if report is not None:
                paths = write_report(result, report)
                typer.echo(f"report: {', '.join(str(p) for p in paths)}")
            else:
                typer.echo(json.dumps(result, indent=2))
            raise typer.Exit(0)
        from consumer.replay.runner import ReplayOptions, run_replay

        code, summary = asyncio.run(run_replay(settings, ReplayOptions(from_ms=from_ms, to_ms=to_ms,
                                                                       max_rate=max_rate, progress=progress)))
        _print_summary(summary)
        raise typer.Exit(code)
