"""Typed configuration of the enrich service.

Every field can be set by an ``ENRICH_*`` environment variable (``__`` separates nested sections, e.g.
``ENRICH_FETCH__TOTAL_TIMEOUT_S=5``) or by a CLI flag, which wins. Secrets are ``SecretStr`` so that
``repr``/logging never shows them; :meth:`Settings.redacted` is what we log at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: librdkafka keys whose values must never reach a log line.
SECRET_KAFKA_KEYS = ("sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret")


class FetchSettings(BaseModel):
    """Limits for downloading vendor image URLs (each download is a request made on a stranger's behalf)."""

    connect_timeout_s: float = Field(3.0, gt=0)
    total_timeout_s: float = Field(10.0, gt=0)
    max_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Cap enforced while streaming the body.")
    max_pixels: int = Field(40_000_000, gt=0, description="Decompression-bomb limit (width x height).")
    max_images_per_product: int = Field(4, ge=0)
    per_host_connections: int = Field(8, ge=1)
    total_connections: int = Field(64, ge=1)
    retries: int = Field(2, ge=0, description="Retries on connection errors, 5xx and 429 only "
                                              "(never sooner than a Retry-After asks).")
    backoff_s: float = Field(0.2, ge=0)
    max_redirects: int = Field(5, ge=0)
    allowed_content_types: list[str] = ["image/jpeg", "image/png", "image/webp", "image/gif"]
    allowed_formats: list[str] = ["JPEG", "PNG", "WEBP", "GIF"]
    allow_loopback: bool = Field(
        False, description="Allow 127.0.0.0/8 and ::1 image hosts. Only for the demo and tests."
    )
    user_agent: str = "enrich-image-fetcher/0.1"


class BatchSettings(BaseModel):
    """Micro-batch bounds: a batch closes when it is full or when its first item has waited max_wait_ms.

    16 images: on 2 CPU cores the demo CNN's throughput peaks at batches of 8-16 and falls at 32
    (docs/benchmarks.md); on a GPU, raise it (64-128).
    """

    image_max_size: int = Field(16, ge=1)
    text_max_size: int = Field(64, ge=1)
    max_wait_ms: float = Field(20.0, ge=0)


class Settings(BaseSettings):
    """Everything `enrich run` needs; see README "Configuration" for the table."""

    model_config = SettingsConfigDict(
        env_prefix="ENRICH_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    bootstrap_servers: str = "127.0.0.1:9092"
    input_topic: str = "products"
    output_topic: str = "products.enriched"
    dead_letter_topic: str = "products.dead-letter"
    group_id: str = "enrich"
    bundle: Path = Path(".cache/enrich/demo-bundle")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(
        None, ge=1, description="torch CPU threads for inference [the container's CPU quota / affinity mask]."
    )

    # Kafka security; also reachable through `kafka` (raw librdkafka passthrough).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    kafka: dict[str, str] = Field(
        default_factory=dict,
        repr=False,  # may hold sasl.password etc.; redacted() shows it masked
        description="Raw librdkafka settings passed to the consumer and producer, e.g. {'fetch.max.bytes': '5242880'}.",
    )

    exactly_once: bool = Field(False, description="Transactional producer with offsets in the transaction.")
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
    commit_interval_s: float = Field(1.0, gt=0)
    revoke_drain_timeout_s: float = Field(10.0, ge=0)
    shutdown_grace_s: float = Field(
        25.0, gt=0, description="SIGTERM to exit; keep below the pod's terminationGracePeriod."
    )
    max_event_bytes: int = Field(1_000_000, gt=0)

    dlq_max_fraction: float = Field(
        0.5, gt=0, le=1, description="Stop loudly when more than this share is dead-lettered."
    )
    dlq_window: int = Field(200, ge=10, description="How many recent events the dead-letter rate is measured over.")

    http_host: str = "0.0.0.0"
    http_port: int = Field(8080, ge=0, le=65535, description="/metrics, /livez, /readyz. 0 picks a free port.")
    liveness_timeout_s: float = Field(30.0, gt=0)
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    stop_after: int | None = Field(None, ge=1, description="Exit after this many events are committed (demo, tests).")
    idle_exit_s: float | None = Field(None, gt=0, description="Exit after this long with nothing to do (replays).")

    fetch: FetchSettings = Field(default_factory=FetchSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)

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
