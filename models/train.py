"""``enrich train``: multi-data multi-task training of the image and text models, fusion and thresholds.

Pipeline (each step resumable from ``--work-dir``):

1. Read every catalog (Kaggle format; the synthetic catalog is the same format with extra columns). Each
   catalog gives a *text* dataset (rows with text) and an *image* dataset (rows with a readable photo); each is
   labelled for the attributes its columns carry. Products are split train/val/test by a seeded hash of the
   product id, so no product is in two splits for any task.
2. Build the taxonomy from the training rows (rare values merged into ``other``).
3. Cache the frozen bottoms' outputs once: the CNN bottom over both views of every photo, the BERT bottom
   layers over every text. On 2 CPU cores this is what makes fine-tuning the tops affordable.
4. Train the image top + heads and the text top layers + wide branch + heads in one loop: batches are drawn
   across all datasets with weights (``MultiDatasetSampler``), each batch's loss is the weighted sum of the
   masked per-task losses. Best epoch per model by validation loss; a checkpoint after every epoch.
5. Fit the wide text model (TF-IDF word + char n-grams, logistic regression per attribute) on the training
   rows' texts.
6. On validation: pool BERT + wide into the served text probabilities, fuse text + image per input mode (each
   pool chosen by cross-validation on the validation rows, see ``models.ensemble.select_pool``), choose
   per-attribute thresholds for a target precision, record metrics; write the bundle (safetensors + JSON).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.augment import PhotoAugment, PhotoShape
from models.bundle import resolve_device, save_bundle
from models.data import Product, SplitSpec, common_years, read_catalog, sample_products
from models.image_model import ImagePreprocess, MultiTaskImageModel, build_backbone
from models.taxonomy import KAGGLE_COLUMNS, Taxonomy, check_attribute_names
from models.text_model import MultiTaskTextModel, default_encoder_dir, load_encoder, load_tokenizer
from models.training.checkpoint import _load_ckpt, _save_ckpt, trained_state
from models.training.config import TrainConfig, fill_flag_help
from models.training.features import (
    TaskData,
    _add_variants,
    _image_inputs,
    _image_logits,
    _key,
    _targets,
    _text_inputs,
    _text_logits,
    cache_image_features,
    cache_text_features,
    cached_datasets,
    embed_dataset,
    encode_labels,
    load_image,
    predict_probs,
    prefetch,
)
from models.training.fusion_fit import MIN_MENTIONED_SHARE, Unmentioned, fit_ensemble, unmentioned_text_probs
from models.training.learner import _val_loss, fit_models
from models.wide import WideTextModel

__all__ = [
    "MIN_MENTIONED_SHARE", "TaskData", "Unmentioned", "_add_variants", "_image_inputs", "_image_logits", "_key",
    "_load_ckpt", "_save_ckpt", "_targets", "_text_inputs", "_text_logits", "_val_loss", "cache_image_features",
    "cache_text_features", "cached_datasets", "embed_dataset", "encode_labels", "fit_ensemble", "load_image",
    "predict_probs", "prefetch", "train_command", "train_demo_bundle", "trained_state", "unmentioned_text_probs",
]


log = logging.getLogger(__name__)

DEFAULT_ATTRIBUTES = tuple(KAGGLE_COLUMNS)


def parse_weights(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """``"color=2,season=0.5"`` -> ``{"color": 2.0, "season": 0.5}``."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k): float(v) for k, v in spec.items()}
    out: dict[str, float] = {}
    for part in spec.split(","):
        if part.strip():
            k, v = part.split("=")
            out[k.strip()] = float(v)
    return out



