"""``enrich evaluate``: per-attribute accuracy, macro-F1, precision and coverage for image, text, ensemble.

Runs the catalog through the *serving* code path (``Bundle.text_input`` / ``image_views`` /
``predict_*`` / ``combine``), so what is measured is what the consumer emits. Metrics per attribute and
modality:

* ``n``: products labelled for the attribute (after the bundle's taxonomy; the value may be ``other``).
* ``n_input``: of those, products the modality could see (a photo that decoded; a non-empty text).
* ``accuracy`` / ``macro_f1``: of the top prediction, over ``n_input`` (what the model does when it can look).
* ``precision``: accuracy among products whose confidence reached the bundle's threshold.
* ``coverage``: such products over ``n``: a product with no photo counts as not covered for ``image``.

``text`` is the text modality as served: the BERT model pooled with the bundle's wide TF-IDF model
(``Bundle.predict_texts``); ``image`` the image model alone; ``ensemble`` everything, fused as the bundle's
fusion fit it. ``guarded`` is what a running consumer publishes: the same fusion, with the drift guard
(``Bundle.drift_guard``, a fresh one) fed the rows in catalog order as a stream would feed it, so an attribute
whose image-text agreement has fallen below its training-time band is fused from the text alone from the
moment the guard switches it (report key ``drift_guard``: when each attribute switched, and which are switched
at the end). On traffic like validation the two are equal; under a shift the guard has seen, ``guarded`` is
what downstream gets. ``components`` reports
each text source before pooling (``text_bert``, ``text_wide``: accuracy of its top prediction), so the gain
of the pool is visible.

Which rows: ``split="auto"`` evaluates the bundle's held-out test split when the catalog is one the bundle was
trained on (by resolved path), and every row otherwise (a new catalog: e.g. photos of another size or shape).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from tqdm import tqdm

from models.augment import PhotoShape
from models.baseline import fit_predict, score
from models.bundle import Bundle
from models.compare import paired, paired_correct
from models.data import Product, read_catalog
from models.taxonomy import KAGGLE_COLUMNS
from models.text_clean import mentions, remove_words
from models.train import load_image, prefetch
from models.training.config import EvaluateConfig, fill_flag_help
from models.training.config import parse_years as parse_years  # re-exported: it lived here

log = logging.getLogger(__name__)
MODALITIES = ("image", "text", "ensemble", "guarded")


def _color_words(bundle: Bundle) -> set[str]:
    words = bundle.taxonomy.value_words("color")
    try:
        from models.catalog.synthetic import VENDOR_COLOR_NAMES

        for k in VENDOR_COLOR_NAMES:
            words.update(k.split())
    except ImportError:
        pass
    return words


def _metrics(y: np.ndarray, pred: np.ndarray, conf: np.ndarray, has: np.ndarray, thr: np.ndarray
             ) -> dict[str, Any]:
    n = len(y)
    m = has
    if m.sum() == 0:
        return {"n": n, "n_input": 0, "accuracy": 0.0, "macro_f1": 0.0, "precision": 0.0, "coverage": 0.0}
    correct = pred[m] == y[m]
    covered = conf[m] >= thr[m]
    return {
        "n": int(n),
        "n_input": int(m.sum()),
        "accuracy": float(accuracy_score(y[m], pred[m])),
        "macro_f1": float(f1_score(y[m], pred[m], average="macro", labels=np.unique(y[m]))),
        "precision": float(correct[covered].mean()) if covered.any() else 0.0,
        "coverage": float(covered.sum() / max(1, n)),
    }


@dataclass
class Served:
    """What a bundle's serving path made of each row: model text, mentions, text and image probabilities."""

    texts: list[str]
    mentioned: list[dict[str, bool]]
    text_parts: list[dict[str, dict[str, np.ndarray]]]
    text_probs: list[dict[str, np.ndarray]]
    image_probs: list[dict[str, np.ndarray] | None]
    #: per row, the attributes the drift guard had switched to text-only fusion when the row was fused
    text_only: list[frozenset[str]] = field(default_factory=list)
    #: the guard's switches over the rows: ``{"row", "attribute", "text_only", "agreement", "band_low", ...}``
    guard_switches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def has_image(self) -> np.ndarray:
        return np.array([p is not None for p in self.image_probs])

    def answers(self, b: Bundle, attr: str, rows: np.ndarray, modality: str) -> dict[str, np.ndarray]:
        """``pred``, ``conf``, ``has`` (the modality had input) and ``thr`` (the threshold of the fusion mode
        used) for ``rows``, through ``b.ensemble.fuse`` exactly as :meth:`Bundle.combine` serves them
        (``guarded``: with the text-only attributes the drift guard had switched at that row)."""
        pred = np.zeros(len(rows), dtype=np.int64)
        conf = np.zeros(len(rows))
        has = np.zeros(len(rows), dtype=bool)
        thr = np.ones(len(rows))
        for j, i in enumerate(rows):
            tp = self.text_probs[i].get(attr) if self.text_probs[i] and modality != "image" else None
            ip = self.image_probs[i].get(attr) if self.image_probs[i] and modality != "text" else None
            if tp is None and ip is None:
                continue
            guarded = modality == "guarded" and bool(self.text_only) and attr in self.text_only[i]
            fused, mode = b.ensemble.fuse(attr, tp, ip, self.mentioned[i].get(attr, True), text_only=guarded)
            pred[j], conf[j], has[j] = int(fused.argmax()), float(fused.max()), True
            thr[j] = b.threshold(attr, mode)
        return {"pred": pred, "conf": conf, "has": has, "thr": thr}


