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


def register(app: typer.Typer) -> None:
    from consumer.cli import (
        Bootstrap,
        DeadLetterTopic,
        GroupId,
        InputTopic,
        KafkaPassthrough,
        OutputTopic,
        _parse_kafka,
        _settings,
    )

    @app.command()
    def replay(
        bundle: Annotated[Path, typer.Option("--bundle", envvar="ENRICH_BUNDLE", help="The bundle to replay with.")],
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
        output_topic: OutputTopic = None,
        bootstrap_servers: Bootstrap = None,
        input_topic: InputTopic = None,
        dead_letter_topic: DeadLetterTopic = None,
        group_id: GroupId = None,
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
        kafka: KafkaPassthrough = None,
        device: Annotated[str | None, typer.Option(envvar="ENRICH_DEVICE", help="auto | cpu | cuda.")] = None,
        http_port: Annotated[int | None, typer.Option(envvar="ENRICH_HTTP_PORT", help="/metrics port.")] = None,
        allow_loopback_images: Annotated[
            bool | None, typer.Option("--allow-loopback-images", envvar="ENRICH_FETCH__ALLOW_LOOPBACK",
                                      help="Allow image URLs on 127.0.0.1/::1 (demo and tests only).",
                                      show_default=False)
        ] = None,
        progress: Annotated[
            bool | None, typer.Option("--progress/--no-progress", help="Progress bars [when on a terminal; log "
                                                                     "lines otherwise].", show_default=False)
        ] = None,
        log_format: Annotated[str | None, typer.Option(envvar="ENRICH_LOG_FORMAT", help="json | console.")] = None,
        log_level: Annotated[str | None, typer.Option(envvar="ENRICH_LOG_LEVEL", help="DEBUG, INFO...")] = None,
    ) -> None:
        """Re-enrich the input topic (or a time range of it) with BUNDLE, next to the live consumer.

        Its own consumer group; stops by itself at the end offsets captured at start (or --to-timestamp),
        exit 0 with a summary; resumes from its commits after a crash. Only the newest input of each
        product in the range is enriched, and a product with a newer input (before or during the replay)
        is left to the live consumer: a replay never overwrites newer state (docs/operations.md).
        """
        if from_beginning == (from_timestamp is not None):
            raise typer.BadParameter("give exactly one of --from-beginning and --from-timestamp")
        if dry_run != (compare_to is not None):
            raise typer.BadParameter("--dry-run and --compare-to go together", param_hint="--compare-to")
        from_ms = parse_time(from_timestamp, "--from-timestamp")
        to_ms = parse_time(to_timestamp, "--to-timestamp")
        if from_ms is not None and to_ms is not None and to_ms < from_ms:
            raise typer.BadParameter("--to-timestamp is before --from-timestamp", param_hint="--to-timestamp")
        settings = _settings(
            bootstrap_servers=bootstrap_servers, input_topic=input_topic, output_topic=output_topic,
            dead_letter_topic=dead_letter_topic, group_id=group_id, bundle=bundle, kafka=_parse_kafka(kafka),
            device=device, http_port=http_port, log_format=log_format, log_level=log_level,
        )
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
        if allow_loopback_images:
            settings.fetch.allow_loopback = True
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
