"""``enrich replay``: the streaming core (processor, pipeline, producer, checkpoint) with the replay's hooks.

* the plan (:mod:`.plan`) is made and persisted first; the replay group then starts at the plan's start
  offsets, or resumes from its own commits after a crash;
* ``Pipeline(skip=...)`` completes every input that is past the end offsets or not the newest of its
  product as a documented skip, before parsing, so nothing is produced for it;
* the enricher is wrapped (:class:`ReplayEnricher`): the ``--max-rate`` token bucket is awaited before each
  enrichment, and a product updated live meanwhile (:mod:`.watch`) is skipped, checked again right before
  its output is handed to the producer;
* ``StreamProcessor(done=...)`` stops once every partition's committed offset reached its end offset:
  everything delivered and committed, exit 0, and a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from consumer.ops import metrics
from consumer.ops.health import HealthState, start_health_server
from consumer.ops.logs import get_logger
from consumer.ops.settings import Settings
from consumer.replay.plan import PlanMismatch, ReplayPlan, prepare
from consumer.replay.progress import ReplayProgress, positions_of
from consumer.replay.throttle import TokenBucket
from consumer.replay.watch import LiveWatch
from consumer.stages.enricher import Enricher
from consumer.stages.events import ProductEvent, SourceCoordinates
from consumer.stages.outputs import Output, Skipped
from consumer.stream.pipeline import Inbound, Pipeline
from consumer.stream.processor import EXIT_FATAL, EXIT_OK, StreamProcessor

log = get_logger("enrich.replay")

#: the replay group holds another range's plan (a configuration error, like `enrich run`'s exit 2)
EXIT_CONFIG = 2


@dataclass
class ReplayOptions:
    from_ms: int | None = None  # None: from the beginning
    to_ms: int | None = None  # None: up to the end offsets at start
    max_rate: float | None = None
    progress: bool | None = None  # None: a bar when stderr is a terminal, log lines otherwise
    progress_log_every_s: float = 10.0


def load_bundle(settings: Settings) -> Any:
    import torch

    from consumer.ops.cpus import available_cpus
    from models.bundle import Bundle

    torch.set_num_threads(settings.torch_threads or available_cpus())
    return Bundle.load(settings.bundle, device=settings.device)


class ReplayEnricher:
    """The enricher as the pipeline sees it, with the throttle and the live-update check around ``handle``."""

    def __init__(self, inner: Enricher, watch: LiveWatch | Any, bucket: TokenBucket | None,
                 skips: dict[str, int]) -> None:
        self.inner = inner
        self.watch = watch
        self.bucket = bucket
        self.skips = skips

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def parse(self, raw: bytes | None, source: SourceCoordinates) -> Any:
        return self.inner.parse(raw, source)

    def _skip(self, source: SourceCoordinates) -> Skipped:
        self.skips["replay_newer_live"] = self.skips.get("replay_newer_live", 0) + 1
        metrics.EVENTS_SKIPPED.labels(reason="replay_newer_live").inc()
        log.info("event skipped", reason="replay_newer_live", partition=source.partition, offset=source.offset)
        return Skipped("replay_newer_live")

    async def handle(self, product: ProductEvent, source: SourceCoordinates) -> Output:
        if product.product_id in self.watch:
            return self._skip(source)
        if self.bucket is not None:
            await self.bucket.acquire()
        if product.product_id in self.watch:
            return self._skip(source)
        output = await self.inner.handle(product, source)
        # checked again here: the pipeline hands this output to the producer without awaiting anything
        if product.product_id in self.watch:
            return self._skip(source)
        return output


def _done(plan: ReplayPlan, pipeline: Pipeline, last: dict[int, int]) -> str | None:
    positions = positions_of(lambda: pipeline.states, plan.topic)
    last.update(positions)  # the states are gone after the shutdown; the summary reads these
    if all(positions.get(p, -1) >= plan.end[p] for p in plan.start):
        return "replay complete: every partition reached its end offset"
    return None


async def run_replay(settings: Settings, options: ReplayOptions, bundle: Any | None = None) -> tuple[int, dict]:
    """Run the replay to its end offsets; returns (exit code, summary)."""
    started = time.monotonic()
    health = HealthState(liveness_timeout_s=settings.liveness_timeout_s)
    runner, port = await start_health_server(health, settings.http_host, settings.http_port)
    log.info("http endpoints up", port=port, paths=["/livez", "/readyz", "/metrics"])
    kafka = settings.kafka_common()
    skips: dict[str, int] = {}
    summary: dict[str, Any] = {"group": settings.group_id, "input_topic": settings.input_topic,
                               "output_topic": settings.output_topic}
    exit_code = EXIT_OK
    watch: LiveWatch | None = None
    processor: StreamProcessor | None = None
    progress: ReplayProgress | None = None
    async def alive() -> None:  # /livez while the plan scan and the bundle load run (the poll loop beats later)
        while True:
            health.beat()
            await asyncio.sleep(1.0)

    beating = asyncio.create_task(alive(), name="replay-start-heartbeat")
    try:
        plan = await asyncio.to_thread(prepare, kafka, settings.input_topic, settings.group_id,
                                       from_ms=options.from_ms, to_ms=options.to_ms)
        summary["plan"] = plan.to_json()
        watch = LiveWatch(kafka, settings.input_topic, plan.end).start()
        if bundle is None:
            log.info("loading model bundle", path=str(settings.bundle))
            bundle = await asyncio.to_thread(load_bundle, settings)
        metrics.MODEL_INFO.info({"name": str(bundle.name), "version": str(bundle.version)})
        metrics.set_build_info(str(getattr(bundle, "device", settings.device)))
        health.model_loaded = True
        summary["model"] = {"name": bundle.name, "version": bundle.version}
        log.info("replaying", model=bundle.name, version=bundle.version, group=settings.group_id,
                 to_replay=len(plan.keep), max_rate=options.max_rate)
        bucket = TokenBucket(options.max_rate) if options.max_rate else None
        last: dict[int, int] = {}

        def skip(inbound: Inbound) -> Any:
            source = inbound.source
            reason = plan.skip_reason(source.partition, source.offset)
            if reason is not None:
                skips[reason] = skips.get(reason, 0) + 1
            return reason

        async with Enricher(bundle, settings, on_inference_busy=health.inference) as enricher:
            wrapped = ReplayEnricher(enricher, watch, bucket, skips)
            pipeline = Pipeline(
                wrapped,  # type: ignore[arg-type]  # the enricher's interface, with the replay's checks
                exactly_once=settings.exactly_once, product_memory=settings.product_memory,
                process_stale=settings.stale_updates == "process",
                on_fatal=lambda reason: processor.request_stop(reason, EXIT_FATAL) if processor else None,
                skip=skip,
            )

            def done() -> str | None:
                if watch is not None and watch.failed is not None:
                    processor.request_stop(f"live watch failed: {watch.failed}", EXIT_FATAL)  # type: ignore[union-attr]
                    return None
                return _done(plan, pipeline, last)

            processor = StreamProcessor(settings, pipeline, health, done=done)
            beating.cancel()
            progress = ReplayProgress(plan, terminal=options.progress, log_every_s=options.progress_log_every_s)

            async def report() -> None:
                while True:
                    await asyncio.sleep(0.5)
                    last.update(positions_of(lambda: pipeline.states, plan.topic))
                    progress.update({**plan.position, **last})

            reporter = asyncio.create_task(report(), name="replay-progress")
            processing_started = time.monotonic()
            try:
                exit_code = await processor.run()
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            summary["processing_seconds"] = round(time.monotonic() - processing_started, 2)
            final = {**plan.position, **last}
            progress.close(final)
            summary["positions"] = {str(p): o for p, o in sorted(final.items())}
            summary["complete"] = all(final.get(p, -1) >= plan.end[p] for p in plan.start)
    except PlanMismatch as exc:
        log.error("replay refused", error=str(exc))
        exit_code = EXIT_CONFIG
    except Exception as exc:
        log.exception("fatal error", error=f"{type(exc).__name__}: {exc}")
        exit_code = EXIT_FATAL
    finally:
        beating.cancel()
        if watch is not None:
            watch.stop()
        await runner.cleanup()
    elapsed = time.monotonic() - started
    counts = dict(processor.counts) if processor is not None else {}
    answered = sum(counts.get(k, 0) for k in ("enriched", "tombstones", "dead_lettered"))
    summary.update(
        exit_code=exit_code, seconds=round(elapsed, 2), events_in=counts.get("in", 0),
        enriched=counts.get("enriched", 0), tombstones=counts.get("tombstones", 0),
        dead_lettered=counts.get("dead_lettered", 0), skipped=dict(sorted(skips.items())),
        # outputs per second while the processor ran (the plan scan and the bundle load excluded)
        rate_per_s=round(answered / summary["processing_seconds"], 2) if summary.get("processing_seconds") else None,
        live_updates_seen=len(watch.seen) if watch is not None else 0,
    )
    log.info("replay summary", **summary)
    return exit_code, summary
