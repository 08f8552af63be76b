"""The model interface the streaming consumer uses: the only part of ``models`` that ``consumer.stages``
imports, so the service depends on a few methods, not on how bundles are stored or trained.

:class:`models.bundle.Bundle` implements it; tests may pass any object that does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol


class Prediction(Protocol):
    """One fused attribute: ``to_json()`` is its entry in the enriched event's ``attributes``."""

    def to_json(self) -> dict[str, Any]: ...


class Predictor(Protocol):
    """What ``consumer.stages.enricher`` calls on a loaded model bundle.

    Threading contract: ``image_views`` runs in the decode pool (any thread), ``predict_*`` only in the one
    inference thread, the rest on the event loop.
    """

    name: str
    version: str
    attributes: Sequence[str]
    image_decode_size: tuple[int, int]

    def text_input(self, title: str | None, description: str | None = None, brand: str | None = None) -> str: ...

    def image_views(self, pil_rgb: Any) -> Any: ...

    def predict_texts(self, texts: Sequence[str]) -> list[dict[str, Any]]: ...

    def predict_images(self, views: Sequence[Any]) -> list[dict[str, Any]]: ...

    def combine(
        self, text_probs: Mapping[str, Any] | None, image_probs: Sequence[Mapping[str, Any]], text: str | None = None
    ) -> Mapping[str, Prediction]: ...


class GuardChange(Protocol):
    """One drift-guard switch (``models.drift.GuardChange``): ``to_json()`` is its log-line form."""

    attribute: str
    text_only: bool
    agreement: float

    def to_json(self) -> dict[str, Any]: ...


class Guard(Protocol):
    """Per-attribute image-text agreement against the bundle's training-time band (``models.drift.DriftGuard``).
    Event loop only (one thread): ``observe`` each product's probabilities, then fuse the attributes of
    ``text_only_attributes()`` from the text alone."""

    def observe(self, text_probs: Mapping[str, Any] | None, image_probs: Sequence[Mapping[str, Any]] | None,
                mentioned: Mapping[str, bool] | None = None) -> list[GuardChange]: ...

    def text_only_attributes(self) -> set[str]: ...

    def state(self) -> dict[str, dict[str, Any]]: ...


class GuardedPredictor(Predictor, Protocol):
    """A predictor with a drift guard (``models.bundle.Bundle``): ``combine`` also takes ``text_only``."""

    def drift_guard(self) -> Guard: ...

    def mentioned(self, text: str | None) -> dict[str, bool]: ...

    def combine(
        self, text_probs: Mapping[str, Any] | None, image_probs: Sequence[Mapping[str, Any]], text: str | None = None,
        text_only: Collection[str] = (),
    ) -> Mapping[str, Prediction]: ...
