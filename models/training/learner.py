"""The multi-task training loop over cached features (Octopod's ``MultiTaskLearner`` role): the optimiser, the
cosine schedule, batches drawn across datasets, resumable checkpoints, and the validation loss and accuracy
per task that keep each model's best epoch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.image_model import MultiTaskImageModel
from models.multitask import MultiDatasetSampler, masked_multitask_loss
from models.text_model import MultiTaskTextModel
from models.training.checkpoint import _load_ckpt, _save_ckpt, trained_state
from models.training.config import TrainConfig
from models.training.features import TaskData, _image_logits, _targets, _text_logits

log = logging.getLogger(__name__)


def _val_loss(model: torch.nn.Module, ds: Sequence[TaskData], names: Sequence[str], device: torch.device,
              weights: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """Mean validation loss (per row) and top-1 accuracy per task over labelled rows."""
    model.eval()
    tot, n = 0.0, 0
    hits = dict.fromkeys(names, 0)
    seen = dict.fromkeys(names, 0)
    with torch.inference_mode():
        for d in ds:
            for s in range(0, len(d.ids), 256):
                idx = np.arange(s, min(s + 256, len(d.ids)))
                fn = _text_logits if d.kind == "text" else _image_logits
                logits = fn(model, d, idx, device)  # type: ignore[arg-type]
                tg = _targets(d, idx, names, device)
                loss, _ = masked_multitask_loss(logits, tg, weights)
                tot += float(loss) * len(idx)
                n += len(idx)
                for a in names:
                    m = tg[a] >= 0
                    hits[a] += int((logits[a].argmax(1)[m] == tg[a][m]).sum())
                    seen[a] += int(m.sum())
    return tot / max(1, n), {a: hits[a] / seen[a] for a in names if seen[a]}




def fit_models(models: Mapping[str, torch.nn.Module], data: Mapping[str, Sequence[TaskData]], names: Sequence[str],
               cfg: TrainConfig, device: torch.device, tw: Mapping[str, float], dw: Mapping[str, float],
               ckpt: Path, run_key: str, deadline: float = math.inf) -> list[dict[str, Any]]:
    """Train ``models`` (``"image"``: a :class:`MultiTaskImageModel`, ``"text"``: a :class:`MultiTaskTextModel`)
    on the cached ``data["train"]`` datasets for ``cfg.epochs`` epochs, then load each model's best epoch.

    Batches are drawn across datasets by ``MultiDatasetSampler`` (weights ``dw`` per ``catalog:kind``), each
    batch's loss is the ``tw``-weighted sum of its tasks' masked losses; the learning rates follow a cosine over
    the planned epochs. After every epoch the checkpoint ``ckpt`` (safetensors + JSON, tagged ``run_key``) is
    written, so a run stopped at ``deadline`` or killed resumes at the next epoch (``cfg.resume``). The best
    epoch per model is chosen on ``data["val"]`` by ``cfg.select_by``. Returns the per-epoch history.
    """
    assert isinstance(models["image"], MultiTaskImageModel) and isinstance(models["text"], MultiTaskTextModel)
    image_model, text_model = models["image"], models["text"]
    train_ds = [d for d in data["train"] if len(d.ids)]
    sampler = MultiDatasetSampler([len(d.ids) for d in train_ds], cfg.batch_size,
                                  [dw.get(f"{d.catalog}:{d.kind}", 1.0) for d in train_ds], seed=cfg.seed)
    head_params = [*image_model.dense.parameters(), *image_model.heads.parameters()]
    text_trunk = [p for layer in text_model.encoder.encoder.layer[text_model.cut:] for p in layer.parameters()]
    text_rest = [p for m in (text_model.dense, text_model.heads) for p in m.parameters()]
    text_wide = list(text_model.wide.parameters()) if text_model.wide is not None else []
    opt = torch.optim.AdamW(
        [
            {"params": list(image_model.top.parameters()), "lr": cfg.trunk_lr},
            {"params": head_params, "lr": cfg.lr},
            {"params": text_trunk, "lr": cfg.trunk_lr},
            {"params": text_rest, "lr": cfg.lr},
            {"params": text_wide, "lr": cfg.wide_lr, "weight_decay": 0.0},
        ],
        weight_decay=1e-4,
    )
    base_lrs = [g["lr"] for g in opt.param_groups]
    best: dict[str, dict[str, torch.Tensor]] = {}
    best_loss = {"image": math.inf, "text": math.inf}
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if cfg.resume and ckpt.exists():
        meta = json.loads(ckpt.with_suffix(".json").read_text())
        if meta.get("run_key") == run_key:
            best, meta = _load_ckpt(ckpt, models, opt)
            start_epoch, best_loss, history = meta["epoch"] + 1, meta["best_loss"], meta["history"]
            log.info("resumed at epoch %d", start_epoch)
    epoch_time = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        if time.monotonic() + epoch_time * 1.05 > deadline - 30:
            log.info("budget reached before epoch %d", epoch)
            break
        te = time.monotonic()
        for g, b in zip(opt.param_groups, base_lrs, strict=True):  # cosine decay over the planned cfg.epochs
            g["lr"] = b * 0.5 * (1 + math.cos(math.pi * epoch / max(1, cfg.epochs)))
        sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch)
        shown_rng = np.random.default_rng([cfg.seed, epoch])
        for d in train_ds:
            d.choose_variants(shown_rng)
        image_model.train()
        text_model.train()
        image_model.bottom.eval()
        bar = tqdm(sampler, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress)
        run = {"image": 0.0, "text": 0.0}
        for di, idx in bar:
            d = train_ds[di]
            m = models[d.kind]
            fn = _text_logits if d.kind == "text" else _image_logits
            logits = fn(m, d, idx, device)  # type: ignore[arg-type]
            loss, _parts = masked_multitask_loss(logits, _targets(d, idx, names, device), tw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lv = loss.item()
            run[d.kind] = 0.95 * run[d.kind] + 0.05 * lv if run[d.kind] else lv
            bar.set_postfix(img=f"{run['image']:.3f}", txt=f"{run['text']:.3f}")
            if time.monotonic() > deadline - 20:
                break
        rec: dict[str, Any] = {"epoch": epoch, "train_loss": dict(run), "image_augment": cfg.image_augment}
        for kind, m in models.items():
            vds = [d for d in data["val"] if d.kind == kind and len(d.ids)]
            if not vds:
                continue
            vl, vacc = _val_loss(m, vds, names, device, tw)
            rec[f"val_loss_{kind}"] = vl
            rec[f"val_accuracy_{kind}"] = {a: round(v, 4) for a, v in vacc.items()}
            # lower is better: the loss, or minus the mean task accuracy (a model that keeps getting more
            # right while growing over-confident is still the better classifier; fusion recalibrates it)
            score = vl if cfg.select_by == "loss" else -float(np.mean(list(vacc.values())))
            if score < best_loss[kind]:
                best_loss[kind] = score
                best[kind] = trained_state(m)
        for kind, m in models.items():  # a model without validation data keeps its last state
            if not any(d.kind == kind for d in data["val"]):
                best[kind] = trained_state(m)
        epoch_time = time.monotonic() - te
        rec["seconds"] = round(epoch_time, 1)
        history.append(rec)
        log.info("epoch %s", rec)
        if cfg.progress:
            tqdm.write(f"epoch {epoch + 1}: " + json.dumps({k: v for k, v in rec.items() if k != 'epoch'}))
        _save_ckpt(ckpt, models, opt, best, {"run_key": run_key, "epoch": epoch, "best_loss": best_loss,
                                             "history": history})
    for kind, m in models.items():
        if kind in best:
            m.load_state_dict(best[kind], strict=False)
    return history
