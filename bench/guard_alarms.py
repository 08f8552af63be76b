"""How often does the drift guard trip on ordinary traffic, and how soon after a real drop? Per attribute band.

The guard (``models.drift.DriftGuard``) judges its window after every product, so its false alarms are a
property of the band and the window, not of any model: this drives the real guard with simulated products
(each one agreeing or not, at a live rate drawn from the validation posterior ``Beta(p n + 1, (1-p) n + 1)``
for "ordinary traffic", at ``p - drop`` after a shift) for every band of a bundle's manifest::

    .venv/bin/python bench/guard_alarms.py --bundle .cache/real16/bundle

Prints a Markdown table: false trips per 10,000 in-band products, and the median number of products from
the start of a drop to the switch. ``--normal`` scores the normal-approximation edge the guard used before
(``p - 3 sqrt(p (1-p) (1/m + 1/n))``) instead, for comparison. No forward pass, ~1 min.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from models import drift
from models.drift import Band, DriftGuard


def _normal_low(self: Band, m: int) -> float:
    p = min(max(self.agreement, 1e-6), 1 - 1e-6)
    return p - 3.0 * math.sqrt(p * (1 - p) * (1 / max(1, m) + 1 / max(1, self.n)))


def _switches(band: Band, agree: np.ndarray) -> list[int]:
    """Indices at which a fresh guard switched to text-only on this agree / disagree stream."""
    guard = DriftGuard({"a": band})
    t, hit, miss = {"a": np.array([0.9, 0.1])}, {"a": np.array([0.9, 0.1])}, {"a": np.array([0.1, 0.9])}
    return [i for i, x in enumerate(agree) for c in guard.observe(t, hit if x else miss) if c.text_only]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--products", type=int, default=20_000, help="in-band products per run")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--drop", type=float, default=0.15, help="fall in agreement rate after a shift")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--normal", action="store_true", help="score the old normal-approximation edge")
    args = ap.parse_args()
    if args.normal:
        Band.low = _normal_low  # type: ignore[method-assign]
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    rng = np.random.default_rng(args.seed)
    rule = "normal, z 3" if args.normal else f"beta-binomial, alpha {drift.ALPHA:g}"
    print(f"rule: {rule}; window {drift.DEFAULT_WINDOW}, judged from {drift.DEFAULT_MIN_OBSERVATIONS}; "
          f"{args.runs} runs x {args.products} products; drop {args.drop}\n")
    print("| attribute | band p | n | false trips / 10k products | products to trip after the drop (median) |")
    print("|---|---|---|---|---|")
    for attr, d in (manifest.get("drift") or {}).items():
        if not d or "agreement" not in d:
            continue
        band = Band(float(d["agreement"]), int(d["n"]), 0.5)
        p, n = band.agreement, band.n
        trips = 0
        for _ in range(args.runs):
            live = rng.beta(p * n + 1, (1 - p) * n + 1)
            agree = rng.random(args.products) < live
            # count every trip: after one, a fresh guard continues from the next product
            start = 0
            while start < len(agree) and (s := _switches(band, agree[start:])):
                trips, start = trips + 1, start + s[0] + 1
        lags = []
        for _ in range(args.runs):
            agree = np.concatenate([rng.random(1000) < p, rng.random(2000) < max(0.0, p - args.drop)])
            after = [i - 1000 for i in _switches(band, agree) if i >= 1000]
            lags.append(after[0] if after else 2000)
        rate = trips / (args.runs * args.products) * 10_000
        print(f"| {attr} | {p:.3f} | {n} | {rate:.2f} | {int(np.median(lags))} |")


if __name__ == "__main__":
    main()
