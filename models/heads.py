"""``enrich add-heads``: heads for new attributes on a trained bundle's frozen trunks.

Why: a retailer asks for a new attribute (sleeve length, neckline, a pattern column a new vendor feed
carries) long after the catalog model shipped. Retraining both trunks for it costs hours and moves every
existing attribute's answers, which downstream services would see as churn. ShopRunner's multi-task design
exists for this case: the shared trunk already encodes the product; a new attribute is one more head.

How: both models run in eval mode over the new catalog up to their dense layer (the features every head
reads; frozen-bottom caches are shared with ``enrich train`` when given its ``--work-dir``), and each new
head is a multinomial logistic regression on those features (scikit-learn; its strength chosen by
validation log-loss), folded into an ``nn.Linear``. The wide TF-IDF text model gets a head on its existing
vocabularies. Then the text pool, the text + image fusion and the thresholds of the new attributes are fitted
on the catalog's validation rows exactly as ``enrich train`` fits them. Every existing head, pool, fusion and
threshold is copied unchanged (the tests pin this), so the new bundle answers the old attributes exactly as
the base bundle did, and the manifest records the base version under ``heads_added``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from models.bundle import ENCODER_DIR, Bundle, resolve_device, save_bundle
from models.data import SplitSpec, read_catalog, sample_products
from models.ensemble import Ensemble
from models.taxonomy import KAGGLE_COLUMNS, Taxonomy, check_attribute_names
from models.train import TaskData, cached_datasets, embed_dataset, fit_ensemble, unmentioned_text_probs
from models.training.config import AddHeadsConfig, fill_flag_help
from models.wide import class_params

log = logging.getLogger(__name__)

#: inverse L2 strengths tried for each new head; the one with the lowest validation log-loss is kept. On the
#: real catalog the image head chose 0.01 and the text head 0.1 out of 0.01-10, and C=10 fits were the slowest
#: (lbfgs on 33k x 512 features), so the grid spans 0.001-1.
HEAD_C_GRID = (0.001, 0.01, 0.1, 1.0)


def _features(model: torch.nn.Module, ds: Sequence[TaskData], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Dense-layer features and labels of several datasets of one modality, stacked."""
    if not ds:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0, 0), dtype=np.int64)
    return np.concatenate([embed_dataset(model, d, device) for d in ds]), np.concatenate([d.labels for d in ds])


