"""The librdkafka configurations of the consumer and the producer, and their check before anything starts.

librdkafka is the judge of its own keys and values: creating a client handle parses the whole configuration
and raises ``KafkaException`` ("No such configuration property", "Invalid value for configuration
property") without connecting to anything when no ``bootstrap.servers`` is given (the handle's broker
threads have no broker to reach), so :func:`problems` checks a configuration in a millisecond, offline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer

from consumer.ops.settings import Settings

#: Keys left out of the whole-configuration check: where the brokers are (no connection), and the TLS/SASL
#: material whose files exist only where the service runs (checked there, by the service itself).
_ENVIRONMENT_KEYS = ("bootstrap.servers", "security.protocol", "sasl.", "ssl.")


def consumer_config(settings: Settings) -> dict[str, Any]:
    conf = {
        **settings.kafka_common(),
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "isolation.level": "read_committed",
    }
    # Raw passthrough wins, but never for the settings our offset guarantees rest on.
    conf.update({k: v for k, v in settings.kafka.items() if k not in ("enable.auto.commit",)})
    conf["enable.auto.commit"] = False
    return conf


def producer_config(settings: Settings) -> dict[str, Any]:
    conf = {
        **settings.kafka_common(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    if settings.exactly_once:
        conf["transactional.id"] = settings.member_transactional_id()
    conf.update(settings.kafka)
    conf["enable.idempotence"] = True
    return conf


def _quiet() -> logging.Logger:
    """A logger for the check's handles: "a consumer property, ignored by this producer" is not a problem."""
    quiet = logging.getLogger("enrich.kafka_config_check")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    return quiet


def _refusal(conf: Mapping[str, Any], client: type = Consumer) -> str | None:
    """librdkafka's objection to ``conf`` (None when it takes it). Never connects: no bootstrap.servers."""
    handle = None
    try:
        handle = client({"group.id": "enrich-config-check", **conf}, logger=_quiet())
    except KafkaException as exc:
        return str(exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else exc)
    except (TypeError, ValueError) as exc:  # e.g. a callback key ("error_cb") given a string
        return str(exc)
    finally:
        if handle is not None:
            handle.close() if isinstance(handle, Consumer) else handle.flush(0)
    return None


def passthrough_problems(kafka: Mapping[str, str]) -> list[str]:
    """One line per raw librdkafka key (``-X`` / ``ENRICH_KAFKA``) that librdkafka refuses, key by key (so
    every bad key is named, not only the first)."""
    lines = []
    for key, value in kafka.items():
        conf: dict[str, Any] = {key: value}
        if key == "security.protocol":  # alone, SASL would fail on the default mechanism (GSSAPI), no user
            conf.update({"sasl.mechanism": "PLAIN", "sasl.username": "check", "sasl.password": "check"})
        elif key.startswith(("ssl.", "sasl.")):
            conf["security.protocol"] = "PLAINTEXT"  # the value's syntax only; files are the pod's business
        why = _refusal(conf)
        if why is not None:
            lines.append(f"kafka {key!r} (-X / ENRICH_KAFKA): {why}")
    return lines


def problems(settings: Settings) -> list[str]:
    """What librdkafka refuses in the service's configuration: each passthrough key, then the consumer's and
    the producer's whole configuration (combinations, e.g. ``acks=1`` with the idempotent producer)."""
    lines = passthrough_problems(settings.kafka)
    if lines:
        return lines
    for name, conf, client in (("consumer", consumer_config(settings), Consumer),
                               ("producer", producer_config(settings), Producer)):
        offline = {k: v for k, v in conf.items() if not k.startswith(_ENVIRONMENT_KEYS)}
        why = _refusal(offline, client)
        if why is not None:
            lines.append(f"kafka: librdkafka refuses the {name} configuration: {why}")
    return lines
