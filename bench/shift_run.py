"""Train a bundle on the real catalog's time split and score it under the shifts of issue 12.

One command for the whole measurement in docs/models.md ("Under shift"): train on catalogue years before
2013, fit model selection, fusion and thresholds on 2013-2015 (photos as they are, and at 3:4 squashed and
letterboxed), test on 2016 and later; then ``enrich evaluate`` the test years with the photos as they are,
at 3:4 squashed, at 3:4 letterboxed, and with every colour word removed::

    nice -n 10 .venv/bin/python bench/shift_run.py --catalog ../shared/datasets/fashion-products/styles.csv \\
        --out .cache/real12

``--set split_years=2013`` trains on the same years but splits 2013 and later between validation and test
by the seeded hash, so the fusion is fitted on the years it is tested on (``models.data.SplitSpec``).

Writes ``OUT/bundle`` and ``OUT/eval/*.json`` (and prints the Markdown tables). ``--skip-train`` re-scores an
existing bundle. Extra ``--set key=value`` pairs override training options (``models.train.train_command``).

The year shift inside a random split (a bundle trained by the default ``enrich train``), scored against the
same models fitted without the year fold, on the test products of the years few training photos come from::

    .venv/bin/python bench/shift_run.py --skip-train --bundle .cache/real15/bundle --catalog STYLES \
        --out .cache/real15 --years 2007-2010,2012-2019 --against .cache/real15/bundle-noyear \
        --runs square,squash,no_color_words
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from models.evaluate import evaluate_command, format_against, format_table
from models.train import train_command

#: The configuration measured in docs/models.md: the defaults, but 128 px views and a frozen MiniLM (its
#: output cached; heads, n-gram branch and the wide TF-IDF model train), so the run fits a shared 2-core hour.
CONFIG: dict[str, Any] = {
    "split": "year", "split_years": "2013,2016", "image_size": 128, "text_train_layers": 0, "epochs": 6,
    "max_minutes": 60.0, "threads": 2, "progress": False, "name": "fashion-products-time",
}


def _value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="training option override, key=value")
    ap.add_argument("--bundle", type=Path, help="bundle to write / score [OUT/bundle]")
    ap.add_argument("--years", help="score only products of these catalogue years, e.g. 2012,2015-2017")
    ap.add_argument("--against", help="another bundle scored on the same rows (enrich evaluate --against)")
    ap.add_argument("--runs", default="square,squash,letterbox,no_color_words,no_color_words_letterbox",
                    help="which evaluations, comma-separated")
    args = ap.parse_args()
    bundle = args.bundle or args.out / "bundle"
    times: dict[str, float] = {}
    if not args.skip_train:
        # a string option stays a string (--set split_years=2013 is a year list, not the number 2013)
        cfg = {**CONFIG, **{k: v if isinstance(CONFIG.get(k), str) else _value(v)
                            for k, v in (s.split("=", 1) for s in args.set)}}
        t = time.monotonic()
        summary = train_command(catalog=[args.catalog], out=str(bundle), work_dir=str(args.out / "work"), **cfg)
        times["train"] = time.monotonic() - t
        print(json.dumps({k: v for k, v in summary.items() if k != "validation"}))
    runs: list[tuple[str, dict[str, Any]]] = [
        ("square", {}), ("squash", {"photo_shape": "squash", "baseline": False}),
        ("letterbox", {"photo_shape": "letterbox", "baseline": False}),
        ("no_color_words", {"strip_color_words": True, "attributes": ["color"]}),
        ("no_color_words_letterbox", {"strip_color_words": True, "attributes": ["color"], "photo_shape": "letterbox",
                                      "baseline": False}),
    ]
    wanted = set(args.runs.split(","))
    for tag, kw in runs:
        if tag not in wanted:
            continue
        t = time.monotonic()
        out = str(args.out / "eval" / f"{tag}.json")
        rep = evaluate_command(bundle=str(bundle), catalog=args.catalog, json_out=out, progress=False,
                               years=args.years, against=args.against, **kw)
        times[f"eval_{tag}"] = time.monotonic() - t
        print(f"## {tag} ({times[f'eval_{tag}']:.0f} s)\n")
        print(format_table(rep))
        print(format_table(rep, "with_image"))
        if "against" in rep:
            print(format_against(rep))
    (args.out / "times.json").write_text(json.dumps(times, indent=2))
    print(json.dumps(times))


if __name__ == "__main__":
    main()
