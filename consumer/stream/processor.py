"""The Kafka runtime: poll, pause/resume, rebalance callbacks, commits, signals and shutdown.

It never looks inside a payload (Arroyo's ``StreamProcessor``): messages go to the
:class:`~consumer.stream.pipeline.Pipeline` as :class:`~consumer.stream.pipeline.Inbound` coordinates and
bytes, outputs come back through the :class:`~consumer.stream.producer.OutputProducer`, and the
:class:`~consumer.stream.checkpoint.Checkpoint` commits.

Threads: the asyncio loop owns the pipeline, producing and the health endpoints; one ``kafka`` thread owns
every call into the ``Consumer`` (poll, commit, pause/resume, seek), so rebalance callbacks run there and
hand their work to the loop, which never blocks on the kafka thread, only awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.ops import metrics
from consumer.ops.health import HealthState
from consumer.ops.logs import get_logger
from consumer.ops.settings import Settings
from consumer.stages.events import SourceCoordinates
from consumer.stages.outputs import DeadLetter, Enriched
from consumer.stream.checkpoint import Checkpoint, CommitFailed, commit_offsets, committable
from consumer.stream.dlq import DeadLetterPolicy, DeadLetterRateExceeded
from consumer.stream.kafka_config import consumer_config, producer_config
from consumer.stream.offsets import TopicPartitionKey
from consumer.stream.partition import Entry
from consumer.stream.pipeline import Inbound, Pipeline
from consumer.stream.producer import FatalError, OutputProducer

__all__ = ["EXIT_DLQ_RATE", "EXIT_FATAL", "EXIT_OK", "StreamProcessor", "consumer_config", "producer_config"]

log = get_logger("enrich.processor")

#: Exit codes of `enrich run`, documented in the README.
EXIT_OK = 0
EXIT_FATAL = 1
EXIT_DLQ_RATE = 3

#: How often the lag and oldest-in-flight gauges are refreshed.
GAUGE_INTERVAL_S = 5.0


def _librdkafka_logger() -> logging.Logger:
    return logging.getLogger("librdkafka")


def _keys(partitions: list[TopicPartition]) -> set[TopicPartitionKey]:
    return {(tp.topic, tp.partition) for tp in partitions}


def _names(keys: set[TopicPartitionKey]) -> list[str]:
    return sorted(f"{t}/{p}" for t, p in keys)


class StreamProcessor:
    """One consumer-group member around a pipeline. ``await run()`` until stopped; returns the exit code."""

    def __init__(self, settings: Settings, pipeline: Pipeline, health: HealthState,
                 *, done: Callable[[], str | None] | None = None) -> None:
        self.settings = settings
        #: optional end condition checked after each commit (``enrich replay``: every partition's committed
        #: offset reached its end offset); a reason stops the processor cleanly (exit 0, all committed)
        self._done = done
        self.pipeline = pipeline
        self.health = health
        self.dlq_policy = DeadLetterPolicy(max_fraction=settings.dlq_max_fraction, window=settings.dlq_window)
        self.counts = {"in": 0, "enriched": 0, "tombstones": 0, "dead_lettered": 0, "skipped": 0}
        self.exit_code = EXIT_OK
        self._stop = asyncio.Event()
        self._kafka = ThreadPoolExecutor(1, thread_name_prefix="kafka")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        self._producer: OutputProducer | None = None
        self._checkpoint: Checkpoint | None = None
        self._last_activity = time.monotonic()
        self._backpressure = False

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self, reason: str = "requested", exit_code: int | None = None) -> None:
        """Ask the processor to drain and exit (signals, stop_after, idle, fatal errors)."""
        if exit_code is not None and self.exit_code == EXIT_OK:
            self.exit_code = exit_code
        if not self._stop.is_set():
            (log.error if exit_code else log.info)("stopping", reason=reason, exit_code=self.exit_code)
            self.health.stopping = True
            self._stop.set()

    def fatal(self, reason: str) -> None:
        self.request_stop(reason, exit_code=EXIT_FATAL)

    async def _kafka_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._kafka, partial(fn, *args, **kwargs))

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        self._loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.request_stop, f"signal {sig.name}")
        s = self.settings
        try:
            producer = Producer(producer_config(s), logger=_librdkafka_logger())
            self._producer = OutputProducer(
                producer, output_topic=s.output_topic, dead_letter_topic=s.dead_letter_topic,
                fallback=self.pipeline.fallback, on_delivered=self._on_delivered, on_fatal=self.fatal,
            )
            self.pipeline.producer = self._producer
            self._consumer = Consumer(consumer_config(s), logger=_librdkafka_logger())
            self._checkpoint = Checkpoint(
                self._consumer, self._producer, lambda: list(self.pipeline.states.values()), self._kafka_call,
                transactional=s.exactly_once, interval_s=s.commit_interval_s,
            )
            await self._checkpoint.begin()
            await self._serve()
        except DeadLetterRateExceeded as exc:
            log.error("dead-letter rate exceeded", error=str(exc))
            self.exit_code = EXIT_DLQ_RATE
        except (FatalError, CommitFailed, KafkaException) as exc:
            log.error("fatal error", error=str(exc))
            self.exit_code = EXIT_FATAL
        finally:
            self._kafka.shutdown(wait=False, cancel_futures=True)
        return self.exit_code

    async def _serve(self) -> None:
        assert self._consumer is not None and self._producer is not None
        s = self.settings
        await self._kafka_call(self._consumer.subscribe, [s.input_topic], on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("subscribed", topic=s.input_topic, group=s.group_id, exactly_once=s.exactly_once,
                 transactional_id=s.member_transactional_id() if s.exactly_once else None)
        producer_poller = asyncio.create_task(self._producer_poll_loop(), name="producer-poll")
        loops = [asyncio.create_task(self._poll_loop(), name="poll"),
                 asyncio.create_task(self._commit_loop(), name="commit"),
                 asyncio.create_task(self._gauge_loop(), name="gauges")]
        stop_waiter = asyncio.create_task(self._stop.wait(), name="stop")
        done, _ = await asyncio.wait({*loops, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        failure: BaseException | None = None
        for task in done:
            if task is not stop_waiter and not task.cancelled() and task.exception() is not None:
                failure = task.exception()
        self.request_stop("a loop ended" if stop_waiter not in done else "stop requested",
                          exit_code=EXIT_FATAL if failure is not None else None)
        for task in loops:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self._shutdown()
        finally:
            producer_poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer_poller
        if failure is not None:
            raise failure

    async def _shutdown(self) -> None:
        """Finish in-flight work within the grace period, flush, commit, close (which revokes)."""
        assert self._consumer is not None and self._producer is not None and self._checkpoint is not None
        deadline = time.monotonic() + self.settings.shutdown_grace_s * 0.8
        if self.exit_code == EXIT_OK and self.pipeline.in_flight():
            log.info("draining in-flight events", count=self.pipeline.in_flight())
            await self.pipeline.drain(None, deadline - 1.0)
        await self._producer.flush(max(0.1, deadline - time.monotonic()))
        try:
            await self._checkpoint.commit()
        except CommitFailed as exc:
            log.error("final commit failed", error=str(exc))
            self.exit_code = self.exit_code or EXIT_FATAL
        self.pipeline.drop(list(self.pipeline.states))
        await self._kafka_call(self._consumer.close)  # revokes: nothing left in flight to commit
        await self._checkpoint.close()
        self._clear_gauges(None)
        log.info("consumer closed")

    # ------------------------------------------------------------------ loops
    async def _poll_loop(self) -> None:
        assert self._consumer is not None
        s = self.settings
        resume_below = int(s.max_in_flight * s.resume_fraction)
        while not self._stop.is_set():
            self.health.beat()  # liveness: this loop really turned
            in_flight = self.pipeline.in_flight()
            metrics.IN_FLIGHT.set(in_flight)
            if self._backpressure and in_flight <= resume_below:
                self._backpressure = False
            elif not self._backpressure and in_flight >= s.max_in_flight:
                self._backpressure = True
            await self._apply_pause(self._backpressure)
            room = max(1, min(s.max_in_flight - in_flight, 500))
            messages: list[Message] = await self._kafka_call(self._consumer.consume, room, 0.1)
            if messages or in_flight or self._backpressure:
                # idle = nothing received *and* nothing in flight: time spent paused behind slow work is not
                # idle (else the first empty poll after a resume ends a run with its backlog unread)
                self._last_activity = time.monotonic()
            for message in messages:
                self._accept(message)
            if (s.idle_exit_s and not messages and self.pipeline.states and self.pipeline.in_flight() == 0
                    and time.monotonic() - self._last_activity > s.idle_exit_s):
                self.request_stop(f"idle for {s.idle_exit_s}s")

    async def _apply_pause(self, paused: bool) -> None:
        """Make librdkafka's pause flag of every owned partition match ``paused``.

        A partition whose state has never applied a flag (new in this assignment) gets it set explicitly:
        librdkafka keeps the application's pause flag across revoke and assign, so a partition revoked while
        paused would otherwise never be fetched again once it came back.
        """
        assert self._consumer is not None
        changed = [st for st in self.pipeline.states.values() if st.paused is not paused]
        if not changed:
            return
        tps = [TopicPartition(*st.tp) for st in changed]
        try:
            await self._kafka_call(self._consumer.pause if paused else self._consumer.resume, tps)
        except KafkaException as exc:  # e.g. a partition revoked between the two threads' views
            log.warning("pause/resume failed; retried next turn", error=str(exc))
            return
        for st in changed:
            st.paused = paused
        metrics.PAUSED_PARTITIONS.set(sum(bool(st.paused) for st in self.pipeline.states.values()))
        if any(st.paused is not None for st in changed):
            log.info("backpressure " + ("pause" if paused else "resume"), partitions=len(tps),
                     in_flight=self.pipeline.in_flight())

    def _accept(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return
            if error.fatal():
                raise FatalError(f"consumer error: {error}")
            log.warning("consumer error", error=str(error))
            return
        timestamp_type, timestamp_ms = message.timestamp()
        source = SourceCoordinates(topic=message.topic(), partition=message.partition(), offset=message.offset(),
                                   timestamp_ms=timestamp_ms if timestamp_type else None, key=message.key())
        if (source.topic, source.partition) not in self.pipeline.states:
            return  # fetched before its partition was revoked; the new owner reads it again
        self.counts["in"] += 1
        metrics.EVENTS_IN.labels(topic=source.topic).inc()
        self.pipeline.submit(Inbound(source, message.value()))

    async def _producer_poll_loop(self) -> None:
        assert self._producer is not None
        while True:
            self._producer.producer.poll(0)  # serves delivery callbacks (they hop to the loop)
            await asyncio.sleep(0.005)

    async def _commit_loop(self) -> None:
        assert self._checkpoint is not None
        while not self._stop.is_set():
            await asyncio.sleep(min(0.1, self.settings.commit_interval_s))
            try:
                await self._checkpoint.maybe_commit()
            except CommitFailed as exc:
                if not (exc.abortable and self.settings.exactly_once):
                    raise
                log.warning("transaction commit failed, aborting and reading the partitions again", error=str(exc))
                await self._rewind_all()
            if self.settings.stop_after and self._done_events() >= self.settings.stop_after:
                self.request_stop(f"stop_after={self.settings.stop_after} reached")
            if self._done is not None and (reason := self._done()) is not None:
                self.request_stop(reason)

    async def _gauge_loop(self) -> None:
        """Lag (high watermark minus committed offset, both modes) and the oldest in-flight age, per partition."""
        assert self._consumer is not None
        while not self._stop.is_set():
            for state in list(self.pipeline.states.values()):
                labels = {"topic": state.tp[0], "partition": str(state.tp[1])}
                metrics.OLDEST_IN_FLIGHT_SECONDS.labels(**labels).set(state.oldest_age())
                committed = state.offsets.committed
                if committed is None:
                    committed = state.offsets.first
                try:
                    _, high = await self._kafka_call(self._consumer.get_watermark_offsets,
                                                     TopicPartition(*state.tp), 2.0, False)
                except KafkaException:
                    continue
                if committed is not None and high >= 0 and not state.closed:
                    metrics.CONSUMER_LAG.labels(**labels).set(max(0, high - committed))
            await asyncio.sleep(GAUGE_INTERVAL_S)

    def _clear_gauges(self, keys: set[TopicPartitionKey] | None) -> None:
        """Revoked partitions' series go away (a stale lag series would page someone for nothing)."""
        for gauge in (metrics.CONSUMER_LAG, metrics.OLDEST_IN_FLIGHT_SECONDS):
            if keys is None:
                gauge.clear()
                continue
            for topic, partition in keys:
                with contextlib.suppress(KeyError):
                    gauge.remove(topic, str(partition))

    def _done_events(self) -> int:
        return sum(self.counts[k] for k in ("enriched", "tombstones", "dead_lettered")) + self.pipeline.skipped

    def _on_delivered(self, entry: Entry) -> None:
        output = entry.output
        dead = isinstance(output, DeadLetter)
        if dead:
            self.counts["dead_lettered"] += 1
            metrics.EVENTS_DEAD_LETTERED.labels(reason=output.reason).inc()
        else:
            kind = "enriched" if isinstance(output, Enriched) else "tombstone"
            self.counts["enriched" if kind == "enriched" else "tombstones"] += 1
            metrics.EVENTS_OUT.labels(kind=kind).inc()
        if entry.source.timestamp_ms:
            metrics.END_TO_END_SECONDS.observe(max(0.0, time.time() - entry.source.timestamp_ms / 1000))
        try:
            self.dlq_policy.record(dead)
        except DeadLetterRateExceeded as exc:
            log.error("dead-letter rate exceeded", error=str(exc))
            self.request_stop(str(exc), exit_code=EXIT_DLQ_RATE)

    # ------------------------------------------------------------------ rebalance callbacks (kafka thread)
    def _on_loop(self, coro: Any, timeout: float) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(kind="assign").inc()
        keys = _keys(partitions)
        try:  # the committed offsets, for the lag gauge until our own first commit
            committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=5)}
        except KafkaException:
            committed = {}
        self._on_loop(self._assign(keys, committed), timeout=30)

    async def _assign(self, keys: set[TopicPartitionKey], committed: dict[TopicPartitionKey, int]) -> None:
        self._last_activity = time.monotonic()  # idle time counts from when there is work to wait for
        self.pipeline.assign(keys, committed)
        self._publish_assignment()
        log.info("partitions assigned", partitions=_names(keys))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(kind="revoke").inc()
        keys = _keys(partitions)
        try:
            offsets = self._on_loop(self._revoke(keys), timeout=self.settings.revoke_drain_timeout_s + 60)
            if offsets:
                commit_offsets(consumer, offsets)  # on this (the consumer's) thread
                metrics.COMMITS.labels(outcome="ok").inc()
        except Exception as exc:  # a failed commit on revoke means duplicates later, never loss
            log.warning("commit on revoke failed", error=str(exc))
        finally:
            self._on_loop(self._forget(keys), timeout=30)

    async def _revoke(self, keys: set[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Let revoked partitions' work finish (bounded), then commit: returns the offsets to commit on the
        kafka thread (at-least-once), or commits the whole open transaction here (exactly-once)."""
        assert self._checkpoint is not None
        log.info("partitions revoked: draining", partitions=_names(keys))
        await self.pipeline.drain(keys, time.monotonic() + self.settings.revoke_drain_timeout_s)
        if self.settings.exactly_once:
            try:
                await self._checkpoint.commit()
            except CommitFailed as exc:
                # The transaction holds outputs of partitions we keep too; a restart is the clean way out.
                self.fatal(f"transaction commit on revoke failed: {exc}")
            return {}
        return committable(s for tp, s in self.pipeline.states.items() if tp in keys)

    async def _forget(self, keys: set[TopicPartitionKey]) -> None:
        self.pipeline.drop(keys)
        self._clear_gauges(keys)
        self._publish_assignment()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(kind="lost").inc()
        keys = _keys(partitions)
        log.warning("partitions lost: discarding their in-flight work", partitions=_names(keys))
        # never commit: another member may own them already
        seeks = self._on_loop(self._lose(keys), timeout=60)
        for tp, offset in seeks:
            with contextlib.suppress(KafkaException):
                consumer.seek(TopicPartition(*tp, offset))

    async def _lose(self, keys: set[TopicPartitionKey]) -> list[tuple[TopicPartitionKey, int]]:
        await self._forget(keys)
        if not self.settings.exactly_once:
            return []
        # The open transaction holds outputs of the lost partitions: abort it. It also held outputs of the
        # partitions we keep, so they start over from their last commit, with fresh states.
        return await self._rewind_all(seek=False)

    async def _rewind_all(self, *, seek: bool = True) -> list[tuple[TopicPartitionKey, int]]:
        """Exactly-once: abort the open transaction and read every owned partition again from its commit."""
        assert self._checkpoint is not None and self._consumer is not None
        positions = []
        for tp, state in list(self.pipeline.states.items()):
            point = state.offsets.committed if state.offsets.committed is not None else state.offsets.first
            if point is not None:
                positions.append((tp, point))
        committed = dict(positions)
        tps = list(self.pipeline.states)
        self.pipeline.drop(tps)
        await self._checkpoint.abort()
        self.pipeline.assign(tps, committed)
        if seek:
            for tp, offset in positions:
                with contextlib.suppress(KafkaException):
                    await self._kafka_call(self._consumer.seek, TopicPartition(*tp, offset))
        return positions

    def _publish_assignment(self) -> None:
        self.health.assigned_partitions = len(self.pipeline.states)
        metrics.ASSIGNED_PARTITIONS.set(len(self.pipeline.states))
        # a revoked partition's pause flag goes with its state: the gauge counts only what is assigned now
        metrics.PAUSED_PARTITIONS.set(sum(bool(st.paused) for st in self.pipeline.states.values()))
