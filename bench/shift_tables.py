"""Markdown tables of issue 12's acceptance check from ``bench/shift_run.py``'s reports.

    .venv/bin/python bench/shift_tables.py .cache/real12/eval

Per evaluation (photos as they are, 3:4 squashed, 3:4 letterboxed): accuracy in % of image, text, ensemble and
TF-IDF + LR (from the square run: the baseline reads titles only) on all test products and on those with a
photo, and the verdict "ensemble >= best single modality" where a deficit of one product counts as a tie.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _hits(m: dict[str, Any]) -> int:
    return round(m["accuracy"] * m["n_input"])


def table(rep: dict[str, Any], base: dict[str, Any]) -> str:
    bl_all = base.get("baselines", {}).get("tfidf_logreg", {})
    bl_img = base["subsets"]["with_image"].get("baselines", {}).get("tfidf_logreg", {})
    lines = ["| attribute | n (with photo) | image | text | **ensemble** | TF-IDF+LR | with photo: text / "
             "**ensemble** / TF-IDF | ensemble vs best single (products, all / with photo) | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a, r in rep["attributes"].items():
        w = rep["subsets"]["with_image"]["attributes"][a]
        ens, txt = r["ensemble"], r["text"]
        d_all = _hits(ens) - _hits(txt)  # over all products only the text is a full modality
        best_w = max(_hits(w["text"]), _hits(w["image"]))
        d_img = _hits(w["ensemble"]) - best_w
        ok = d_all >= -1 and d_img >= -1
        b = bl_all.get(a, {}).get("accuracy")
        bw = bl_img.get(a, {}).get("accuracy")
        lines.append(
            f"| {a} | {r['ensemble']['n']} ({w['ensemble']['n']}) | {100 * r['image']['accuracy']:.2f} | "
            f"{100 * txt['accuracy']:.2f} | **{100 * ens['accuracy']:.2f}** | "
            f"{'–' if b is None else f'{100 * b:.2f}'} | {100 * w['text']['accuracy']:.2f} / "
            f"**{100 * w['ensemble']['accuracy']:.2f}** / {'–' if bw is None else f'{100 * bw:.2f}'} | "
            f"{d_all:+d} / {d_img:+d} | {'met' if ok else '**not met**'} |")
    return "\n".join(lines)


def main() -> None:
    d = Path(sys.argv[1])
    base = json.loads((d / "square.json").read_text())
    for tag in ("square", "squash", "letterbox", "no_color_words", "no_color_words_letterbox"):
        f = d / f"{tag}.json"
        if f.exists():
            rep = json.loads(f.read_text())
            print(f"### {tag} ({rep['catalog']['rows']} rows, {rep['catalog']['with_image']} with a photo, "
                  f"{rep['seconds']:.0f} s)\n")
            print(table(rep, rep if tag.startswith("no_color") else base) + "\n")


if __name__ == "__main__":
    main()
