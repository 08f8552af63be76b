"""One event at a time: parse, fetch, decode, infer, fuse, build. Kafka-free.

The stream runtime hands in raw values with their :class:`~consumer.stages.events.SourceCoordinates` and
gets typed :mod:`~consumer.stages.outputs` back; it never parses a payload itself. The enricher owns the
image fetcher, the decode pool, the inference thread and its two micro-batchers, and the image memory
budget; use it as an async context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, cast

import orjson
from PIL import Image

from consumer.ops import metrics
from consumer.ops.logs import get_logger
from consumer.ops.settings import Settings
from consumer.stages.batcher import MicroBatcher
from consumer.stages.budget import MemoryBudget
from consumer.stages.events import (
    InvalidEvent,
    ProductEvent,
    SourceCoordinates,
    build_dead_letter,
    build_enriched_event,
    clip_key,
    original_budget,
    parse_product_event,
    source_headers,
    tombstone_event_id,
    tombstone_headers,
)
from consumer.stages.fetch import FetchResult, ImageFetcher
from consumer.stages.outputs import DeadLetter, Enriched, Tombstone
from models.predictor import Guard, GuardedPredictor, Prediction, Predictor
from schemas import cloudevents

log = get_logger("enrich.enricher")


def views_nbytes(predictor: Predictor) -> int:
    """Bytes of one image's model views, measured once on a blank picture of the decode size."""
    views = predictor.image_views(Image.new("RGB", predictor.image_decode_size, (255, 255, 255)))
    nbytes = getattr(views, "nbytes", None)
    if nbytes is None and hasattr(views, "element_size"):
        nbytes = views.element_size() * views.nelement()
    return int(nbytes or 0)