def serve_rows(b: Bundle, rows: Sequence[Product], strip_words: set[str], progress: bool,
               photo_shape: str | None = None) -> Served:
    """Run ``rows`` through ``b``'s serving path (text cleaning, both text sources, photos decoded at the
    bundle's size). Photos are decoded in a background thread while the CNN runs. ``photo_shape``
    (``squash`` | ``letterbox``, ``models.augment.PhotoShape``) first turns every photo into its 3:4 version,
    squashed or letterboxed: the photo-shape shift check."""
    shape = PhotoShape(photo_shape) if photo_shape else None

    def txt(p: Product) -> str:
        t = b.text_input(p.title, p.description, p.brand)
        return remove_words(t, strip_words) if strip_words else t

    texts = [txt(p) for p in rows]
    text_parts = b.predict_text_parts(texts)

    def views(p: Product) -> Any:
        im = load_image(p.image_path, b.image_decode_size)
        if im is not None and shape is not None:
            im = shape.apply(im)
        return None if im is None else b.image_views(im)

    image_probs: list[dict[str, np.ndarray] | None] = [None] * len(rows)
    chunk = 64
    starts = list(range(0, len(rows), chunk))
    results = prefetch(lambda s: [views(p) for p in rows[s : s + chunk]], starts)
    for s, vs in tqdm(zip(starts, results, strict=True), total=len(starts), desc="images", disable=not progress):
        idx = [s + i for i, v in enumerate(vs) if v is not None]
        if idx:
            for i, pr in zip(idx, b.predict_images([vs[i - s] for i in idx]), strict=True):
                image_probs[i] = pr
    text_probs = [b.pool_text(tp) if tp else {} for tp in text_parts]
    mentioned = [b.mentioned(t) for t in texts]
    text_only, switches = replay_guard(b, text_probs, image_probs, mentioned)
    return Served(texts, mentioned, text_parts, text_probs, image_probs, text_only, switches)


def replay_guard(b: Bundle, text_probs: Sequence[dict[str, np.ndarray]],
                 image_probs: Sequence[dict[str, np.ndarray] | None], mentioned: Sequence[dict[str, bool]],
                 ) -> tuple[list[frozenset[str]], list[dict[str, Any]]]:
    """Feed a fresh drift guard the rows in order, as ``consumer.stages.enricher`` does (observe a product,
    then fuse it with the attributes switched at that moment). Returns each row's text-only attributes and
    the switches (``GuardChange.to_json`` with the row index)."""
    guard = b.drift_guard()
    text_only: list[frozenset[str]] = []
    switches: list[dict[str, Any]] = []
    for i, (tp, ip) in enumerate(zip(text_probs, image_probs, strict=True)):
        if ip is not None:
            switches.extend({"row": i, **ch.to_json()} for ch in guard.observe(tp, [ip], mentioned[i]))
        text_only.append(frozenset(guard.text_only_attributes()))
    return text_only, switches


