"""A fitted pool must prove its gain over the best single source before it replaces it (``select_pool``).

Real fits (``fit_pool`` by L-BFGS, 5-fold cross-validation) on synthetic sources whose accuracy is known, so
the fused answers can be scored on a fresh draw of the same size: the situation of a bundle whose fusion
is fitted on validation products and judged on as many test products.
"""

from __future__ import annotations

import numpy as np
import pytest

import models.ensemble as ensemble
from models.ensemble import pool_is_proven, select_pool


def _source(rng: np.random.Generator, y: np.ndarray, right: np.ndarray, k: int, conf_right: float,
            conf_wrong: float) -> np.ndarray:
    """Probabilities whose argmax is ``y`` where ``right`` and another class elsewhere."""
    n = len(y)
    pred = np.where(right, y, (y + rng.integers(1, k, n)) % k)
    c = np.where(right, conf_right, conf_wrong)
    p = rng.dirichlet(np.ones(k), n) * (1 - c)[:, None]
    p[np.arange(n), pred] += c
    return p / p.sum(1, keepdims=True)


def _test_gains(seeds: range, n: int = 600, k: int = 4) -> list[int]:
    """Per seed: products the selected fusion gets right on a fresh draw, minus those the text gets right.
    The text is right 90% of the time, the photo 45% and about as sure when wrong: it adds next to nothing,
    so any pool's out-of-fold gain over the text is mostly chance."""
    gains = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        y = rng.integers(0, k, 2 * n)
        text = _source(rng, y, rng.random(2 * n) < 0.9, k, 0.6, 0.45)
        image = _source(rng, y, rng.random(2 * n) < 0.45, k, 0.6, 0.55)
        sel = select_pool([text[:n], image[:n]], y[:n], ["text", "image"])
        fused = sel.params.apply([text[n:], image[n:]]).argmax(1)
        gains.append(int((fused == y[n:]).sum() - (text[n:].argmax(1) == y[n:]).sum()))
    return gains


def test_a_pool_whose_gain_is_chance_does_not_replace_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    proven = _test_gains(range(20))
    assert min(proven) >= -1, proven  # never more than the one-product tie behind the text on fresh products
    monkeypatch.setattr(ensemble, "pool_is_proven", lambda wins, losses: True)  # the rule before the gate
    unproven = _test_gains(range(20))
    assert min(unproven) < -1, unproven  # the same data does drag an unproven pool below the text


def test_a_pool_with_a_clear_gain_is_still_chosen() -> None:
    rng = np.random.default_rng(2)
    n, k = 1500, 4
    y = rng.integers(0, k, n)
    a = _source(rng, y, rng.random(n) < 0.7, k, 0.9, 0.4)
    b = _source(rng, y, rng.random(n) < 0.7, k, 0.9, 0.4)
    sel = select_pool([a, b], y, ["a", "b"])
    assert not sel.params.kind.startswith("only:"), sel.params.kind
    scores = sel.scores[sel.params.kind]
    assert scores["wins_vs_best_single"] > 2 * scores["losses_vs_best_single"]


def test_the_proof_counts_products_not_rows() -> None:
    """Three rows per product (the photo as it is, squashed, letterboxed) must not triple the evidence."""
    assert pool_is_proven(12, 0)
    assert not pool_is_proven(3, 0) and not pool_is_proven(0, 0) and not pool_is_proven(5, 5)
    assert pool_is_proven(62, 38) and not pool_is_proven(58, 42)
    assert pool_is_proven(30, 10) and not pool_is_proven(30 / 3, 10 / 3)
