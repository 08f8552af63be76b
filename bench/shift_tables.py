"""Markdown tables of issue 12's acceptance check from ``bench/shift_run.py``'s reports.

    .venv/bin/python bench/shift_tables.py .cache/real12/eval

Per evaluation (photos as they are, 3:4 squashed, 3:4 letterboxed): accuracy in % of image, text, ensemble and
TF-IDF + LR (from the square run: the baseline reads titles only) on all test products and on those with a
photo, and the verdict "ensemble >= best single modality" where a deficit of one product counts as a tie; then
the same for ``guarded`` (what the consumer publishes: the fusion with the drift guard replayed in catalog
order), when the report has it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _hits(m: dict[str, Any]) -> int:
    return round(m["accuracy"] * m["n_input"])


def _verdict(r: dict[str, Any], w: dict[str, Any], model: str) -> tuple[int, int, bool]:
    """Products ``model`` is ahead of the text over all products and of the best single modality over the
    products with a photo, and whether both are within the one-product tie."""
    d_all = _hits(r[model]) - _hits(r["text"])  # over all products only the text is a full modality
    d_img = _hits(w[model]) - max(_hits(w["text"]), _hits(w["image"]))
    return d_all, d_img, d_all >= -1 and d_img >= -1


def table(rep: dict[str, Any], base: dict[str, Any]) -> str:
    bl_all = base.get("baselines", {}).get("tfidf_logreg", {})
    bl_img = base["subsets"]["with_image"].get("baselines", {}).get("tfidf_logreg", {})
    guarded = all("guarded" in r for r in rep["attributes"].values())
    lines = ["| attribute | n (with photo) | image | text | **ensemble** | TF-IDF+LR | with photo: text / "
             "**ensemble** / TF-IDF | ensemble vs best single (products, all / with photo) | verdict |"
             + (" guarded (all / with photo) | guarded vs best single | verdict |" if guarded else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if guarded else "")]
    for a, r in rep["attributes"].items():
        w = rep["subsets"]["with_image"]["attributes"][a]
        ens, txt = r["ensemble"], r["text"]
        d_all, d_img, ok = _verdict(r, w, "ensemble")
        b = bl_all.get(a, {}).get("accuracy")
        bw = bl_img.get(a, {}).get("accuracy")
        line = (
            f"| {a} | {r['ensemble']['n']} ({w['ensemble']['n']}) | {100 * r['image']['accuracy']:.2f} | "
            f"{100 * txt['accuracy']:.2f} | **{100 * ens['accuracy']:.2f}** | "
            f"{'–' if b is None else f'{100 * b:.2f}'} | {100 * w['text']['accuracy']:.2f} / "
            f"**{100 * w['ensemble']['accuracy']:.2f}** / {'–' if bw is None else f'{100 * bw:.2f}'} | "
            f"{d_all:+d} / {d_img:+d} | {'met' if ok else '**not met**'} |")
        if guarded:
            g_all, g_img, g_ok = _verdict(r, w, "guarded")
            line += (f" {100 * r['guarded']['accuracy']:.2f} / {100 * w['guarded']['accuracy']:.2f} | "
                     f"{g_all:+d} / {g_img:+d} | {'met' if g_ok else '**not met**'} |")
        lines.append(line)
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
            dg = rep.get("drift_guard")
            if dg:
                print("drift guard: " + (", ".join(f"{x['attribute']} to {'text' if x['text_only'] else 'fusion'} "
                                                   f"at row {x['row']} (agreement {x['agreement']}, band low "
                                                   f"{x['band_low']})" for x in dg["switches"]) or "no switch")
                      + "\n")


if __name__ == "__main__":
    main()