def evaluate_command(config: EvaluateConfig | None = None, /, **options: Any) -> dict[str, Any]:
    """Evaluate a bundle on a Kaggle-format catalog; returns (and optionally writes) the JSON report.

    ``config`` (an :class:`EvaluateConfig`) and/or keyword options (its field names: ``bundle``, ``catalog``,
    ``json_out``, ...); every option and its help is declared once, in ``models/training/config.py``. CLI
    (``enrich evaluate``), one flag per option (``--json`` is ``json_out``)::

{FLAGS}

    Rows scored: the bundle's own split (``split`` in its manifest: the product-id hash, or ``year`` for a
    bundle trained on the time split, whose test rows are the latest catalogue years).

    Report shape: ``{"attributes": {ATTR: {"image"|"text"|"ensemble"|"guarded": {"n", "n_input", "accuracy",
    "macro_f1", "precision", "coverage"}}}, "subsets": {"with_image": {...same...}, "unmentioned_with_image":
    {...same: products with a photo whose text names none of the attribute's values...}},
    "baselines": {"tfidf_logreg": {ATTR: {...}}}, "components": {ATTR: {"text_bert"|"text_wide": {"n_input",
    "accuracy", "with_image": {...}}}}, "comparisons": {ATTR: {"ensemble_vs_text" | "ensemble_vs_tfidf_logreg" |
    "ensemble_vs_image_with_image" | "ensemble_vs_text_with_image" | "guarded_vs_text" | "guarded_vs_ensemble" |
    "guarded_vs_image_with_image": {"n", "a_only_right", "b_only_right", "p_value"}}}, "drift_guard":
    {"watched", "order", "switches", "text_only_at_end"}, "bundle": {...}}``; fractions in 0..1 (``a`` is the
    first named; p: exact McNemar test). With
    ``against``: ``"against": {"bundle", "same_split", "attributes": {ATTR: {"n", "accuracy_a", "accuracy_b",
    "a_only_right", "b_only_right", "p_value", "with_image": {...same...}, "modalities": {"image"|"text":
    {...same...}}}}}`` (``a``: this bundle; modalities: top-1 answers of each single model).
    """
    cfg = dataclasses.replace(config, **options) if config is not None else EvaluateConfig(**options)
    t0 = time.monotonic()
    b = Bundle.load(cfg.bundle, device=cfg.device)
    cat_path = Path(cfg.catalog)
    if cat_path.is_dir():
        cat_path = cat_path / "styles.csv"
    products = read_catalog(cat_path, [a for a in b.attributes if a not in KAGGLE_COLUMNS])  # add-heads' columns
    spec = b.spec.split
    split = cfg.split
    if split == "auto":
        split = "test" if str(cat_path.resolve()) in _training_catalogs(b) else "all"
    rows = products if split == "all" else [p for p in products if spec.of(p.id, p.year) == split]
    wanted_years = cfg.year_set
    if wanted_years is not None:
        rows = [p for p in rows if p.year in wanted_years]
    if cfg.max_products:
        rows = rows[:cfg.max_products]
    words = _color_words(b) if cfg.strip_color_words else set()
    served = serve_rows(b, rows, words, cfg.progress, cfg.photo_shape)
    texts, text_parts = served.texts, served.text_parts
    has_img = served.has_image
    has_txt = np.array([bool(t) for t in served.text_probs])

    report: dict[str, Any] = {"attributes": {}, "subsets": {"with_image": {"attributes": {}},
                                                            "unmentioned_with_image": {"attributes": {}}},
                              "baselines": {}, "components": {}, "comparisons": {}}
    preds: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    confusions: dict[str, tuple[np.ndarray, list[str]]] = {}
    attrs = [a for a in b.attributes if not cfg.attributes or a in cfg.attributes]
    for a in attrs:
        att = b.taxonomy.attributes[a]
        y_all = np.array([att.encode(p.labels.get(a)) for p in rows])
        lab = np.nonzero(y_all >= 0)[0]
        y = y_all[lab]
        out = {mod: served.answers(b, a, lab, mod) for mod in MODALITIES}
        report["attributes"][a] = {m: _metrics(y, **out[m]) for m in MODALITIES}
        sub = has_img[lab]
        value_words = b.mention_words.get(a) or frozenset(b.taxonomy.value_words(a))
        unm = sub & np.array([not mentions(texts[i], value_words) for i in lab], dtype=bool)
        for name, rows_mask in (("with_image", sub), ("unmentioned_with_image", unm)):
            report["subsets"][name]["attributes"][a] = {
                m: _metrics(y[rows_mask], **{k: v[rows_mask] for k, v in out[m].items()}) for m in MODALITIES
            }
        curves[a] = {}
        for m in MODALITIES:
            c, ok = out[m]["conf"], out[m]["has"]
            order = np.argsort(-c)
            correct = (out[m]["pred"] == y)[order] & ok[order]
            k = np.arange(1, len(order) + 1)
            curves[a][m] = (k / max(1, len(y)), np.cumsum(correct) / k)
        comp: dict[str, Any] = {}
        for src in ("bert", "wide"):
            got = [(j, text_parts[i][src][a]) for j, i in enumerate(lab)
                   if text_parts[i] and src in text_parts[i] and a in text_parts[i][src]]
            if got:
                jj = np.array([j for j, _ in got])
                ok = np.array([int(np.argmax(p)) for _, p in got]) == y[jj]
                wi = sub[jj]
                comp[f"text_{src}"] = {"n_input": len(jj), "accuracy": float(ok.mean()),
                                       "with_image": {"n_input": int(wi.sum()),
                                                      "accuracy": float(ok[wi].mean()) if wi.any() else 0.0}}
        report["components"][a] = comp
        # a modality without input answered nothing (-1), so it is wrong there
        answered = {m: np.where(out[m]["has"], out[m]["pred"], -1) for m in MODALITIES}
        preds[a] = (lab, y, answered["ensemble"])
        report["comparisons"][a] = {
            "ensemble_vs_text": paired(y, answered["ensemble"], answered["text"]),
            "ensemble_vs_image_with_image": paired(y, answered["ensemble"], answered["image"], sub),
            "ensemble_vs_text_with_image": paired(y, answered["ensemble"], answered["text"], sub),
            "guarded_vs_text": paired(y, answered["guarded"], answered["text"]),
            "guarded_vs_ensemble": paired(y, answered["guarded"], answered["ensemble"]),
            "guarded_vs_image_with_image": paired(y, answered["guarded"], answered["image"], sub),
        }
        e = out["ensemble"]
        confusions[a] = (confusion_matrix(y[e["has"]], e["pred"][e["has"]], labels=np.arange(len(att.values))),
                         att.values)

    if cfg.baseline:
        train_rows = [p for p in products if spec.of(p.id, p.year) == "train"]
        if split in ("all", "train") or not train_rows:
            log.warning("baseline skipped: needs a held-out split of a training catalog")
        else:
            bl: dict[str, Any] = {}
            bl_img: dict[str, Any] = {}
            tr_titles = [remove_words(p.title, words) if words else p.title for p in train_rows]
            te_titles = [remove_words(p.title, words) if words else p.title for p in rows]
            for a in attrs:
                att = b.taxonomy.attributes[a]
                ytr = np.array([att.encode(p.labels.get(a)) for p in train_rows])
                yte = np.array([att.encode(p.labels.get(a)) for p in rows])
                pred = fit_predict(tr_titles, ytr, te_titles)
                bl[a] = score(pred, yte)
                rows_a, y_a, ens_a = preds[a]
                if pred is not None:
                    report["comparisons"][a]["ensemble_vs_tfidf_logreg"] = paired(y_a, ens_a, pred[rows_a])
                bl_img[a] = score(pred, np.where(has_img, yte, -1))
            report["baselines"]["tfidf_logreg"] = bl
            report["subsets"]["with_image"]["baselines"] = {"tfidf_logreg": bl_img}

    if cfg.against:
        report["against"] = compare_bundles(b, served, Bundle.load(cfg.against, device=cfg.device), rows, attrs,
                                            cfg.strip_color_words, cfg.progress)
    report["bundle"] = {
        "path": cfg.bundle, "name": b.name, "version": b.version, "attributes": b.attributes,
        "thresholds": b.thresholds,
    }
    report["drift_guard"] = {"watched": b.drift_guard().attributes, "order": "catalog",
                             "switches": served.guard_switches,
                             "text_only_at_end": sorted(served.text_only[-1]) if served.text_only else []}
    report["catalog"] = {"path": str(cat_path), "split": split, "rows": len(rows),
                         "with_image": int(has_img.sum()), "with_text": int(has_txt.sum()),
                         "strip_color_words": cfg.strip_color_words, "photo_shape": cfg.photo_shape,
                         "split_method": spec.method, "years": cfg.years}
    report["seconds"] = round(time.monotonic() - t0, 1)
    json_out = cfg.json_out
    plot_dir = Path(cfg.plots) if cfg.plots else (Path(json_out).with_name(Path(json_out).stem + "_plots")
                                                  if json_out else None)
    if plot_dir is not None:
        write_plots(plot_dir, curves, confusions, report)
        report["plots"] = str(plot_dir)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(report, indent=2))
    return report


