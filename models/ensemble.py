"""Learned fusion of image and text probabilities, per attribute, and confidence thresholds.

Why log-linear pooling of the two models' probabilities (``softmax(a_t log p_t + a_i log p_i + b)``) instead of
octopod's ensemble over concatenated features: it is fitted on validation data in seconds, it has a natural
answer when a modality is missing (the separately fitted text-only / image-only calibrations), and it cannot
crash on CPU because it is three numbers and a bias vector per attribute stored as JSON. The weights tell
which modality each attribute trusts (colour leans on the image, season on neither).

Thresholds: one per attribute and input mode, the lowest confidence at which validation precision reaches a
target, instead of ShopRunner's single 0.5 for everything; downstream search would rather get "unknown" than
a wrong colour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

MODES = ("both", "text", "image")
_EPS = 1e-7


@dataclass
class AttributePrediction:
    """One attribute's fused prediction with the evidence from each modality."""

    value: str | None
    confidence: float
    threshold: float
    image: tuple[str, float] | None = None
    text: tuple[str, float] | None = None
    probs: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """``{"value", "confidence", "threshold", "evidence": {"image", "text"}}`` (the event contract)."""

        def ev(x: tuple[str, float] | None) -> dict[str, Any] | None:
            return None if x is None else {"value": x[0], "confidence": float(x[1])}

        return {
            "value": self.value,
            "confidence": float(self.confidence),
            "threshold": float(self.threshold),
            "evidence": {"image": ev(self.image), "text": ev(self.text)},
        }


def _log(p: np.ndarray | torch.Tensor) -> Any:
    if isinstance(p, torch.Tensor):
        return torch.log(p.clamp(min=_EPS))
    return np.log(np.clip(p, _EPS, 1.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class FusionParams:
    """Per attribute and mode: modality weights and a class bias."""

    text_weight: float = 1.0
    image_weight: float = 1.0
    bias: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        """Manifest form."""
        return {"text_weight": self.text_weight, "image_weight": self.image_weight, "bias": self.bias}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FusionParams:
        """Inverse of :meth:`to_json`."""
        return cls(float(d["text_weight"]), float(d["image_weight"]), d.get("bias"))


class Ensemble:
    """``params[attr][mode]`` -> fused probabilities; modes ``both`` / ``text`` / ``image``."""

    def __init__(self, params: Mapping[str, Mapping[str, FusionParams]] | None = None) -> None:
        self.params: dict[str, dict[str, FusionParams]] = {a: dict(m) for a, m in (params or {}).items()}

    def fuse(self, attr: str, text: np.ndarray | None, image: np.ndarray | None) -> tuple[np.ndarray, str]:
        """Fused probabilities and the mode used. Needs at least one modality."""
        mode = "both" if text is not None and image is not None else ("text" if text is not None else "image")
        if text is None and image is None:
            raise ValueError("fuse needs text or image probabilities")
        p = self.params.get(attr, {}).get(mode, FusionParams())
        k = (text if text is not None else image).shape[-1]  # type: ignore[union-attr]
        z = np.zeros(k, dtype=np.float64) if p.bias is None else np.asarray(p.bias, dtype=np.float64)
        if text is not None:
            z = z + p.text_weight * _log(np.asarray(text, dtype=np.float64))
        if image is not None:
            z = z + p.image_weight * _log(np.asarray(image, dtype=np.float64))
        return _softmax(z), mode

    def to_json(self) -> dict[str, Any]:
        """Manifest form."""
        return {a: {m: p.to_json() for m, p in ms.items()} for a, ms in self.params.items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Ensemble:
        """Inverse of :meth:`to_json`."""
        return cls({a: {m: FusionParams.from_json(p) for m, p in ms.items()} for a, ms in d.items()})


def fit_fusion(
    text: np.ndarray | None,
    image: np.ndarray | None,
    labels: np.ndarray,
    bias_l2: float = 1e-3,
    weight_l2: float = 1e-3,
    steps: int = 200,
) -> FusionParams:
    """Fit one mode's weights + bias by minimising validation NLL (LBFGS, a handful of parameters).

    A small L2 pull of the weights towards 1 and of the bias towards 0 keeps a tiny or separable validation
    set from sending them to infinity; weights are clipped to [0, 20] (a modality never counts negatively).
    """
    y = torch.as_tensor(labels, dtype=torch.long)
    lt = None if text is None else _log(torch.as_tensor(text, dtype=torch.float64))
    li = None if image is None else _log(torch.as_tensor(image, dtype=torch.float64))
    k = (lt if lt is not None else li).shape[1]  # type: ignore[union-attr]
    wt = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    wi = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([wt, wi, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = b.expand(len(y), k)
        if lt is not None:
            z = z + wt * lt
        if li is not None:
            z = z + wi * li
        loss = (torch.nn.functional.cross_entropy(z, y) + bias_l2 * (b**2).sum()
                + weight_l2 * ((wt - 1) ** 2 + (wi - 1) ** 2))
        loss.backward()
        return loss

    if len(y):
        opt.step(closure)
    clip = lambda w: float(min(max(float(w.detach()), 0.0), 20.0))  # noqa: E731
    return FusionParams(clip(wt), clip(wi), [float(x) for x in b.detach()])


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target_precision: float,
                     min_support: int = 20) -> float:
    """Lowest confidence ``t`` with precision(conf >= t) >= target, counting only ``t`` with enough support.

    When no such ``t`` exists the highest confidence seen is returned (the attribute then answers rarely):
    an honest "unknown" beats a wrong value.
    """
    if len(confidence) == 0:
        return 0.5
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    cum_prec = np.cumsum(correct[order]) / np.arange(1, len(conf) + 1)
    ok = np.nonzero((cum_prec >= target_precision) & (np.arange(1, len(conf) + 1) >= min(min_support, len(conf))))[0]
    if len(ok) == 0:
        return float(min(conf[0], 0.999))
    return float(conf[ok[-1]])


def precision_coverage(confidence: np.ndarray, correct: np.ndarray, threshold: float, n_total: int
                       ) -> tuple[float, float]:
    """Precision among predictions with confidence >= threshold, and their share of ``n_total`` products."""
    m = confidence >= threshold
    covered = int(m.sum())
    prec = float(correct[m].mean()) if covered else 0.0
    return prec, covered / max(1, n_total)


def average_image_probs(probs: Sequence[np.ndarray]) -> np.ndarray | None:
    """Several photos of one product: average their probabilities; none: ``None``."""
    if not probs:
        return None
    return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in probs]), axis=0)
