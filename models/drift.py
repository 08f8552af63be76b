"""Drift guard: per attribute, does the photo still agree with the text as often as it did at training time?

Why: under a real shift (later catalogue years, another studio, photos of another shape) the image model can
fall from ~80% to ~40% on an attribute (season) while the fusion keeps trusting it; the text is far more
stable. Labels never arrive at serving time, but one signal does: how often the image model's answer equals
the text's where the text is confident. The training run measures that rate on validation
(:func:`agreement_band`, stored in the bundle manifest under ``drift``); the guard keeps a rolling window of
the same rate on live traffic and, when it falls below the band, tells the caller to fuse that attribute
from the text alone (``Bundle.combine(..., text_only=guard.text_only_attributes())``) until agreement is back.

Pure logic: no Kafka, no metrics, no clock, no threads. The consumer feeds it every product that has both
modalities and turns the returned :class:`GuardChange` records into a metric and a log line.

The band: with validation agreement ``p`` over ``n`` confident products, a live window of ``m`` products
trips when its number of agreements is in the lower ``ALPHA`` tail of what traffic like validation gives:
the beta-binomial predictive distribution of ``m`` draws at a rate drawn from ``Beta(p n + 1, (1-p) n + 1)``
(the validation rate and its own uncertainty), judged once at least ``min_observations`` products are in the
window. Why exact and why so small an ``ALPHA``: the guard judges the window after every product, so a
stream of ten thousand products makes thousands of correlated looks; and the bands of the attributes the
models get right (master category 0.997, sub-category 0.975) are where the normal approximation this
replaced (``p - 3 sqrt(p (1-p) (1/m + 1/n))``) is worst: it tripped on ordinary traffic 0.25-2.5 times per
10,000 products per attribute (sub-category after 200 products of a bundle's own test split), each time
feeding the "text-only for an hour" alert. Simulated on the default bundle's bands (``bench/guard_alarms.py``)
this rule trips at most 0.05 times per 10,000 in-band products per attribute and still finds a 15-point drop
in agreement 34-200 products after it starts (median; the normal edge: 18-126). It recovers (back to the
normal fusion) when the full window's agreement is back above the midpoint between that lower edge and
``p`` (hysteresis, so it does not flap).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.stats import betabinom

#: lower-tail probability, under validation-like traffic, of a window at which the guard trips
ALPHA = 1e-4
#: live products per attribute in the rolling window
DEFAULT_WINDOW = 200
#: the guard never judges an attribute on fewer confident products than this
DEFAULT_MIN_OBSERVATIONS = 50
#: an attribute with fewer confident validation products than this gets no band (it is never guarded)
MIN_VALIDATION = 30


def agreement_band(pairs: Sequence[tuple[np.ndarray, np.ndarray]], text_confidence: float,
                   shifted: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]] | None = None,
                   ) -> dict[str, Any]:
    """The manifest's ``drift[attr]``: how often the image model's top answer equals the text's among
    validation products whose text confidence reaches the gate. ``pairs`` are ``(text probs, image probs)``
    per product with both; ``shifted`` the same per photo-shape shift (recorded, so one can see whether a
    letterboxed photo would trip the guard).

    The gate is ``text_confidence`` (the attribute's text-only threshold) when at least ``MIN_VALIDATION``
    products reach it. Otherwise it is lowered to the confidence of the most confident quarter of the texts
    (at least ``MIN_VALIDATION`` of them; ``gate: "top"``), so every attribute with enough validation products
    gets a band, and one narrow enough to trip. Why: on season the text rarely reaches its threshold (0.88 on
    one time-split run, and no validation text reached it), and season is where the photo model breaks first
    under a year shift; an attribute without a band is never guarded. The gate is a relative measure, the
    same at training and serving time, so a lower one is still a fair band.
    """
    confs = np.array([float(np.max(t)) for t, _ in pairs])
    gate, how = float(text_confidence), "threshold"
    if int((confs >= gate).sum()) < MIN_VALIDATION <= len(confs):
        gate, how = float(np.sort(confs)[::-1][max(MIN_VALIDATION, len(confs) // 4) - 1]), "top"

    def rate(ps: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[int, float]:
        conf = [(int(np.argmax(t)) == int(np.argmax(i))) for t, i in ps if float(np.max(t)) >= gate]
        return len(conf), (float(np.mean(conf)) if conf else 0.0)

    n, p = rate(pairs)
    out: dict[str, Any] = {"text_confidence": gate, "gate": how, "n": n, "agreement": p}
    if shifted:
        out["shifted"] = {}
        for view, ps in shifted.items():
            nv, pv = rate(ps)
            out["shifted"][view] = {"n": nv, "agreement": pv}
    return out


@dataclass(frozen=True)
class Band:
    """One attribute's training-time agreement: rate ``agreement`` over ``n`` products whose text
    confidence reached ``text_confidence``."""

    agreement: float
    n: int
    text_confidence: float

    def low(self, m: int) -> float:
        """The lower edge of the band for a window of ``m`` live products: an agreement rate below it is in
        the lower ``ALPHA`` tail of validation-like traffic (see the module docstring)."""
        return _low_edge(round(self.agreement, 6), self.n, max(1, m))


@lru_cache(maxsize=4096)
def _low_edge(agreement: float, n: int, m: int) -> float:
    """``ALPHA`` quantile of the beta-binomial agreement count, as a rate (cached: the guard asks for the
    same few hundred window sizes after every product)."""
    p = min(max(agreement, 0.0), 1.0)
    a, b = p * max(1, n) + 1.0, (1.0 - p) * max(1, n) + 1.0
    return float(betabinom.ppf(ALPHA, m, a, b)) / m


@dataclass(frozen=True)
class GuardChange:
    """The guard switched ``attribute`` to text-only fusion (``text_only=True``) or back, with the live
    agreement over ``window`` products and the band's lower edge it was compared with."""

    attribute: str
    text_only: bool
    agreement: float
    low: float
    expected: float
    window: int

    def to_json(self) -> dict[str, Any]:
        """Log-line form."""
        return {"attribute": self.attribute, "text_only": self.text_only, "agreement": round(self.agreement, 4),
                "band_low": round(self.low, 4), "expected": round(self.expected, 4), "window": self.window}


class DriftGuard:
    """Per-attribute rolling image-text agreement against the training-time band (see module docstring).

    Not thread-safe: call it from one thread (the consumer's inference/fusion step).
    """

    def __init__(self, bands: Mapping[str, Band], window: int = DEFAULT_WINDOW,
                 min_observations: int = DEFAULT_MIN_OBSERVATIONS) -> None:
        if window < 1 or min_observations < 1:
            raise ValueError("window and min_observations must be >= 1")
        self.bands = {a: b for a, b in bands.items() if b.n >= MIN_VALIDATION}
        self.window = window
        self.min_observations = min(min_observations, window)
        self._seen: dict[str, deque[bool]] = {a: deque(maxlen=window) for a in self.bands}
        self._text_only: set[str] = set()

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], window: int = DEFAULT_WINDOW,
                      min_observations: int = DEFAULT_MIN_OBSERVATIONS) -> DriftGuard:
        """From a bundle manifest's ``drift`` section (a bundle without one guards nothing)."""
        drift = manifest.get("drift") or {}
        bands = {a: Band(float(d["agreement"]), int(d["n"]), float(d["text_confidence"]))
                 for a, d in drift.items() if d and "agreement" in d}
        return cls(bands, window, min_observations)

    @property
    def attributes(self) -> list[str]:
        """The attributes the guard watches (those with a band)."""
        return list(self.bands)

    def observe(self, text_probs: Mapping[str, np.ndarray] | None,
                image_probs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None,
                mentioned: Mapping[str, bool] | None = None) -> list[GuardChange]:
        """Record one product (its served text probabilities and its image probabilities: one mapping, or
        one per photo, averaged as ``Bundle.combine`` does). Only attributes where both modalities answered
        and the text is confident count, and not those whose text names none of their values
        (``mentioned[attr]`` False, ``Bundle.mentioned``): there the text guesses and the photo carries the
        attribute, so their disagreement says nothing about the photo (a vendor without colour words in its
        titles would otherwise switch colour to the text exactly where the text knows nothing). Returns the
        attributes whose state changed with this product."""
        if not text_probs or not image_probs:
            return []
        imgs = [image_probs] if isinstance(image_probs, Mapping) else [p for p in image_probs if p]
        changes: list[GuardChange] = []
        for a, band in self.bands.items():
            t = text_probs.get(a)
            ps = [np.asarray(p[a], dtype=np.float64) for p in imgs if a in p]
            if t is None or not ps or float(np.max(t)) < band.text_confidence or not (mentioned or {}).get(a, True):
                continue
            i = ps[0] if len(ps) == 1 else np.mean(np.stack(ps), axis=0)
            seen = self._seen[a]
            seen.append(int(np.argmax(t)) == int(np.argmax(i)))
            m = len(seen)
            if m < self.min_observations:
                continue
            rate = sum(seen) / m
            low = band.low(m)
            if a not in self._text_only and rate < low:
                self._text_only.add(a)
                changes.append(GuardChange(a, True, rate, low, band.agreement, m))
            elif a in self._text_only and m >= self.window and rate >= (low + band.agreement) / 2:
                self._text_only.discard(a)
                changes.append(GuardChange(a, False, rate, low, band.agreement, m))
        return changes

    def text_only_attributes(self) -> set[str]:
        """The attributes to fuse from the text alone now."""
        return set(self._text_only)

    def state(self) -> dict[str, dict[str, Any]]:
        """Per watched attribute: live agreement, window fill, band and whether it is text-only now."""
        out: dict[str, dict[str, Any]] = {}
        for a, band in self.bands.items():
            seen = self._seen[a]
            m = len(seen)
            out[a] = {"agreement": (sum(seen) / m) if m else None, "observed": m, "expected": band.agreement,
                      "band_low": band.low(max(m, 1)), "text_only": a in self._text_only}
        return out