def fit_head(z_train: np.ndarray, y_train: np.ndarray, z_val: np.ndarray, y_val: np.ndarray, n_classes: int,
             grid: Sequence[float] = HEAD_C_GRID, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """One head as a multinomial logistic regression on frozen features; returns ``(weight, bias, info)``.

    Features are standardised for the solver and the scaling is folded back into the weights, so the head
    reads the raw dense output like every other head. ``C`` is chosen on the validation rows when there are
    at least 20 of them with two or more classes (else the middle of the grid). Rows labelled ``-1`` are left out.
    """
    tr, va = y_train >= 0, y_val >= 0
    x, y = z_train[tr].astype(np.float64), y_train[tr]
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    xv, yv = (z_val[va].astype(np.float64) - mu) / sd, y_val[va]
    choose = len(yv) >= 20 and len(np.unique(yv)) >= 2
    best: tuple[float, float, LogisticRegression] | None = None
    scores: dict[str, float] = {}
    t0 = time.monotonic()
    # one estimator along the grid in increasing C, each fit starting from the last solution (warm start)
    fitter = LogisticRegression(max_iter=1000, warm_start=True, random_state=seed)
    for c in sorted(grid) if choose else (grid[len(grid) // 2],):
        clf = fitter.set_params(C=c).fit(xs, y)
        loss = math.nan
        if choose:
            p = np.full((len(yv), n_classes), 1e-12)
            p[:, clf.classes_] = clf.predict_proba(xv)
            loss = float(log_loss(yv, p / p.sum(1, keepdims=True), labels=list(range(n_classes))))
            scores[str(c)] = round(loss, 5)
        if best is None or loss < best[0]:
            best = (loss, c, copy.deepcopy(clf))
    assert best is not None
    _, c, clf = best
    coef, icpt = class_params(clf, n_classes)
    w = coef / sd[None, :].astype(np.float32)
    b = icpt - (coef * (mu / sd)[None, :]).sum(1).astype(np.float32)  # absent classes: zero rows, bias -30
    val_acc = float((clf.predict(xv) == yv).mean()) if len(yv) else math.nan
    info = {"rows": int(tr.sum()), "val_rows": int(va.sum()), "c": c, "val_log_loss": scores,
            "val_accuracy": None if math.isnan(val_acc) else round(val_acc, 4),
            "fit_seconds": round(time.monotonic() - t0, 1)}
    return torch.from_numpy(w.astype(np.float32)), torch.from_numpy(b.astype(np.float32)), info


def add_heads_command(config: AddHeadsConfig | None = None, /, **options: Any) -> dict[str, Any]:
    """Write a copy of ``bundle`` with heads for ``attributes`` trained on ``catalog``; returns a summary.

    ``config`` (an :class:`AddHeadsConfig`) and/or keyword options (its field names: ``bundle``, ``catalog``,
    ``out``, ``attributes``, ...); every option and its help is declared once, in
    ``models/training/config.py``. CLI (``enrich add-heads``), one flag per option::

{FLAGS}
    """
    cfg = dataclasses.replace(config, **options) if config is not None else AddHeadsConfig(**options)
    t0 = time.monotonic()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    wanted = list(dict.fromkeys(cfg.attributes))  # at least one: AddHeadsConfig refuses none
    check_attribute_names(wanted)
    out_dir, base_dir = Path(cfg.out), Path(cfg.bundle)
    if out_dir.resolve() == base_dir.resolve():
        raise ValueError("--out must differ from --bundle: a bundle is never modified in place (its version is "
                         "a content hash that deployments pin)")
    dev = resolve_device(cfg.device)
    base = Bundle.load(base_dir, device=str(dev))
    existing = [a for a in wanted if a in base.attributes]
    if existing and not cfg.replace:
        raise ValueError(f"the bundle already has {', '.join(existing)}; pass --replace to retrain those heads")
    man = base.manifest
    base_split = base.spec.split
    split_seed = base_split.seed if cfg.seed is None else cfg.seed
    split_spec = SplitSpec(base_split.method, split_seed, base_split.fractions, base_split.val_from,
                           base_split.test_from)

    # 1. data and the new attributes' taxonomy
    prods = sample_products(read_catalog(cfg.catalog, [a for a in wanted if a not in KAGGLE_COLUMNS]),
                            cfg.max_products, split_seed)
    split = split_spec.split(prods)
    new_tax = Taxonomy.build([p.labels for p in split["train"]], wanted, min_count=cfg.min_class_count)
    unusable = [a for a in wanted if a not in new_tax.attributes]
    if unusable:
        raise ValueError(f"{', '.join(unusable)}: fewer than two values with at least {cfg.min_class_count} labelled "
                         f"training rows in {cfg.catalog} (is the column there? lower --min-class-count?)")
    names = new_tax.names
    ncls = new_tax.num_classes()
    models = {k: m for k, m in (("image", base.image_model), ("text", base.text_model)) if m is not None}
    for a in names:  # fresh heads; the trunks, dense layers and other heads stay as they are
        for model in models.values():
            model.add_head(a, ncls[a], replace=True)

    # 2. frozen features (bottom caches shared with `enrich train`), then one linear head per attribute
    work = Path(cfg.work_dir) if cfg.work_dir else out_dir.with_name(out_dir.name + ".work")
    cache_dir = work / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    training = man.get("training", {})
    text_source = str(training.get("text_encoder_source") or base_dir / ENCODER_DIR)
    backbone = (man.get("image") or {}).get("backbone", {})
    image_source = f"{backbone.get('name')}-{backbone.get('top_blocks', 1)}"
    data = cached_datasets([split], new_tax, base.text_model, base.tokenizer, base.text_max_len, text_source,
                           base.image_model, base.preprocess, image_source, dev, cache_dir, cfg.progress)
    t_cache = time.monotonic() - t0
    head_info: dict[str, dict[str, Any]] = {a: {} for a in names}
    t_features: dict[str, float] = {}
    for kind, model in models.items():
        t_f = time.monotonic()
        z_tr, y_tr = _features(model, [d for d in data["train"] if d.kind == kind], dev)
        z_va, y_va = _features(model, [d for d in data["val"] if d.kind == kind], dev)
        t_features[kind] = round(time.monotonic() - t_f, 1)
        for j, a in enumerate(names):
            if not len(y_tr) or len(np.unique(y_tr[:, j][y_tr[:, j] >= 0])) < 2:
                del model.heads[a]  # no head rather than an untrained one: serving then fuses without it
                head_info[a][kind] = {"rows": 0 if not len(y_tr) else int((y_tr[:, j] >= 0).sum()),
                                      "note": f"no {kind} head: fewer than two values labelled on its rows"}
                continue
            w, b, info = fit_head(z_tr, y_tr[:, j], z_va, y_va[:, j], ncls[a], seed=split_seed)
            with torch.no_grad():
                model.heads[a].weight.copy_(w)
                model.heads[a].bias.copy_(b)
            head_info[a][kind] = info
            log.info("head %s/%s: %s", kind, a, info)
    t_heads = time.monotonic() - t0 - t_cache
    headless = [a for a in names if not any(a in m.heads for m in models.values())]
    if headless:
        raise ValueError(f"{', '.join(headless)}: no product with a text or a photo has two or more of its values "
                         "labelled; nothing to train a head on")

    # 3. the wide model's heads, on its existing vocabularies
    wide = base.wide if cfg.linear_text else None
    if base.wide is not None:
        for a in existing:
            base.wide.heads.pop(a, None)  # a replaced attribute's old head has the old classes
    tr_text = [d for d in data["train"] if d.kind == "text" and len(d.ids)]
    if wide is not None and tr_text:
        wide.fit_heads([t for d in tr_text for t in d.texts], np.concatenate([d.labels for d in tr_text]), names,
                       ncls, c=cfg.linear_c)

    # 4. pools, fusion, thresholds for the new attributes only (validation rows), merged into the base's
    mention_attrs = [a.strip() for a in cfg.mention_fusion.split(",") if a.strip() in names]
    unmentioned: dict[str, Any] = {}
    if base.text_model is not None and mention_attrs:
        unmentioned = unmentioned_text_probs(base.text_model, base.tokenizer, base.text_max_len, data["val"],
                                             new_tax, base.wide, dev, mention_attrs, progress=cfg.progress)
    ens, thresholds, val_metrics, text_fusion, drift = fit_ensemble(
        models, data["val"], new_tax, dev, cfg.target_precision, wide=base.wide, unmentioned=unmentioned)
    taxonomy = Taxonomy({**base.taxonomy.attributes, **new_tax.attributes})
    ensemble = Ensemble({**base.ensemble.params, **ens.params})
    pools = {a: p for a, p in base.text_fusion.items() if a not in names} | text_fusion
    mention_words = {a: w for a, w in (man.get("mention_words") or {}).items() if a not in names}
    mention_words |= {a: sorted(u.words) for a, u in unmentioned.items()}
    metrics = dict(man.get("metrics") or {})
    metrics["validation"] = {**(metrics.get("validation") or {}), **val_metrics}
    record = {
        "base": {"name": base.name, "version": base.version}, "catalog": cfg.catalog, "attributes": names,
        "replaced": existing, "split_seed": split_seed, "heads": head_info, "max_products": cfg.max_products,
        "target_precision": cfg.target_precision, "linear_text": wide is not None, "linear_c": cfg.linear_c,
        "mention_fusion": cfg.mention_fusion,
        "seconds": {"cache": round(t_cache, 1), "features": t_features, "heads": round(t_heads, 1),
                    "total": round(time.monotonic() - t0, 1)},
    }
    keep = {k: man[k] for k in ("split", "training", "photo_shapes") if k in man}
    keep["drift"] = {a: d for a, d in (man.get("drift") or {}).items() if a not in names} | drift
    version = save_bundle(
        out_dir, name=cfg.name or base.name, taxonomy=taxonomy, image_model=base.image_model,
        image_preprocess=base.preprocess, image_backbone=backbone, text_model=base.text_model,
        encoder_dir=base_dir / ENCODER_DIR, text_max_len=base.text_max_len, ensemble=ensemble,
        thresholds={**base.thresholds, **thresholds}, metrics=metrics, wide=base.wide, text_fusion=pools,
        extra={**keep, "mention_words": mention_words, "heads_added": [*man.get("heads_added", []), record]},
    )
    return {"bundle": str(out_dir), "version": version, "base_version": base.version, "added": names,
            "replaced": existing, "heads": head_info, "validation": {a: val_metrics[a] for a in names},
            "seconds": round(time.monotonic() - t0, 1)}


fill_flag_help(add_heads_command, AddHeadsConfig)


def summary_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(attribute, modality, "C, validation accuracy")`` rows for the CLI's table."""
    rows = []
    for a, kinds in summary["heads"].items():
        for kind, info in kinds.items():
            acc = info.get("val_accuracy")
            rows.append((a, kind, info.get("note") or f"C={info['c']:g}, validation accuracy "
                         f"{'–' if acc is None else f'{100 * acc:.2f}%'} on {info['val_rows']} rows"))
    return rows
