"""The streaming service behind ``enrich run``: poll, validate, fetch, batch, infer, produce, commit.

Threads and their jobs (engineering notes, section 1):

* the asyncio loop owns downloads, producing, health endpoints and the per-event tasks;
* one ``kafka`` thread owns every call into the confluent-kafka ``Consumer``, so rebalance callbacks run
  there and can block on the loop while it drains in-flight work of revoked partitions;
* one ``inference`` thread runs model micro-batches; a small ``decode`` pool decodes images.

Guarantees: an offset is committed only after the output of it and of every earlier offset of its partition
was delivered (at-least-once); bad input is dead-lettered with its reason and coordinates; a product whose
images all fail is enriched from its text; in-flight work is bounded (partitions pause above the bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from consumer import metrics
from consumer.batcher import MicroBatcher
from consumer.commit import CommitFailed, OffsetCommitter
from consumer.dlq import DeadLetterPolicy, DeadLetterRateExceeded
from consumer.events import (
    InvalidEvent,
    ProductEvent,
    SourceCoordinates,
    build_dead_letter,
    build_enriched_event,
    parse_product_event,
)
from consumer.fetch import FetchResult, ImageFetcher
from consumer.health import HealthState, start_health_server
from consumer.logs import get_logger
from consumer.offsets import OffsetTracker, TopicPartitionKey
from consumer.settings import Settings

log = get_logger("enrich.service")

#: Exit codes of `enrich run`, documented in the README.
EXIT_OK = 0
EXIT_FATAL = 1
EXIT_DLQ_RATE = 3


class FatalError(RuntimeError):
    """Something the service cannot work around (delivery failure, commit failure); exit and restart."""


def consumer_config(settings: Settings, on_stats: Callable[[str], None] | None = None) -> dict[str, Any]:
    conf = {
        **settings.kafka_common(),
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "statistics.interval.ms": 5000,
        "isolation.level": "read_committed",
    }
    if on_stats is not None:
        conf["stats_cb"] = on_stats
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
        conf["transactional.id"] = settings.transactional_id or f"{settings.group_id}-{settings.input_topic}"
    conf.update(settings.kafka)
    conf["enable.idempotence"] = True
    return conf


def _load_bundle(settings: Settings) -> tuple[int, Any]:
    """Size torch's thread pool to the CPU budget, then load the bundle (heavy imports kept off `enrich --help`)."""
    import torch

    from consumer.cpus import available_cpus
    from models.bundle import Bundle

    threads = settings.torch_threads or available_cpus()
    torch.set_num_threads(threads)  # global: the inference thread's pool follows it
    return threads, Bundle.load(settings.bundle, device=settings.device)


def record_consumer_lag(stats_json: str) -> None:
    """librdkafka statistics callback: export per-partition consumer lag."""
    try:
        stats = orjson.loads(stats_json)
    except orjson.JSONDecodeError:
        return
    for topic, tstats in stats.get("topics", {}).items():
        for partition, pstats in tstats.get("partitions", {}).items():
            lag = pstats.get("consumer_lag", -1)
            if partition != "-1" and lag is not None and lag >= 0:
                metrics.CONSUMER_LAG.labels(topic=topic, partition=partition).set(lag)


