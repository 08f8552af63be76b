"""``enrich run``: the composition root that wires the health endpoints, the model bundle, the enricher
stage and the stream runtime together. It holds no streaming logic of its own:

* :mod:`consumer.stream` (processor, pipeline, partition state, producer, checkpoint) owns Kafka;
* :mod:`consumer.stages` (fetch, decode, batcher, enricher) owns one event at a time, Kafka-free;
* :mod:`consumer.ops` (settings, health, metrics, logs) is shared by both.

Guarantees (docs/architecture.md, docs/schemas.md): an offset is committed only after the output of it
and of every earlier offset of its partition was delivered or skipped by a documented outcome; outputs of
one product leave in input order; bad input is dead-lettered with its reason and coordinates; a product
whose images all fail is enriched from its text; in-flight work and image memory are bounded.
"""

from __future__ import annotations

import asyncio
from typing import Any

from consumer.ops import metrics
from consumer.ops.health import HealthState, start_health_server
from consumer.ops.logs import get_logger
from consumer.ops.settings import Settings
from consumer.stages.enricher import Enricher
from consumer.stream.pipeline import Pipeline
from consumer.stream.processor import EXIT_DLQ_RATE, EXIT_FATAL, EXIT_OK, StreamProcessor

__all__ = ["EXIT_DLQ_RATE", "EXIT_FATAL", "EXIT_OK", "EnrichService"]

log = get_logger("enrich.service")


def _load_bundle(settings: Settings) -> tuple[int, Any]:
    """Size torch's thread pool to the CPU budget, then load the bundle (heavy imports kept off `enrich --help`)."""
    import torch

    from consumer.ops.cpus import available_cpus
    from models.bundle import Bundle

    threads = settings.torch_threads or available_cpus()
    torch.set_num_threads(threads)  # global: the inference thread's pool follows it
    return threads, Bundle.load(settings.bundle, device=settings.device)


class EnrichService:
    """One consumer-group member. ``await run()`` until stopped; returns the process exit code."""

    def __init__(self, settings: Settings, bundle: Any | None = None) -> None:
        self.settings = settings
        self.bundle = bundle
        self.health = HealthState(liveness_timeout_s=settings.liveness_timeout_s)
        self.http_port: int | None = None
        self.enricher: Enricher | None = None
        self.processor: StreamProcessor | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Events in and out, images fetched (live while running; the demo's progress bar reads it)."""
        out = {"in": 0, "enriched": 0, "tombstones": 0, "dead_lettered": 0, "skipped": 0,
               "images_ok": 0, "images_failed": 0}
        if self.processor is not None:
            out.update(self.processor.counts, skipped=self.processor.pipeline.skipped)
        if self.enricher is not None:
            out.update(self.enricher.counts)
        return out

    def request_stop(self, reason: str = "requested", exit_code: int | None = None) -> None:
        if self.processor is not None:
            self.processor.request_stop(reason, exit_code)

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        runner, self.http_port = await start_health_server(
            self.health, self.settings.http_host, self.settings.http_port
        )
        log.info("http endpoints up", port=self.http_port, paths=["/livez", "/readyz", "/metrics"])
        exit_code = EXIT_OK
        try:
            await self._load_bundle()
            async with Enricher(self.bundle, self.settings, on_inference_busy=self.health.inference) as enricher:
                self.enricher = enricher
                pipeline = Pipeline(
                    enricher,
                    exactly_once=self.settings.exactly_once,
                    product_memory=self.settings.product_memory,
                    process_stale=self.settings.stale_updates == "process",
                    on_fatal=lambda reason: self.request_stop(reason, EXIT_FATAL),
                )
                self.processor = StreamProcessor(self.settings, pipeline, self.health)
                exit_code = await self.processor.run(install_signal_handlers=install_signal_handlers)
        except Exception as exc:  # e.g. an unreadable bundle: one clear log line, exit 1, let k8s restart us
            log.exception("fatal error", error=f"{type(exc).__name__}: {exc}")
            exit_code = EXIT_FATAL
        finally:
            await runner.cleanup()
        log.info("stopped", exit_code=exit_code, **self.counts)
        return exit_code

    async def _load_bundle(self) -> None:
        if self.bundle is None:
            log.info("loading model bundle", path=str(self.settings.bundle))
            # Off the loop: importing torch/sklearn and reading the weights take seconds, and /livez must answer.
            threads, self.bundle = await asyncio.to_thread(_load_bundle, self.settings)
            log.info("torch threads", threads=threads, configured=self.settings.torch_threads is not None)
        metrics.MODEL_INFO.info({"name": str(self.bundle.name), "version": str(self.bundle.version)})
        build = metrics.set_build_info(str(getattr(self.bundle, "device", self.settings.device)))
        self.health.model_loaded = True
        log.info("model bundle ready", name=self.bundle.name, version=self.bundle.version,
                 attributes=list(self.bundle.attributes), build=build)