class Enricher:
    """Turns one input event into its output. Loop thread only, except where a method says otherwise."""

    def __init__(
        self, predictor: Predictor, settings: Settings, *, on_inference_busy: Callable[[bool], None] | None = None
    ) -> None:
        self.predictor = predictor
        self.settings = settings
        self.counts = {"images_ok": 0, "images_failed": 0}
        self._max_original = original_budget(settings.max_message_bytes())
        self._on_busy = on_inference_busy
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._decode = ThreadPoolExecutor(2, thread_name_prefix="decode")
        self._stack = contextlib.AsyncExitStack()
        self._fetcher: ImageFetcher | None = None
        self._text_batcher: MicroBatcher[str, Any] | None = None
        self._image_batcher: MicroBatcher[Any, Any] | None = None
        #: the bundle's drift guard (models.drift.DriftGuard) when it has one; predictors without it (test
        #: fakes, older bundles) are fused as before
        make_guard = getattr(predictor, "drift_guard", None)
        self.guard: Guard | None = make_guard() if callable(make_guard) else None

    async def __aenter__(self) -> Enricher:
        s, p = self.settings, self.predictor
        self._text_batcher = MicroBatcher("text", p.predict_texts, max_size=s.batch.text_max_size,
                                          max_wait_s=s.batch.max_wait_ms / 1000, executor=self._inference,
                                          on_busy=self._on_busy)
        self._image_batcher = MicroBatcher("image", p.predict_images, max_size=s.batch.image_max_size,
                                           max_wait_s=s.batch.max_wait_ms / 1000, executor=self._inference,
                                           on_busy=self._on_busy)
        self._text_batcher.start()
        self._image_batcher.start()
        view_bytes = await asyncio.get_running_loop().run_in_executor(self._decode, views_nbytes, p)
        fetcher = ImageFetcher(s.fetch, draft_size=p.image_decode_size, executor=self._decode,
                               to_views=p.image_views, budget=MemoryBudget(s.image_memory_bytes),
                               view_bytes=view_bytes)
        self._fetcher = await self._stack.enter_async_context(fetcher)
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self._stack.aclose()
        if self._text_batcher is not None:
            await self._text_batcher.close()
        if self._image_batcher is not None:
            await self._image_batcher.close()
        self._inference.shutdown(wait=False, cancel_futures=True)
        self._decode.shutdown(wait=False, cancel_futures=True)

    @property
    def batch_sizes(self) -> dict[str, list[int]]:
        """Real micro-batch sizes so far, per model (demo summary, tests)."""
        return {b.name: b.batch_sizes for b in (self._text_batcher, self._image_batcher) if b is not None}

    # ------------------------------------------------------------------ the three steps
    def parse(self, raw: bytes | None, source: SourceCoordinates) -> ProductEvent | DeadLetter:
        """Validate the input (microseconds to a millisecond; called on the loop as events arrive)."""
        try:
            return parse_product_event(raw, max_bytes=self.settings.max_event_bytes)
        except InvalidEvent as exc:
            return self.dead_letter(raw, source, exc.reason, exc.detail)

    async def handle(self, product: ProductEvent, source: SourceCoordinates) -> Enriched | Tombstone:
        """The output of a valid event; exceptions are the caller's to turn into ``processing_error``."""
        if product.op == "delete":
            headers = tombstone_headers(product, source)
            if self.settings.cloudevents:
                headers += cloudevents.tombstone_headers(
                    product.product_id, topic=source.topic, partition=source.partition, offset=source.offset,
                    updated_at=product.updated_at, event_id=tombstone_event_id(source))
            return Tombstone(product.product_id, headers)
        value = await self._enrich(product, source)
        headers = source_headers(source)
        if self.settings.cloudevents:  # from the bytes as sent, so the headers cannot disagree with the body
            headers += cloudevents.enriched_headers(orjson.loads(value))
        return Enriched(product.product_id, value, headers)

    def dead_letter(self, raw: bytes | None, source: SourceCoordinates, reason: str, detail: str) -> DeadLetter:
        """A dead letter that always fits the producer's message size: original and key clipped, flagged."""
        log.warning("dead-lettering event", reason=reason, detail=detail[:500], topic=source.topic,
                    partition=source.partition, offset=source.offset)
        value, headers = build_dead_letter(raw, source, reason=reason, detail=detail,
                                           max_original_bytes=self._max_original)
        if self.settings.cloudevents:
            headers += cloudevents.dead_letter_headers(orjson.loads(value))
        return DeadLetter(clip_key(source.key), value, reason, headers)

    # ------------------------------------------------------------------ enrichment
    async def _enrich(self, product: ProductEvent, source: SourceCoordinates) -> bytes:
        assert self._fetcher is not None and self._text_batcher is not None and self._image_batcher is not None
        p = self.predictor
        started = time.perf_counter()
        text = p.text_input(product.title, product.description, product.brand)
        text_future = asyncio.ensure_future(self._text_batcher.submit(text)) if text.strip() else None
        results: list[FetchResult] = []
        try:
            if product.image_urls:
                results = await self._fetcher.fetch_all(product.image_urls)
            metrics.STAGE_SECONDS.labels(stage="fetch").observe(time.perf_counter() - started)
            views = [r.views for r in results if r.status == "ok" and r.views is not None]
            self.counts["images_ok"] += len(views)
            self.counts["images_failed"] += sum(r.status not in ("ok", "skipped") for r in results)
            infer_started = time.perf_counter()
            image_probs = list(await asyncio.gather(*(self._image_batcher.submit(v) for v in views)))
            text_probs = await text_future if text_future is not None else None
            metrics.STAGE_SECONDS.labels(stage="inference").observe(time.perf_counter() - infer_started)
        finally:
            for result in results:  # views are done with (or abandoned): give their memory back
                if result.reservation is not None:
                    result.reservation.release()
            if text_future is not None and not text_future.done():
                text_future.cancel()
        if self.guard is None:
            predictions = p.combine(text_probs, image_probs, text=text)
        else:
            predictions = self._guarded_combine(text_probs, image_probs, text, source)
        modalities = (["image"] if image_probs else []) + (["text"] if text_probs is not None else [])
        attributes = {name: pred.to_json() for name, pred in predictions.items()}
        metrics.observe_predictions(attributes)
        return build_enriched_event(
            product,
            source,
            model_name=p.name,
            model_version=p.version,
            attributes=attributes,
            images=[r.to_json() for r in results],
            modalities=modalities,
        )

    def _guarded_combine(self, text_probs: Any, image_probs: list[Any], text: str, source: SourceCoordinates
                         ) -> Mapping[str, Prediction]:
        """Feed the drift guard this product, then fuse the attributes it switched from the text alone; each
        switch is a warning line and ``enrich_drift_switches_total``, the state ``enrich_drift_*`` gauges."""
        assert self.guard is not None
        predictor = cast(GuardedPredictor, self.predictor)
        changes = self.guard.observe(text_probs, image_probs, predictor.mentioned(text)) if image_probs else []
        for ch in changes:
            if ch.text_only:
                log.warning("drift guard: image and text disagree beyond the training band, attribute falls back "
                            "to text-only fusion", **ch.to_json(), topic=source.topic, partition=source.partition,
                            offset=source.offset)
            else:
                log.info("drift guard: agreement back within the training band, attribute fused again",
                         **ch.to_json(), topic=source.topic, partition=source.partition, offset=source.offset)
        if changes or image_probs:
            metrics.observe_drift(self.guard.state(), [(ch.attribute, ch.text_only) for ch in changes])
        return predictor.combine(text_probs, image_probs, text=text, text_only=self.guard.text_only_attributes())