fill_flag_help(evaluate_command, EvaluateConfig)


def _training_catalogs(b: Bundle) -> list[str]:
    """Resolved ``styles.csv`` paths of every catalog the bundle learnt from with its split: ``enrich train``'s,
    and ``enrich add-heads``' when it used the bundle's split seed (so their test rows are held out too)."""
    resolved = {Path(c).resolve() for c in b.spec.catalogs_on_split()}
    return sorted(str(p / "styles.csv" if p.is_dir() else p) for p in resolved)


def _trained_on(b: Bundle) -> tuple[Any, list[str]]:
    """The split and the training catalogs (resolved): two bundles with the same hold out the same rows."""
    return b.manifest.get("split"), _training_catalogs(b)


def compare_bundles(a: Bundle, served_a: Served, b: Bundle, rows: Sequence[Product], attrs: Sequence[str],
                    strip_color_words: bool, progress: bool) -> dict[str, Any]:
    """Bundle ``a`` (the one evaluated) against bundle ``b`` on the same rows: the ensemble's accuracy of each,
    and the products only one of them gets right with the exact McNemar p-value; the same for each single
    modality (``modalities``: the image model on the products both could see a photo of, the text model on
    those both had a text for, top-1 answers), so a new image model is judged apart from the fusion on top.

    Why: before rolling out a new bundle the ML team asks whether it beats the one serving now on products
    neither was trained on, and whether a gap of a few products means anything. Each bundle is scored in its
    own taxonomy (a value merged into ``other`` by one and kept by the other is right for both when each
    says its own form), and a product neither bundle could answer counts as wrong for it. When the two were
    trained on different splits or catalogs the rows may include ``b``'s training products:
    ``same_split`` says so and a warning is logged.
    """
    same_split = _trained_on(a) == _trained_on(b)
    if not same_split:
        log.warning("bundle %s was trained on another split or catalog: some of these rows may be in its "
                    "training data, which flatters it", b.path)
    served_b = serve_rows(b, rows, _color_words(b) if strip_color_words else set(), progress)
    out: dict[str, Any] = {"bundle": {"path": str(b.path), "name": b.name, "version": b.version},
                           "same_split": same_split, "attributes": {}}
    for attr in attrs:
        if attr not in b.attributes:
            continue
        y_a = np.array([a.taxonomy.attributes[attr].encode(p.labels.get(attr)) for p in rows])
        y_b = np.array([b.taxonomy.attributes[attr].encode(p.labels.get(attr)) for p in rows])
        lab = np.nonzero((y_a >= 0) & (y_b >= 0))[0]
        ea, eb = served_a.answers(a, attr, lab, "ensemble"), served_b.answers(b, attr, lab, "ensemble")
        right_a = ea["has"] & (ea["pred"] == y_a[lab])
        right_b = eb["has"] & (eb["pred"] == y_b[lab])
        photo = served_a.has_image[lab] & served_b.has_image[lab]

        def acc(r: np.ndarray) -> float:
            return float(r.mean()) if len(r) else 0.0

        modalities: dict[str, Any] = {}
        for m in ("image", "text"):  # each single model on the rows where both bundles had its input
            ma, mb = served_a.answers(a, attr, lab, m), served_b.answers(b, attr, lab, m)
            both = ma["has"] & mb["has"]
            ra, rb = (ma["pred"] == y_a[lab])[both], (mb["pred"] == y_b[lab])[both]
            modalities[m] = {"accuracy_a": acc(ra), "accuracy_b": acc(rb), **paired_correct(ra, rb)}
        out["attributes"][attr] = {
            "accuracy_a": acc(right_a), "accuracy_b": acc(right_b), **paired_correct(right_a, right_b),
            "with_image": {"accuracy_a": acc(right_a[photo]), "accuracy_b": acc(right_b[photo]),
                           **paired_correct(right_a[photo], right_b[photo])},
            "modalities": modalities,
        }
    return out