def train_command(config: TrainConfig | None = None, /, **options: Any) -> dict[str, Any]:
    """Train a bundle from Kaggle-format catalogs and write it to ``out``. Returns a summary dict.

    ``config`` (a :class:`TrainConfig`) and/or keyword options (its field names); every option and its help
    is declared once, in ``models/training/config.py``. CLI (``enrich train``), one flag per option::

{FLAGS}
    """
    cfg = config.replace(**options) if config is not None else TrainConfig(**options)
    t0 = time.monotonic()
    deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    dev = resolve_device(cfg.device)
    out_dir = Path(cfg.out)
    work = Path(cfg.work_dir) if cfg.work_dir else out_dir.with_name(out_dir.name + ".work")
    cache_dir = work / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)

    # 1. data
    catalogs: list[dict[str, list[Product]]] = []
    extra_labels = [a for a in cfg.attributes or () if a not in KAGGLE_COLUMNS]  # e.g. --attribute year
    check_attribute_names(extra_labels)
    val_from, test_from = cfg.split_bounds()
    split_spec = SplitSpec(cfg.split, cfg.seed, (0.8, 0.1, 0.1), val_from, test_from)
    shapes = [x.strip() for x in cfg.image_shape_views.split(",") if x.strip()]
    folds = [x.strip() for x in cfg.shift_folds.split(",") if x.strip()]
    for shape in (*shapes, *folds):
        PhotoShape(shape)  # refuses an unknown shape before any work
    for ci, c in enumerate(cfg.catalog):
        prods = sample_products(read_catalog(c, extra_labels), cfg.max_products, cfg.seed, ci)
        catalogs.append(split_spec.split(prods))
    present = {a for c in catalogs for s in c.values() for p in s for a, v in p.labels.items() if v is not None}
    wanted = [a for a in (cfg.attributes or DEFAULT_ATTRIBUTES) if a in present]
    train_rows = [p.labels for c in catalogs for p in c["train"]]
    taxonomy = Taxonomy.build(train_rows, wanted, min_count=cfg.min_class_count)
    names = taxonomy.names
    ncls = taxonomy.num_classes()
    log.info("taxonomy: %s", ncls)

    # 2. models
    backbone = build_backbone(cfg.image_backbone, pretrained=True, top_blocks=cfg.image_top_blocks,
                              weights=cfg.image_weights)
    image_model = MultiTaskImageModel(backbone, ncls, pixel_stats=cfg.image_pixel_stats).to(dev)
    preprocess = ImagePreprocess(size=cfg.image_size)
    enc_dir = Path(cfg.text_encoder) if cfg.text_encoder else default_encoder_dir()
    encoder = load_encoder(enc_dir, pretrained=True)
    text_model = MultiTaskTextModel(encoder, ncls, train_layers=cfg.text_train_layers,
                                    wide_buckets=cfg.wide_buckets).to(dev)
    tokenizer = load_tokenizer(enc_dir)
    for p in image_model.bottom.parameters():
        p.requires_grad_(False)
    for p in text_model.encoder.parameters():
        p.requires_grad_(False)
    for p in text_model.trainable_parameters():
        p.requires_grad_(True)

    # 3. caches
    augment = PhotoAugment()
    data = cached_datasets(catalogs, taxonomy, text_model, tokenizer, cfg.text_max_len, str(enc_dir), image_model,
                           preprocess, f"{cfg.image_backbone}-{cfg.image_top_blocks}", dev, cache_dir, cfg.progress,
                           image_augment=cfg.image_augment, augment=augment, seed=cfg.seed, shape_views=shapes,
                           shift_folds=folds)
    t_cache = time.monotonic() - t0

    # 4. training
    tw = parse_weights(cfg.task_weights)
    dw = parse_weights(cfg.dataset_weights)
    models = {"image": image_model, "text": text_model}
    run_key = _key(list(cfg.catalog), split_spec.to_json(), shapes, folds, names, cfg.image_backbone,
                   cfg.image_size, cfg.image_top_blocks, cfg.image_pixel_stats, str(enc_dir), cfg.text_train_layers,
                   cfg.wide_buckets, cfg.batch_size, cfg.seed, cfg.max_products, cfg.task_weights,
                   cfg.dataset_weights, cfg.lr, cfg.trunk_lr, cfg.wide_lr, cfg.select_by)
    t_train0 = time.monotonic()
    history = fit_models(models, data, names, cfg, dev, tw, dw, work / "checkpoint.safetensors", run_key, deadline)
    t_train = time.monotonic() - t_train0

    # 5. the wide text model, on the training texts (the neural models' checkpoint does not depend on it)
    t_w = time.monotonic()
    wide: WideTextModel | None = None
    tr_text = [d for d in data["train"] if d.kind == "text" and len(d.ids)]
    if cfg.linear_text and tr_text:
        wide = WideTextModel.fit([t for d in tr_text for t in d.texts], np.concatenate([d.labels for d in tr_text]),
                                 names, ncls, c=cfg.linear_c)
    t_wide = time.monotonic() - t_w

    # 6. text pool, fusion (with "-unmentioned" modes), thresholds, validation metrics
    t_u = time.monotonic()
    mention_attrs = [a.strip() for a in cfg.mention_fusion.split(",") if a.strip() in names]
    unmentioned = unmentioned_text_probs(text_model, tokenizer, cfg.text_max_len, data["val"], taxonomy, wide, dev,
                                         mention_attrs, progress=cfg.progress)
    t_unmentioned = time.monotonic() - t_u
    year_groups, year_fold = _year_groups(catalogs, data["train"]) if cfg.year_fold else ({}, None)
    ensemble, thresholds, val_metrics, text_fusion, drift = fit_ensemble(
        models, data["val"], taxonomy, dev, cfg.target_precision, wide=wide, unmentioned=unmentioned,
        year_groups=year_groups,
    )
    version = save_bundle(
        out_dir, name=cfg.name, taxonomy=taxonomy, image_model=image_model, image_preprocess=preprocess,
        image_backbone={"name": cfg.image_backbone, **backbone.spec}, text_model=text_model, encoder_dir=enc_dir,
        text_max_len=cfg.text_max_len, ensemble=ensemble, thresholds=thresholds,
        metrics={"validation": val_metrics}, wide=wide, text_fusion=text_fusion,
        extra={
            "split": split_spec.to_json(),
            "drift": drift,
            "photo_shapes": {"trained": shapes, "shift_folds": folds},
            "year_fold": year_fold,
            "mention_words": {a: sorted(u.words) for a, u in unmentioned.items()},
            "training": {
                "catalogs": [str(c) for c in cfg.catalog], "epochs_run": len(history), "history": history,
                "seconds": {"cache": round(t_cache, 1), "train": round(t_train, 1), "wide": round(t_wide, 1),
                            "unmentioned": round(t_unmentioned, 1),
                            "total": round(time.monotonic() - t0, 1)},
                "device": str(dev), "seed": cfg.seed, "target_precision": cfg.target_precision,
                "text_encoder_source": str(enc_dir), "task_weights": tw, "dataset_weights": dw,
                "max_products": cfg.max_products, "batch_size": cfg.batch_size, "select_by": cfg.select_by,
                "lr": {"heads": cfg.lr, "trunk": cfg.trunk_lr, "wide": cfg.wide_lr}, "epochs": cfg.epochs,
                "max_minutes": cfg.max_minutes, "linear_text": cfg.linear_text, "linear_c": cfg.linear_c,
                "mention_fusion": cfg.mention_fusion,
                "image_augment": {"copies": cfg.image_augment, **augment.to_json()} if cfg.image_augment else None,
                "config": cfg.to_json(),
            },
        },
    )
    summary = {"bundle": str(out_dir), "version": version, "attributes": names,
               "seconds": round(time.monotonic() - t0, 1), "epochs_run": len(history),
               "validation": val_metrics}
    return summary


