"""Prometheus metrics of the service, all in one place so names stay consistent (base units, ``_total``).

Every metric lives in :data:`REGISTRY` rather than the process-global default registry, so tests and the
demo can run several services in one process without "duplicated timeseries" errors. The standard process
and platform collectors that the default registry would carry (``process_resident_memory_bytes``,
``process_open_fds``, ``process_cpu_seconds_total``, ``python_info``, ``python_gc_*``) are registered here
too, with ``enrich_build_info`` (:func:`set_build_info`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_*: memory, open fds, CPU seconds, start time (Linux /proc)
PlatformCollector(registry=REGISTRY)  # python_info
GCCollector(registry=REGISTRY)  # python_gc_*

#: Set when the image is built (deploy/Dockerfile: ``--build-arg REVISION=$(git rev-parse HEAD)``).
#: See :func:`git_revision`.
REVISION_ENV = "ENRICH_GIT_REVISION"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)

EVENTS_IN = Counter("enrich_events_in_total", "Events polled from the input topic.", ["topic"], registry=REGISTRY)
EVENTS_OUT = Counter(
    "enrich_events_out_total", "Events delivered to the output topic.", ["kind"], registry=REGISTRY
)  # kind: enriched | tombstone
EVENTS_DEAD_LETTERED = Counter(
    "enrich_events_dead_lettered_total", "Events delivered to the dead-letter topic.", ["reason"], registry=REGISTRY
)
IMAGE_FETCHES = Counter(
    "enrich_image_fetches_total",
    "Image downloads by outcome (ok or the failure status).",
    ["status"],
    registry=REGISTRY,
)
IMAGE_FETCH_BYTES = Counter("enrich_image_fetch_bytes_total", "Bytes of image bodies read.", registry=REGISTRY)
IMAGE_FETCH_SECONDS = Histogram(
    "enrich_image_fetch_seconds", "Time to download and decode one image.", buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
BATCH_SIZE = Histogram(
    "enrich_batch_size", "Items per model micro-batch.", ["model"], buckets=_BATCH_BUCKETS, registry=REGISTRY
)
INFERENCE_SECONDS = Histogram(
    "enrich_inference_seconds",
    "Forward pass time per micro-batch.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "enrich_stage_seconds",
    "Time an event spends in each stage.",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
END_TO_END_SECONDS = Histogram(
    "enrich_end_to_end_seconds",
    "From the input message's timestamp to delivery of its output.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("enrich_in_flight_events", "Events polled and not yet completed.", registry=REGISTRY)
PAUSED_PARTITIONS = Gauge("enrich_paused_partitions", "Partitions paused by backpressure.", registry=REGISTRY)
ASSIGNED_PARTITIONS = Gauge("enrich_assigned_partitions", "Partitions currently assigned.", registry=REGISTRY)
COMMITS = Counter("enrich_commits_total", "Offset commits by outcome.", ["outcome"], registry=REGISTRY)
REBALANCES = Counter("enrich_rebalances_total", "Rebalance callbacks.", ["kind"], registry=REGISTRY)
CONSUMER_LAG = Gauge(
    "enrich_consumer_lag_messages",
    "High watermark minus this member's committed offset, per owned partition (both delivery modes).",
    ["topic", "partition"],
    registry=REGISTRY,
)
MODEL_INFO = Info("enrich_model", "The loaded model bundle.", registry=REGISTRY)
BUILD_INFO = Gauge(
    "enrich_build_info",
    "Always 1: the running build (package version, git revision, torch version, inference device).",
    ["version", "revision", "torch_version", "device"],
    registry=REGISTRY,
)
LAST_HEARTBEAT = Gauge(
    "enrich_main_loop_heartbeat_timestamp_seconds", "Unix time of the poll loop's last turn.", registry=REGISTRY
)
IMAGE_MEMORY_BYTES = Gauge(
    "enrich_image_memory_bytes",
    "Bytes of image bodies awaiting decode and model views awaiting inference (bounded by image_memory_bytes).",
    registry=REGISTRY,
)
IMAGE_MEMORY_WAITS = Counter(
    "enrich_image_memory_waits_total", "Downloads that waited for room in the image memory budget.", registry=REGISTRY
)
EVENTS_SKIPPED = Counter(
    "enrich_events_skipped_total",
    "Inputs completed without an output: superseded (a newer version of the product was in flight) or "
    "stale_update (older updated_at than one already seen).",
    ["reason"],
    registry=REGISTRY,
)
OLDEST_IN_FLIGHT_SECONDS = Gauge(
    "enrich_oldest_in_flight_seconds",
    "Age of the oldest event polled and not yet completed, per partition (0 when none). Alert when it grows.",
    ["topic", "partition"],
    registry=REGISTRY,
)

# --- what the model answers (a dashboard shows a bundle going wrong before anyone reads the events) ----------
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
PREDICTIONS = Counter(
    "enrich_predictions_total",
    "Attribute predictions written, per attribute and outcome (value: answered; null: below the threshold or no "
    "evidence). Null share = null / all.",
    ["attribute", "outcome"],
    registry=REGISTRY,
)
PREDICTION_CONFIDENCE = Histogram(
    "enrich_prediction_confidence",
    "Fused confidence of each attribute prediction (answered or not).",
    ["attribute"],
    buckets=_CONFIDENCE_BUCKETS,
    registry=REGISTRY,
)
PREDICTION_VALUES = Counter(
    "enrich_prediction_values_total",
    "Answered values per attribute (bounded by the bundle's taxonomy).",
    ["attribute", "value"],
    registry=REGISTRY,
)
DRIFT_TEXT_ONLY = Gauge(
    "enrich_drift_text_only",
    "1 while the drift guard fuses this attribute from the text alone (image-text agreement below the bundle's "
    "training-time band), else 0.",
    ["attribute"],
    registry=REGISTRY,
)
DRIFT_AGREEMENT = Gauge(
    "enrich_drift_agreement_ratio",
    "Live share of products whose image and confident text agree, per attribute (rolling window).",
    ["attribute"],
    registry=REGISTRY,
)
DRIFT_AGREEMENT_LOW = Gauge(
    "enrich_drift_agreement_band_low_ratio",
    "The lower edge of the training-time agreement band for the current window, per attribute.",
    ["attribute"],
    registry=REGISTRY,
)
DRIFT_SWITCHES = Counter(
    "enrich_drift_switches_total",
    "Drift-guard switches per attribute: to=text (fell back to text-only fusion) or to=fused (back).",
    ["attribute", "to"],
    registry=REGISTRY,
)


def observe_predictions(attributes: Mapping[str, Mapping[str, Any]]) -> None:
    """Count one event's attribute predictions (the enriched event's ``attributes``: value, confidence)."""
    for attr, pred in attributes.items():
        value = pred.get("value")
        PREDICTIONS.labels(attribute=attr, outcome="null" if value is None else "value").inc()
        PREDICTION_CONFIDENCE.labels(attribute=attr).observe(float(pred.get("confidence") or 0.0))
        if value is not None:
            PREDICTION_VALUES.labels(attribute=attr, value=str(value)).inc()


def observe_drift(state: Mapping[str, Mapping[str, Any]], switched: Sequence[tuple[str, bool]] = ()) -> None:
    """Export the drift guard's per-attribute state, and count the switches ``(attribute, text_only)``."""
    for attr, st in state.items():
        DRIFT_TEXT_ONLY.labels(attribute=attr).set(1.0 if st.get("text_only") else 0.0)
        if st.get("agreement") is not None:
            DRIFT_AGREEMENT.labels(attribute=attr).set(float(st["agreement"]))
            DRIFT_AGREEMENT_LOW.labels(attribute=attr).set(float(st["band_low"]))
    for attr, text_only in switched:
        DRIFT_SWITCHES.labels(attribute=attr, to="text" if text_only else "fused").inc()


def package_version() -> str:
    try:
        return metadata.version("enrich")
    except metadata.PackageNotFoundError:
        return "unknown"


def git_revision() -> str:
    """The build's git revision: ``ENRICH_GIT_REVISION`` (set at image build), else ``git rev-parse HEAD``
    when running from a checkout of the repository, else ``unknown``."""
    configured = os.environ.get(REVISION_ENV, "").strip()
    if configured:
        return configured
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists() and (root / "consumer").is_dir():
        try:
            out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return "unknown"


def set_build_info(device: str) -> dict[str, str]:
    """Export ``enrich_build_info{version, revision, torch_version, device} 1``; returns the labels."""
    try:
        import torch

        torch_version = str(torch.__version__)
    except ImportError:
        torch_version = "none"
    labels = {"version": package_version(), "revision": git_revision(), "torch_version": torch_version,
              "device": device}
    BUILD_INFO.clear()
    BUILD_INFO.labels(**labels).set(1)
    return labels
