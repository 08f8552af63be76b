"""``enrich run`` and ``enrich check-config``, and the one way every command loads the service's settings.

Their flags are generated from :class:`consumer.ops.settings.Settings` (consumer/cli/flags.py): a setting
added there is a flag of both commands (and of ``enrich replay``) with its description as help. Loading
refuses a wrong configuration with exit 2 and every problem on its own line: invalid values, ``ENRICH_*``
variables that are no setting (with a did-you-mean), unknown keys of a section, and librdkafka keys or
values that librdkafka itself refuses.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from consumer.cli.flags import settings_command, settings_overrides


def configuration_problems(overrides: dict[str, Any], *, kafka: bool = True) -> tuple[Any, list[str]]:
    """(Settings or None, problems): the environment with ``overrides`` on top, validated, and (``kafka``)
    its librdkafka configuration checked offline. Every problem is listed, not only the first."""
    from consumer.ops.settings import NOT_SETTINGS, Settings, kafka_passthrough, problems

    settings, lines = None, []
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = problems(exc)
        if any(": no such setting" in line for line in lines):
            lines.append(f"(ENRICH_* variables must be settings; those read by other parts of enrich: "
                         f"{', '.join(NOT_SETTINGS)})")
    if kafka:
        from consumer.stream.kafka_config import passthrough_problems
        from consumer.stream.kafka_config import problems as kafka_problems

        lines += kafka_problems(settings) if settings is not None else passthrough_problems(
            kafka_passthrough(overrides))
    return settings, lines


def load_settings(overrides: dict[str, Any] | None = None, *, kafka: bool = True) -> Any:
    """Settings from ENRICH_* variables with the given overrides (flags) on top; exit 2 listing every problem."""
    settings, lines = configuration_problems(overrides or {}, kafka=kafka)
    if lines:
        typer.secho("invalid configuration:\n" + "\n".join(f"  {line}" for line in lines), fg="red", err=True)
        raise typer.Exit(2)
    return settings


def _bundle_problems(settings: Any) -> tuple[list[str], str | None]:
    """(missing or unreadable bundle: exit 1, refused bundle: exit 2)."""
    manifest = settings.bundle / "manifest.json"
    if not manifest.is_file():
        return [f"bundle: {manifest} not found (train one with `enrich train`)"], None
    try:
        json.loads(manifest.read_text())
    except ValueError as exc:
        return [f"bundle: {manifest} is not valid JSON: {exc}"], None
    from models.verify import BundleVerificationError, verify_bundle

    try:
        verify_bundle(settings.bundle)
    except BundleVerificationError as exc:
        return [], f"bundle refused: {exc}"
    return [], None


def register(app: typer.Typer) -> None:
    @settings_command(app, "run")
    def run(flags: dict[str, Any]) -> None:
        """Run the enrichment consumer against any Kafka cluster until SIGTERM (or --stop-after / --idle-exit-s).

        Every option is also an ENRICH_* environment variable (a flag wins); nested settings use "__", e.g.
        ENRICH_FETCH__TOTAL_TIMEOUT_S=5 or ENRICH_BATCH__IMAGE_MAX_SIZE=16 (see README, Configuration). An
        ENRICH_* variable that is no setting, or a librdkafka key librdkafka does not know, stops it (exit 2).
        """
        settings = load_settings(settings_overrides(flags))
        from consumer.ops.logs import configure_logging, get_logger
        from consumer.service import EnrichService

        if (settings.bundle / "manifest.json").is_file():  # a missing bundle stays exit 1 (a volume not mounted yet)
            from consumer.cli.replay import verified_version

            verified_version(settings.bundle)  # tampered or half-copied: exit 2 before anything starts
        configure_logging(settings.log_level, settings.log_format)
        get_logger("enrich").info("starting enrich run", settings=settings.redacted())
        raise typer.Exit(asyncio.run(EnrichService(settings).run()))

    @settings_command(app, "check-config")
    def check_config(
        flags: dict[str, Any],
        check_bundle: Annotated[
            bool, typer.Option(help="Also verify the bundle: readable manifest, content hash = its version (exit 2).")
        ] = True,
    ) -> None:
        """Validate the configuration (environment + flags) without connecting; print it with secrets masked.

        Lists every problem, not only the first: invalid values, ENRICH_* variables that are no setting (with
        a did-you-mean), librdkafka keys librdkafka refuses (exit 2), then the bundle: missing (exit 1) or
        failing its content hash (exit 2). Takes the same flags as `enrich run`.
        """
        settings, config = configuration_problems(settings_overrides(flags))
        missing, refused = _bundle_problems(settings) if check_bundle and settings is not None else ([], None)
        if settings is not None:
            typer.echo(json.dumps(settings.redacted(), indent=2, default=str))
        for line in [*config, *missing, *([refused] if refused else [])]:
            typer.secho(line, fg="red", err=True)
        raise typer.Exit(2 if config or refused else 1 if missing else 0)