def _year_groups(catalogs: Sequence[Mapping[str, Sequence[Product]]], train: Sequence[TaskData]
                 ) -> tuple[dict[tuple[int, str], str], dict[str, Any]]:
    """The validation products of rare catalogue years (``models.data.common_years`` of the years the training
    photos come from), keyed as the fusion fit keys rows, and the manifest's ``year_fold`` record."""
    year_of = {(ci, p.id): p.year for ci, c in enumerate(catalogs) for s in c.values() for p in s}
    common = common_years(year_of.get((d.catalog, i)) for d in train if d.kind == "image" for i in d.ids)
    groups = {(ci, p.id): "rare-year" for ci, c in enumerate(catalogs) for p in c["val"]
              if common and p.year is not None and p.year not in common}
    n_val = sum(len(c["val"]) for c in catalogs)
    log.info("year fold: common photo years %s, %d of %d validation products from other years",
             sorted(common), len(groups), n_val)
    return groups, {"common_years": sorted(common), "rare_year_products": len(groups), "val_products": n_val}


fill_flag_help(train_command, TrainConfig)


#: busy machine as on an idle one; ``max_minutes`` is only a safety net.
DEMO_CONFIG: dict[str, Any] = {
    "image_backbone": "efficientnet-lite0",
    "image_size": 128,
    "text_train_layers": 0,
    "text_max_len": 64,
    "wide_buckets": 1 << 15,
    "epochs": 6,
    "max_minutes": 10.0,
    "batch_size": 16,
    "lr": 2e-3,
    "min_class_count": 5,
}


#: Bump when the training code changes what a demo bundle holds (revision 2: colour ``-unmentioned`` fusion
#: modes; 3: drift bands, 3:4 letterboxed training views, shifted validation folds; 4: the year fold; 5: drift
#: bands over texts that name a value, with a gate for every attribute; 6: a fitted pool must prove its gain over
#: the best single source), so cached demo bundles are retrained
#: (``consumer.devtools.demo.ensure_demo_bundle``).
DEMO_REVISION = 6


def demo_bundle_key() -> str:
    """Identifies the demo bundle a checkout would train: its configuration and :data:`DEMO_REVISION`."""
    return _key(DEMO_REVISION, sorted(DEMO_CONFIG.items()))


def train_demo_bundle(styles: str | Path, out: str | Path, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train the demo bundle with ``enrich train`` (``train_command``) on a small (synthetic) catalog.

    The encoder stays frozen (``text_train_layers=0``: its output is cached once, heads + n-gram branch train),
    because fine-tuning even one layer over 64-token descriptions costs ~2 s a batch on 2 CPU cores.
    Equivalent CLI: ``enrich train --catalog STYLES --out OUT --name enrich-demo --image-size 128
    --text-train-layers 0 --text-max-len 64 --wide-buckets 32768 --epochs 6 --max-minutes 10 --batch-size 16
    --lr 2e-3 --min-class-count 5``.
    """
    return train_command(TrainConfig(**DEMO_CONFIG), catalog=[str(styles)], out=str(out), name="enrich-demo",
                         seed=seed, progress=progress)
