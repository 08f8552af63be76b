"""Typed configuration of the enrich service.

Every field can be set by an ``ENRICH_*`` environment variable (``__`` separates nested sections, e.g.
``ENRICH_FETCH__TOTAL_TIMEOUT_S=5``) or by a CLI flag, which wins; the flags of ``enrich run``,
``check-config`` and ``replay`` are generated from these fields (consumer/cli/flags.py), each field's
``description`` is its help. Secrets are ``SecretStr`` so that ``repr``/logging never shows them;
:meth:`Settings.redacted` is what we log at start-up.

A wrong configuration is refused rather than ignored: an ``ENRICH_*`` variable that is no setting (and not
in :data:`NOT_SETTINGS`) and an unknown key of a section (``ENRICH_FETCH__TOTAL_TIMEOUT``) fail validation
(``extra="forbid"``), and :func:`problems` turns the errors into one line each with a did-you-mean.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "ENRICH_"

#: ``ENRICH_*`` variables that something other than :class:`Settings` reads. Every other ``ENRICH_*``
#: variable must be a setting, or `enrich run` (and everything that loads Settings) refuses to start.
NOT_SETTINGS: dict[str, str] = {
    "ENRICH_TEST_BUNDLE": "tests only: reuse a tiny bundle trained earlier (tests/conftest.py, tests/chaos)",
    "ENRICH_CACHE_DIR": "`enrich demo --cache-dir`: where the sample catalog and demo bundle are cached",
    "ENRICH_GIT_REVISION": "the git revision reported by enrich_build_info (set when the image is built)",
    "ENRICH_PG_BIN": "tests/chaos only: where the PostgreSQL server binaries are (tests/chaos/storage_broker.py)",
}


@dataclass(frozen=True)
class Cli:
    """How a setting appears on the command line, when not as ``--<name>`` (``--<section>-<name>`` nested)."""

    flag: str | None = None
    short: str | None = None
    #: the negative form of a boolean flag [``--no-<flag>``]
    off: str | None = None
    metavar: str | None = None
    #: no flag at all (secrets: the environment only, never a process argument)
    hidden: bool = False

#: librdkafka keys whose values must never reach a log line.
SECRET_KAFKA_KEYS = ("sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret")


class FetchSettings(BaseModel):
    """Limits for downloading vendor image URLs (each download is a request made on a stranger's behalf)."""

    model_config = ConfigDict(extra="forbid")

    connect_timeout_s: float = Field(3.0, gt=0, description="TCP (and TLS) connect timeout of one connection, s.")
    total_timeout_s: float = Field(
        10.0, gt=0, description="Deadline of one image download: all hops, retries and backoff, s."
    )
    max_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Cap enforced while streaming the body.")
    max_pixels: int = Field(40_000_000, gt=0, description="Decompression-bomb limit (width x height).")
    max_images_per_product: int = Field(4, ge=0, description="URLs fetched per product; the rest are skipped.")
    per_host_connections: int = Field(8, ge=1, description="Concurrent connections to one image host.")
    total_connections: int = Field(64, ge=1, description="Concurrent connections to all image hosts.")
    retries: int = Field(2, ge=0, description="Retries on connection errors, 5xx and 429 only "
                                              "(never sooner than a Retry-After asks).")
    backoff_s: float = Field(0.2, ge=0, description="Retry delay: backoff_s * 2**n * U(0.5, 1), s.")
    max_redirects: int = Field(5, ge=0, description="Redirects followed per fetch.")
    allowed_content_types: list[str] = Field(
        ["image/jpeg", "image/png", "image/webp", "image/gif"], description="Content types accepted (repeatable)."
    )
    allowed_formats: list[str] = Field(
        ["JPEG", "PNG", "WEBP", "GIF"], description="Decoded image formats accepted (repeatable)."
    )
    allow_loopback: Annotated[bool, Cli(flag="--allow-loopback-images")] = Field(
        False, description="Allow 127.0.0.0/8 and ::1 image hosts. Only for the demo and tests."
    )
    user_agent: str = Field("enrich-image-fetcher/0.1", description="User-Agent of image requests.")


class BatchSettings(BaseModel):
    """Micro-batch bounds: a batch closes when it is full or when its first item has waited max_wait_ms.

    16 images: on 2 CPU cores the demo CNN's throughput peaks at batches of 8-16 and falls at 32
    (docs/benchmarks.md); on a GPU, raise it (64-128).
    """

    model_config = ConfigDict(extra="forbid")

    image_max_size: int = Field(16, ge=1, description="Images per micro-batch at most (raise to 64-128 on a GPU).")
    text_max_size: int = Field(64, ge=1, description="Texts per micro-batch at most.")
    max_wait_ms: float = Field(20.0, ge=0, description="A batch closes when its first item has waited this long, ms.")


class Settings(BaseSettings):
    """Everything `enrich run` needs; see README "Configuration" for the table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    bootstrap_servers: Annotated[str, Cli(short="-b")] = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]."
    )
    input_topic: str = Field("products", description="Topic of product events.")
    output_topic: str = Field("products.enriched", description="Topic for enriched events.")
    dead_letter_topic: str = Field("products.dead-letter", description="Topic for events that cannot be processed.")
    group_id: str = Field("enrich", description="Consumer group id.")
    bundle: Path = Field(Path(".cache/enrich/demo-bundle"), description="Model bundle directory (enrich train).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto (CUDA when present) | cpu | cuda.")
    torch_threads: int | None = Field(
        None, ge=1, description="torch CPU threads for inference [the container's CPU quota / affinity mask]."
    )

    # Kafka security; also reachable through `kafka` (raw librdkafka passthrough).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL."
    )
    sasl_mechanism: str | None = Field(None, description="SASL mechanism, e.g. SCRAM-SHA-512 or PLAIN.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: Annotated[SecretStr | None, Cli(hidden=True)] = Field(
        None, description="SASL password: a secret, from the environment only (never a flag), never logged."
    )
    ssl_ca_location: str | None = Field(None, description="CA certificate file for TLS to the brokers.")
    kafka: Annotated[dict[str, str], Cli(flag="--kafka", short="-X", metavar="KEY=VALUE")] = Field(
        default_factory=dict,
        repr=False,  # may hold sasl.password etc.; redacted() shows it masked
        description="Raw librdkafka setting KEY=VALUE for the consumer and producer (repeatable), e.g. -X "
        "fetch.max.bytes=5242880; in the environment a JSON object (ENRICH_KAFKA) or ENRICH_KAFKA__<key>. "
        "librdkafka itself checks each key and value before the service starts.",
    )

    exactly_once: Annotated[bool, Cli(off="--at-least-once")] = Field(
        False, description="Transactional producer with offsets in the transaction."
    )
    transactional_id: str | None = Field(
        None,
        description="Exactly-once only: this member's transactional.id; must be unique per member "
        "[<group_id>-<POD_NAME or hostname>].",
    )
    cloudevents: bool = Field(
        False,
        description="Also send CloudEvents binary-mode headers (ce_id, ce_source, ce_type, ce_time, "
        "ce_specversion...) on every output, mapped onto existing fields (schemas/cloudevents.py).",
    )
    stale_updates: Literal["skip", "process"] = Field(
        "skip",
        description="An input whose updated_at is older than one already seen for its product: skip it "
        "(outcome stale_update, not emitted) or process it anyway.",
    )
    product_memory: int = Field(
        100_000, ge=1, description="Products per partition whose newest updated_at is remembered (stale check)."
    )
    image_memory_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Budget for image bodies awaiting decode and model views awaiting inference; "
        "downloads wait for room.",
    )
    max_in_flight: int = Field(512, ge=1, description="Messages polled but not yet committed-ready; above it we pause.")
    resume_fraction: float = Field(0.5, gt=0, lt=1, description="Resume partitions below this share of max_in_flight.")
    commit_interval_s: float = Field(1.0, gt=0, description="How often completed offsets are committed, s.")
    revoke_drain_timeout_s: float = Field(
        10.0, ge=0, description="How long a revoked partition's in-flight work may finish, s."
    )
    shutdown_grace_s: float = Field(
        25.0, gt=0, description="SIGTERM to exit; keep below the pod's terminationGracePeriod."
    )
    max_event_bytes: int = Field(1_000_000, gt=0, description="Larger input messages are dead-lettered.")

    dlq_max_fraction: float = Field(
        0.5, gt=0, le=1, description="Stop loudly when more than this share is dead-lettered."
    )
    dlq_window: int = Field(200, ge=10, description="How many recent events the dead-letter rate is measured over.")

    http_host: str = Field("0.0.0.0", description="Address of the HTTP endpoints.")
    http_port: int = Field(8080, ge=0, le=65535, description="/metrics, /livez, /readyz. 0 picks a free port.")
    liveness_timeout_s: float = Field(
        30.0, gt=0, description="/livez fails when the poll loop or one micro-batch is stuck this long, s."
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING...")
    log_format: Literal["json", "console"] = Field("json", description="json | console.")
    stop_after: int | None = Field(None, ge=1, description="Exit after this many events are committed (demo, tests).")
    idle_exit_s: float | None = Field(None, gt=0, description="Exit after this long with nothing to do (replays).")

    fetch: FetchSettings = Field(default_factory=FetchSettings, description="Image downloads and the SSRF guard.")
    batch: BatchSettings = Field(default_factory=BatchSettings, description="Micro-batch bounds per model.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # pydantic-settings reads only the variables of known fields (and, through ``__``, keys of the
        # sections, which their extra="forbid" checks); the unknown ones come in through this source so that
        # extra="forbid" refuses them too, in the same ValidationError as every other problem.
        return init_settings, env_settings, _UnknownEnvironment(settings_cls), dotenv_settings, file_secret_settings

    @field_validator("kafka", mode="before")
    @classmethod
    def _kafka_values_as_str(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        topics = {self.input_topic, self.output_topic, self.dead_letter_topic}
        if len(topics) != 3:
            raise ValueError("input, output and dead-letter topics must be three different topics")
        if self.security_protocol.startswith("SASL") and not (self.sasl_mechanism and self.sasl_username):
            raise ValueError("SASL security needs sasl_mechanism and sasl_username (and usually sasl_password)")
        return self

    def kafka_common(self) -> dict[str, Any]:
        """librdkafka settings shared by consumer, producer and admin client (secrets in clear: never log)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        conf.update(self.kafka)
        return conf

    def member_transactional_id(self) -> str:
        """The transactional.id of this member: configured, or ``<group>-<POD_NAME or hostname>``.

        Every member needs its own: two producers with one id fence each other in a loop. Zombie fencing
        across restarts does not rest on the id (a pod's name changes on restart) but on the consumer
        group generation sent with the offsets (KIP-447), which librdkafka does for us.
        """
        if self.transactional_id:
            return self.transactional_id
        import os
        import socket

        member = os.environ.get("POD_NAME") or socket.gethostname()
        return f"{self.group_id}-{member}"

    def max_message_bytes(self) -> int:
        """The producer's ``message.max.bytes`` (librdkafka default 1,000,000): no output may be larger."""
        return int(self.kafka.get("message.max.bytes", 1_000_000))

    def redacted(self) -> dict[str, Any]:
        """The settings as a plain dict with every secret masked, for start-up logs and `check-config`."""
        data = self.model_dump(mode="json")
        data["sasl_password"] = "**********" if self.sasl_password else None
        data["kafka"] = {k: ("**********" if k in SECRET_KAFKA_KEYS else v) for k, v in self.kafka.items()}
        return data


# --------------------------------------------------------------------------- refusing a wrong configuration
def _section(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _takes_any_key(field: FieldInfo) -> bool:
    """A mapping field (``kafka``): ``ENRICH_KAFKA__<key>`` is its environment form, any key (librdkafka judges)."""
    return getattr(field.annotation, "__origin__", None) is dict


def env_names(settings_cls: type[BaseModel] | None = None) -> dict[str, str]:
    """Every environment variable of the settings -> its dotted path (``ENRICH_FETCH__MAX_BYTES``: fetch.max_bytes)."""
    names: dict[str, str] = {}
    for name, field in (settings_cls or Settings).model_fields.items():
        names[f"{ENV_PREFIX}{name.upper()}"] = name
        section = _section(field)
        for sub in section.model_fields if section else ():
            names[f"{ENV_PREFIX}{name.upper()}__{sub.upper()}"] = f"{name}.{sub}"
    return names


class _UnknownEnvironment(PydanticBaseSettingsSource):
    """``ENRICH_*`` variables that are no field, as extra values (which ``extra="forbid"`` then refuses)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        unknown: dict[str, Any] = {}
        for name, value in os.environ.items():
            upper = name.upper()
            if not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS:
                continue
            key = upper.removeprefix(ENV_PREFIX).lower()
            head, nested, _ = key.partition("__")
            field = fields.get(head)
            if field is not None and (not nested or _section(field) or _takes_any_key(field)):
                continue  # a field, or a key of a section (its own extra="forbid" checks it) or of kafka
            unknown[key] = value
        return unknown


def suggestion(name: str) -> str | None:
    """The closest real variable to a misspelt ``ENRICH_*`` name (difflib, the prefix left out)."""
    candidates = {n.removeprefix(ENV_PREFIX): n for n in [*env_names(), *NOT_SETTINGS]}
    close = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), list(candidates), n=1, cutoff=0.6)
    return candidates[close[0]] if close else None


def problems(exc: ValidationError) -> list[str]:
    """One line per error, naming the environment variable (values of unknown ones are never shown: a
    misspelt password variable must not be printed). Unknown names read ``<VAR>: no such setting``."""
    names = {path: env for env, path in env_names().items()}
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        if err["type"] == "extra_forbidden":
            env = ENV_PREFIX + "__".join(loc).upper()
            hint = suggestion(env)
            lines.append(f"{env}: no such setting" + (f"; did you mean {hint}?" if hint else ""))
        elif not loc:
            lines.append(str(err["msg"]).removeprefix("Value error, "))
        else:
            path = ".".join(loc[:2])
            where = ".".join(loc)
            env = names.get(path)
            lines.append(f"{where}{f' ({env})' if env else ''}: {err['msg']}")
    return lines


class _KafkaOnly(BaseSettings):
    """The raw librdkafka passthrough alone, to check its keys even when other settings are invalid."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")

    kafka: dict[str, str] = Field(default_factory=dict)

    _as_str = field_validator("kafka", mode="before")(Settings._kafka_values_as_str.__func__)  # type: ignore[attr-defined]


def kafka_passthrough(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """``kafka`` as the environment and the flags give it, without validating anything else ({} if unreadable)."""
    try:
        return _KafkaOnly(**({"kafka": overrides["kafka"]} if overrides and overrides.get("kafka") else {})).kafka
    except ValidationError:
        return {}