class EnrichService:
    """One consumer-group member. ``await run()`` until stopped; returns the process exit code."""

    def __init__(self, settings: Settings, bundle: Any | None = None) -> None:
        self.settings = settings
        self.bundle = bundle
        self.health = HealthState(liveness_timeout_s=settings.liveness_timeout_s)
        self.tracker = OffsetTracker()
        self.dlq_policy = DeadLetterPolicy(max_fraction=settings.dlq_max_fraction, window=settings.dlq_window)
        self.http_port: int | None = None
        self.counts = {"in": 0, "enriched": 0, "tombstones": 0, "dead_lettered": 0, "images_ok": 0, "images_failed": 0}
        self._kafka = ThreadPoolExecutor(1, thread_name_prefix="kafka")
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._decode = ThreadPoolExecutor(2, thread_name_prefix="decode")
        self._stop = asyncio.Event()
        self._exit_code = EXIT_OK
        self._assigned: set[TopicPartitionKey] = set()
        self._paused = False
        self._paused_set: set[TopicPartitionKey] = set()
        self._generation: dict[TopicPartitionKey, int] = {}
        self._tasks: dict[TopicPartitionKey, set[asyncio.Task[None]]] = {}
        self._release_order: dict[TopicPartitionKey, deque[int]] = {}
        self._ready: dict[TopicPartitionKey, dict[int, Callable[[], None]]] = {}
        self._last_activity = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._committer: OffsetCommitter | None = None
        self._fetcher: ImageFetcher | None = None
        self._text_batcher: MicroBatcher[str, Any] | None = None
        self._image_batcher: MicroBatcher[Any, Any] | None = None

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self, reason: str = "requested", exit_code: int | None = None) -> None:
        """Ask the service to drain and exit (signal handlers, stop_after, fatal errors)."""
        if exit_code is not None and self._exit_code == EXIT_OK:
            self._exit_code = exit_code
        if not self._stop.is_set():
            log.info("stopping", reason=reason)
            self.health.stopping = True
            self._stop.set()

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        self._loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.request_stop, f"signal {sig.name}")
        runner, self.http_port = await start_health_server(
            self.health, self.settings.http_host, self.settings.http_port
        )
        log.info("http endpoints up", port=self.http_port, paths=["/livez", "/readyz", "/metrics"])
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        try:
            await self._load_bundle()
            await self._serve()
        except DeadLetterRateExceeded as exc:
            log.error("dead-letter rate exceeded", error=str(exc))
            self._exit_code = EXIT_DLQ_RATE
        except (FatalError, CommitFailed) as exc:
            log.error("fatal error", error=str(exc))
            self._exit_code = EXIT_FATAL
        except Exception as exc:  # e.g. an unreadable bundle: one clear log line, exit 1, let k8s restart us
            log.exception("fatal error", error=f"{type(exc).__name__}: {exc}")
            self._exit_code = EXIT_FATAL
        finally:
            heartbeat.cancel()
            await runner.cleanup()
            self._inference.shutdown(wait=False, cancel_futures=True)
            self._decode.shutdown(wait=False, cancel_futures=True)
            self._kafka.shutdown(wait=False, cancel_futures=True)
        log.info("stopped", exit_code=self._exit_code, **self.counts)
        return self._exit_code

    async def _load_bundle(self) -> None:
        if self.bundle is None:
            log.info("loading model bundle", path=str(self.settings.bundle))
            # Off the loop: importing torch/sklearn and reading the weights take seconds, and /livez must answer.
            threads, self.bundle = await asyncio.to_thread(_load_bundle, self.settings)
            log.info("torch threads", threads=threads, configured=self.settings.torch_threads is not None)
        metrics.MODEL_INFO.info({"name": str(self.bundle.name), "version": str(self.bundle.version)})
        self.health.model_loaded = True
        log.info(
            "model bundle ready",
            name=self.bundle.name,
            version=self.bundle.version,
            attributes=list(self.bundle.attributes),
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            self.health.beat()
            await asyncio.sleep(1.0)

    async def _kafka_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._kafka, partial(fn, *args, **kwargs))

    async def _serve(self) -> None:
        s = self.settings
        self._producer = Producer(producer_config(s), logger=_librdkafka_logger())
        if s.exactly_once:
            await asyncio.to_thread(self._producer.init_transactions, 30)
            self._producer.begin_transaction()
        self._consumer = Consumer(consumer_config(s, record_consumer_lag), logger=_librdkafka_logger())
        self._committer = OffsetCommitter(self._consumer, self._producer, self.tracker, transactional=s.exactly_once)
        self._text_batcher = MicroBatcher(
            "text",
            self.bundle.predict_texts,
            max_size=s.batch.text_max_size,
            max_wait_s=s.batch.max_wait_ms / 1000,
            executor=self._inference,
        )
        self._image_batcher = MicroBatcher(
            "image",
            self.bundle.predict_images,
            max_size=s.batch.image_max_size,
            max_wait_s=s.batch.max_wait_ms / 1000,
            executor=self._inference,
        )
        self._text_batcher.start()
        self._image_batcher.start()
        async with ImageFetcher(s.fetch, draft_size=self.bundle.image_decode_size, executor=self._decode) as fetcher:
            self._fetcher = fetcher
            await self._kafka_call(
                self._consumer.subscribe,
                [s.input_topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            log.info("subscribed", topic=s.input_topic, group=s.group_id, exactly_once=s.exactly_once)
            producer_poller = asyncio.create_task(self._producer_poll_loop(), name="producer-poll")
            committer = asyncio.create_task(self._commit_loop(), name="commit")
            poller = asyncio.create_task(self._poll_loop(), name="poll")
            stop_waiter = asyncio.create_task(self._stop.wait(), name="stop")
            done, _ = await asyncio.wait({poller, committer, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            self.request_stop("poll or commit loop ended" if stop_waiter not in done else "stop requested")
            failure: BaseException | None = None
            for task in done:
                if task is not stop_waiter and not task.cancelled() and task.exception() is not None:
                    failure = task.exception()
            for task in (poller, committer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._shutdown()
            producer_poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer_poller
            await self._text_batcher.close()
            await self._image_batcher.close()
            if failure is not None:
                raise failure

    async def _shutdown(self) -> None:
        """Finish in-flight work within the grace period, flush, commit, close (which revokes)."""
        assert self._consumer is not None and self._producer is not None and self._committer is not None
        deadline = time.monotonic() + self.settings.shutdown_grace_s * 0.8
        pending = [t for tasks in self._tasks.values() for t in tasks]
        if pending:
            log.info("draining in-flight events", count=len(pending))
            await asyncio.wait(pending, timeout=max(0.1, deadline - time.monotonic() - 1.0))
        await self._flush_producer(max(0.1, deadline - time.monotonic()))
        try:
            await self._commit()
        except CommitFailed as exc:
            log.error("final commit failed", error=str(exc))
            self._exit_code = self._exit_code or EXIT_FATAL
        for tasks in self._tasks.values():
            for task in tasks:
                task.cancel()
        await self._kafka_call(self._consumer.close)  # revokes: the callback commits what completed meanwhile
        if self.settings.exactly_once:
            with contextlib.suppress(Exception):
                self._producer.abort_transaction(5)  # the empty transaction begun by the last commit
        log.info("consumer closed")

    async def _flush_producer(self, timeout: float) -> None:
        assert self._producer is not None
        end = time.monotonic() + timeout
        while len(self._producer) > 0 and time.monotonic() < end:
            self._producer.poll(0)
            await asyncio.sleep(0.01)
        self._producer.poll(0)

    # ------------------------------------------------------------------ loops
    async def _poll_loop(self) -> None:
        assert self._consumer is not None
        s = self.settings
        resume_below = int(s.max_in_flight * s.resume_fraction)
        while not self._stop.is_set():
            in_flight = self.tracker.in_flight()
            metrics.IN_FLIGHT.set(in_flight)
            if self._paused and in_flight <= resume_below:
                await self._set_paused(False)
            elif self._paused and self._assigned - self._paused_set:
                await self._set_paused(True)  # partitions assigned while paused start paused too
            room = s.max_in_flight - in_flight
            if room <= 0 and not self._paused:
                await self._set_paused(True)
            messages: list[Message] = await self._kafka_call(self._consumer.consume, max(1, min(room, 500)), 0.1)
            if messages:
                self._last_activity = time.monotonic()
            for message in messages:
                self._accept(message)
            if self.tracker.in_flight() >= s.max_in_flight and not self._paused:
                await self._set_paused(True)
            idle_for = time.monotonic() - self._last_activity
            if (
                s.idle_exit_s
                and not messages
                and self._assigned
                and self.tracker.in_flight() == 0
                and idle_for > s.idle_exit_s
            ):
                self.request_stop(f"idle for {s.idle_exit_s}s")

    async def _set_paused(self, paused: bool) -> None:
        assert self._consumer is not None
        tps = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        if tps:
            await self._kafka_call(self._consumer.pause if paused else self._consumer.resume, tps)
        self._paused = paused
        self._paused_set = set(self._assigned) if paused else set()
        metrics.PAUSED_PARTITIONS.set(len(tps) if paused else 0)
        log.info(
            "backpressure " + ("pause" if paused else "resume"), partitions=len(tps), in_flight=self.tracker.in_flight()
        )

    async def _producer_poll_loop(self) -> None:
        assert self._producer is not None
        while True:
            self._producer.poll(0)  # serves delivery callbacks on the loop thread
            await asyncio.sleep(0.005)

    async def _commit_loop(self) -> None:
        assert self._committer is not None
        while not self._stop.is_set():
            await asyncio.sleep(self.settings.commit_interval_s)
            await self._commit()
            if self.settings.stop_after and self._committed_events() >= self.settings.stop_after:
                self.request_stop(f"stop_after={self.settings.stop_after} reached")

    async def _commit(self) -> None:
        """Commit everything committable now (loop thread; the consumer call hops to the kafka thread)."""
        assert self._committer is not None
        if self.settings.exactly_once:
            self._committer.commit_transaction()
            return
        offsets = self._committer.pending()
        if offsets:
            try:
                await self._kafka_call(self._committer.commit_offsets, offsets)
            except CommitFailed as exc:
                if not exc.membership_lost:
                    raise
                # the session expired or a rebalance began between pending() and the broker's answer: the
                # lost/revoke callback decides what happens to these partitions; nothing is marked committed
                log.warning("commit refused: not a group member right now (duplicates later, never loss)",
                            error=str(exc))
                return
            self._committer.mark_committed(offsets)

    def _committed_events(self) -> int:
        return self.counts["enriched"] + self.counts["tombstones"] + self.counts["dead_lettered"]

    # ------------------------------------------------------------------ rebalance callbacks (kafka thread)
    # librdkafka calls these on the kafka thread, inside consume() or close(). All the state they touch
    # belongs to the loop thread, so each one hands its work to the loop and waits for it; the loop is free
    # to run it because it only ever awaits the kafka thread, never blocks on it.
    def _on_loop(self, coro: Any, timeout: float) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(kind="assign").inc()
        self._on_loop(self._assign({(tp.topic, tp.partition) for tp in partitions}), timeout=30)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(kind="revoke").inc()
        assert self._committer is not None
        keys = {(tp.topic, tp.partition) for tp in partitions}
        try:
            offsets = self._on_loop(self._revoke(keys), timeout=self.settings.revoke_drain_timeout_s + 60)
            self._committer.commit_offsets(offsets)  # on this (the consumer's) thread
        except Exception as exc:  # a failed commit on revoke means duplicates later, never loss
            log.warning("commit on revoke failed", error=str(exc))
            self._on_loop(self._forget(keys), timeout=30)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(kind="lost").inc()
        keys = {(tp.topic, tp.partition) for tp in partitions}
        log.warning("partitions lost: discarding their in-flight work", partitions=sorted(f"{t}/{p}" for t, p in keys))
        self._on_loop(self._forget(keys), timeout=30)  # never commit: another member may own them already

    async def _assign(self, keys: set[TopicPartitionKey]) -> None:
        self._last_activity = time.monotonic()  # idle time counts from when there is work to wait for
        for key in keys:
            self._assigned.add(key)
            self._generation[key] = self._generation.get(key, 0) + 1
        # Incremental assignment happens after the callback returns, so new partitions cannot be paused
        # here; the poll loop pauses them on its next turn when backpressure is on.
        self.health.assigned_partitions = len(self._assigned)
        metrics.ASSIGNED_PARTITIONS.set(len(self._assigned))
        log.info("partitions assigned", partitions=sorted(f"{t}/{p}" for t, p in keys))

    async def _revoke(self, keys: set[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Let in-flight work of revoked partitions finish (bounded); returns the offsets to commit.

        In exactly-once mode the offsets go into a transaction here instead, and nothing is returned.
        """
        log.info("partitions revoked: draining", partitions=sorted(f"{t}/{p}" for t, p in keys))
        assert self._committer is not None
        deadline = time.monotonic() + self.settings.revoke_drain_timeout_s
        tasks = [t for key in keys for t in self._tasks.get(key, ())]
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        while any(self.tracker.in_flight(k) for k in keys) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # delivery callbacks arrive through the producer poll loop
        offsets: dict[TopicPartitionKey, int] = {}
        if self.settings.exactly_once:
            self._committer.commit_transaction(keys)
        else:
            offsets = self._committer.pending(keys)
        await self._forget(keys)
        return offsets

    async def _forget(self, keys: set[TopicPartitionKey]) -> None:
        """Drop revoked or lost partitions: cancel their work, discard results that arrive late."""
        for key in keys:
            for task in self._tasks.pop(key, set()):
                task.cancel()
            self._assigned.discard(key)
            self.tracker.forget(key)
            self._generation[key] = self._generation.get(key, 0) + 1
            self._release_order.pop(key, None)
            self._ready.pop(key, None)
        self.health.assigned_partitions = len(self._assigned)
        metrics.ASSIGNED_PARTITIONS.set(len(self._assigned))

    # ------------------------------------------------------------------ per-event work (loop thread)
    def _accept(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return
            if error.fatal():
                raise FatalError(f"consumer error: {error}")
            log.warning("consumer error", error=str(error))
            return
        key = (message.topic(), message.partition())
        if key not in self._assigned:
            return  # fetched before its partition was revoked; the new owner reads it again
        offset = message.offset()
        self.tracker.track(key, offset)
        self.counts["in"] += 1
        metrics.EVENTS_IN.labels(topic=message.topic()).inc()
        if self.settings.exactly_once:
            self._release_order.setdefault(key, deque()).append(offset)
        task = asyncio.get_running_loop().create_task(
            self._process(message, self._generation.get(key, 0)), name=f"event-{key[0]}/{key[1]}@{offset}"
        )
        bucket = self._tasks.setdefault(key, set())
        bucket.add(task)
        task.add_done_callback(bucket.discard)

    async def _process(self, message: Message, generation: int) -> None:
        timestamp_type, timestamp_ms = message.timestamp()
        source = SourceCoordinates(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            timestamp_ms=timestamp_ms if timestamp_type else None,
            key=message.key(),
        )
        structlog_ctx = {"topic": source.topic, "partition": source.partition, "offset": source.offset}
        try:
            product = parse_product_event(message.value(), max_bytes=self.settings.max_event_bytes)
        except InvalidEvent as exc:
            self._emit_dead_letter(message, source, generation, exc.reason, exc.detail)
            return
        try:
            if product.op == "delete":
                self._emit(source, generation, self.settings.output_topic, product.product_id, None, "tombstone")
                return
            value = await self._enrich(product, source)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a model failure must not stall the partition
            log.exception("processing failed", **structlog_ctx)
            self._emit_dead_letter(message, source, generation, "processing_error", f"{type(exc).__name__}: {exc}")
            return
        self._emit(source, generation, self.settings.output_topic, product.product_id, value, "enriched")

    async def _enrich(self, product: ProductEvent, source: SourceCoordinates) -> bytes:
        assert self._fetcher is not None and self._text_batcher is not None and self._image_batcher is not None
        bundle = self.bundle
        started = time.perf_counter()
        text = bundle.text_input(product.title, product.description, product.brand)
        text_future = asyncio.ensure_future(self._text_batcher.submit(text)) if text.strip() else None
        results: list[FetchResult] = await self._fetcher.fetch_all(product.image_urls) if product.image_urls else []
        metrics.STAGE_SECONDS.labels(stage="fetch").observe(time.perf_counter() - started)
        loop = asyncio.get_running_loop()
        images = [r.image for r in results if r.status == "ok" and r.image is not None]
        self.counts["images_ok"] += len(images)
        self.counts["images_failed"] += sum(r.status not in ("ok", "skipped") for r in results)
        views = [await loop.run_in_executor(self._decode, bundle.image_views, image) for image in images]
        infer_started = time.perf_counter()
        image_probs = list(await asyncio.gather(*(self._image_batcher.submit(v) for v in views)))
        text_probs = await text_future if text_future is not None else None
        metrics.STAGE_SECONDS.labels(stage="inference").observe(time.perf_counter() - infer_started)
        predictions = bundle.combine(text_probs, image_probs, text=text)
        modalities = (["image"] if image_probs else []) + (["text"] if text_probs is not None else [])
        return build_enriched_event(
            product,
            source,
            model_name=bundle.name,
            model_version=bundle.version,
            attributes={name: p.to_json() for name, p in predictions.items()},
            images=[r.to_json() for r in results],
            modalities=modalities,
        )

    def _emit_dead_letter(
        self, message: Message, source: SourceCoordinates, generation: int, reason: str, detail: str
    ) -> None:
        log.warning(
            "dead-lettering event",
            reason=reason,
            detail=detail[:500],
            topic=source.topic,
            partition=source.partition,
            offset=source.offset,
        )
        value, headers = build_dead_letter(message.value(), source, reason=reason, detail=detail)
        self._emit(
            source,
            generation,
            self.settings.dead_letter_topic,
            message.key(),
            value,
            "dead_letter",
            headers=headers,
            reason=reason,
        )

    def _emit(
        self,
        source: SourceCoordinates,
        generation: int,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        kind: str,
        *,
        headers: list[tuple[str, bytes]] | None = None,
        reason: str = "",
    ) -> None:
        """Produce one output; its offset completes when the broker acknowledges it."""
        tp = (source.topic, source.partition)
        if self._generation.get(tp) != generation:
            return  # partition revoked or lost meanwhile: its new owner redoes this event
        assert self._producer is not None

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                # Idempotent producer retries already happened; losing ordering or data is not an option.
                self.request_stop(f"delivery to {topic} failed: {err}", exit_code=EXIT_FATAL)
                return
            if self._generation.get(tp) != generation:
                return
            self._count_delivery(kind, reason, source)
            self.tracker.complete(tp, source.offset)

        out_headers = [*(headers or ()), *_source_headers(source)] if kind != "dead_letter" else headers

        def produce() -> None:
            self._producer.produce(topic, value=value, key=key, headers=out_headers, on_delivery=on_delivery)

        if not self.settings.exactly_once:
            self._produce_with_retry(produce)
            return
        # Exactly-once: release outputs in offset order, so a transaction never holds an output whose
        # offset (or an earlier one) is not committed with it.
        self._ready.setdefault(tp, {})[source.offset] = produce
        order, ready = self._release_order.get(tp, deque()), self._ready[tp]
        while order and order[0] in ready:
            self._produce_with_retry(ready.pop(order.popleft()))

    def _produce_with_retry(self, produce: Callable[[], None]) -> None:
        assert self._producer is not None
        for _ in range(1000):
            try:
                produce()
                return
            except BufferError:  # local queue full: serve callbacks and try again
                self._producer.poll(0.05)
        raise FatalError("producer queue stayed full for 50 s")

    def _count_delivery(self, kind: str, reason: str, source: SourceCoordinates) -> None:
        if kind == "dead_letter":
            self.counts["dead_lettered"] += 1
            metrics.EVENTS_DEAD_LETTERED.labels(reason=reason).inc()
        else:
            self.counts["enriched" if kind == "enriched" else "tombstones"] += 1
            metrics.EVENTS_OUT.labels(kind=kind).inc()
        if source.timestamp_ms:
            metrics.END_TO_END_SECONDS.observe(max(0.0, time.time() - source.timestamp_ms / 1000))
        try:
            self.dlq_policy.record(kind == "dead_letter")
        except DeadLetterRateExceeded as exc:
            log.error("dead-letter rate exceeded", error=str(exc))
            self.request_stop(str(exc), exit_code=EXIT_DLQ_RATE)


def _source_headers(source: SourceCoordinates) -> list[tuple[str, bytes]]:
    """Source coordinates as headers on every output, tombstones included (they have no body)."""
    return [
        ("enrich.source.topic", source.topic.encode()),
        ("enrich.source.partition", str(source.partition).encode()),
        ("enrich.source.offset", str(source.offset).encode()),
    ]


def _librdkafka_logger() -> Any:
    import logging

    return logging.getLogger("librdkafka")