def write_plots(out: Path, curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
                confusions: dict[str, tuple[np.ndarray, list[str]]], report: dict[str, Any]) -> None:
    """One precision-coverage PNG per attribute (3 modalities, threshold marked) and one confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for a, cs in curves.items():
        fig, ax = plt.subplots(figsize=(5, 4))
        for m, (cov, prec) in cs.items():
            ax.plot(cov, prec, label=m)
            r = report["attributes"][a][m]
            ax.scatter([r["coverage"]], [r["precision"]], marker="o")
        ax.set_xlabel("coverage")
        ax.set_ylabel("precision")
        ax.set_ylim(0, 1.01)
        ax.set_xlim(0, 1.0)
        ax.set_title(f"{a}: precision vs coverage (dot: bundle threshold)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{a}_precision_coverage.png", dpi=90)
        plt.close(fig)
    for a, (cm, values) in confusions.items():
        k = len(values)
        fig, ax = plt.subplots(figsize=(min(16, 3 + 0.22 * k), min(16, 3 + 0.22 * k)))
        norm = cm / np.maximum(1, cm.sum(1, keepdims=True))
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if k <= 60:
            ax.set_xticks(range(k), values, rotation=90, fontsize=6)
            ax.set_yticks(range(k), values, fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("label")
        ax.set_title(f"{a} (ensemble, row-normalised)")
        fig.tight_layout()
        fig.savefig(out / f"{a}_confusion.png", dpi=90)
        plt.close(fig)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def format_table(report: dict[str, Any], subset: str | None = None) -> str:
    """A Markdown table of accuracy and precision @ coverage in % per attribute and modality, plus the
    baseline (two decimals: on ~4k products one product is 0.02 points)."""
    src = report if subset is None else report["subsets"][subset]
    bl = src.get("baselines", report.get("baselines", {}) if subset is None else {}).get("tfidf_logreg", {})
    lines = ["| attribute | image acc % | text acc % | ensemble acc % | guarded acc % | TF-IDF+LR acc % "
             "| ensemble prec @ cov % |",
             "|---|---|---|---|---|---|---|"]
    for a, r in src["attributes"].items():
        base = _pct(bl[a]["accuracy"]) if "accuracy" in bl.get(a, {}) else "–"  # --no-baseline
        guarded = _pct(r["guarded"]["accuracy"]) if "guarded" in r else "–"  # reports of older versions
        lines.append(
            f"| {a} | {_pct(r['image']['accuracy'])} | {_pct(r['text']['accuracy'])} | "
            f"{_pct(r['ensemble']['accuracy'])} | {guarded} | {base} | {_pct(r['ensemble']['precision'])} @ "
            f"{_pct(r['ensemble']['coverage'])} |"
        )
    return "\n".join(lines)


def format_against(report: dict[str, Any]) -> str:
    """Markdown tables of :func:`compare_bundles`: this bundle's ensemble against the other's, then each
    single modality."""
    ag = report["against"]
    lines = [f"this bundle ({report['bundle']['version']}) vs {ag['bundle']['path']} ({ag['bundle']['version']})"
             + ("" if ag["same_split"] else " -- trained on another split: its numbers may be flattered"),
             "| attribute | model | n | this acc % | other acc % | only this right | only other right | p |",
             "|---|---|---|---|---|---|---|---|"]
    for attr, r in ag["attributes"].items():
        for model, m in (("ensemble", r), *r.get("modalities", {}).items()):
            lines.append(f"| {attr} | {model} | {m['n']} | {_pct(m['accuracy_a'])} | {_pct(m['accuracy_b'])} | "
                         f"{m['a_only_right']} | {m['b_only_right']} | {m['p_value']:.3g} |")
    return "\n".join(lines)

