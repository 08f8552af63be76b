"""Replay a bundle's test rows through the drift guard as a stream would, and score what it changes.

    .venv/bin/python bench/guard_replay.py --bundle .cache/real12/bundle \\
        --catalog ../shared/datasets/fashion-products/styles.csv [--photo-shape letterbox]

Rows of the bundle's own test split with a photo, in catalog order: each is observed by a fresh
``Bundle.drift_guard()`` (default window and band; ``models.evaluate.serve_rows`` replays it, as
``enrich evaluate``'s ``guarded`` column does) and fused with the attributes it has switched to text only at
that moment (``Bundle.combine(..., text_only=...)``), exactly as ``consumer.stages.enricher`` does. Prints,
per attribute, when the guard switched, and the accuracy with the guard against without it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from models.bundle import Bundle
from models.data import read_catalog
from models.evaluate import serve_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--photo-shape", default=None)
    args = ap.parse_args()
    b = Bundle.load(args.bundle, device="cpu")
    rows = [p for p in read_catalog(args.catalog)
            if p.image_path is not None and b.spec.split.of(p.id, p.year) == "test"]
    served = serve_rows(b, rows, set(), progress=False, photo_shape=args.photo_shape)  # replays the guard too
    right = {a: [0, 0, 0] for a in b.attributes}  # guarded, unguarded, labelled
    for i, p in enumerate(rows):
        tp, ip = served.text_probs[i], served.image_probs[i]
        if ip is None:
            continue
        guarded = b.combine(tp, [ip], text=served.texts[i], text_only=served.text_only[i])
        plain = b.combine(tp, [ip], text=served.texts[i])
        for a in b.attributes:
            y = b.taxonomy.attributes[a].encode(p.labels.get(a))
            if y < 0:
                continue
            right[a][2] += 1
            right[a][0] += int(np.argmax(guarded[a].probs) == y)  # type: ignore[arg-type]
            right[a][1] += int(np.argmax(plain[a].probs) == y)  # type: ignore[arg-type]
    switches = served.guard_switches
    final = sorted(served.text_only[-1]) if served.text_only else []
    print(json.dumps({"rows": len(rows), "switches": switches, "final_text_only": final,
                      "accuracy": {a: {"guarded": g / max(1, n), "unguarded": u / max(1, n), "n": n,
                                       "guarded_minus_unguarded_products": g - u}
                                   for a, (g, u, n) in right.items()}}, indent=1))


if __name__ == "__main__":
    main()
