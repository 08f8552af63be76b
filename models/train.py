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

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models.augment import PhotoAugment, PhotoShape
from models.bundle import resolve_device, save_bundle
from models.data import Product, SplitSpec, read_catalog, sample_products
from models.drift import agreement_band
from models.ensemble import UNMENTIONED, Ensemble, FusionParams, PoolParams, fit_mode, select_pool
from models.image_model import ImagePreprocess, MultiTaskImageModel, build_backbone
from models.multitask import MultiDatasetSampler, masked_multitask_loss
from models.taxonomy import KAGGLE_COLUMNS, Taxonomy, check_attribute_names
from models.text_clean import mentions, remove_words, text_input
from models.text_model import MultiTaskTextModel, default_encoder_dir, load_encoder, load_tokenizer, wide_batch
from models.wide import WideTextModel

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

DEFAULT_ATTRIBUTES = tuple(KAGGLE_COLUMNS)


@dataclass
class TaskData:
    """One dataset of one modality and split: cached bottom features, labels ``[N, A]`` (-1 missing), ids."""

    kind: str  # "text" | "image"
    catalog: int
    ids: list[str]
    labels: np.ndarray
    feats: np.ndarray  # text: [N, T, H] fp16; image: [N, V, C, h, w] fp16
    mask: np.ndarray | None = None  # text attention mask [N, T]
    texts: list[str] = field(default_factory=list)
    stats: np.ndarray | None = None  # image pixel stats [N, V, 3 g^2]
    # training photos only (--image-augment): features / stats of K augmented copies, and per row the version
    # (0: the photo itself, k: variants[k - 1]) this epoch shows; see ``choose_variants``
    variants: list[np.ndarray] = field(default_factory=list)
    variant_stats: list[np.ndarray | None] = field(default_factory=list)
    shown: np.ndarray | None = None
    #: image datasets: "" for the photos as they are, else the photo shape shift they were cached under
    #: (``models.augment.PhotoShape``: "squash", "letterbox"), the shifted folds of validation
    view: str = ""

    def choose_variants(self, rng: np.random.Generator) -> None:
        """Draw, for this epoch, which version of each photo the model sees (uniform over the K + 1)."""
        self.shown = rng.integers(0, len(self.variants) + 1, size=len(self.ids)) if self.variants else None


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


def load_image(path: Path | None, decode_size: tuple[int, int]) -> Image.Image | None:
    """Decode a photo with JPEG draft mode; ``None`` when missing or unreadable (the row becomes text-only)."""
    if path is None:
        return None
    try:
        with Image.open(path, formats=["JPEG", "PNG", "WEBP"]) as im:
            im.draft("RGB", decode_size)
            return im.convert("RGB")
    except Exception:
        return None


def encode_labels(products: Sequence[Product], taxonomy: Taxonomy) -> np.ndarray:
    """``[N, A]`` class indices, ``-1`` where the label is missing or the catalog lacks the column."""
    rows = [[taxonomy.attributes[a].encode(p.labels.get(a)) for a in taxonomy.names] for p in products]
    return np.asarray(rows, dtype=np.int64).reshape(len(products), len(taxonomy.names))


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prefetch(fn: Callable[[T], R], items: Sequence[T], workers: int = 2, ahead: int = 2) -> Iterator[R]:
    """``map(fn, items)`` in a thread pool with at most ``ahead`` results waiting (bounded memory).

    ``Executor.map`` submits everything at once, which decodes a whole catalog of photos into RAM.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futs: deque[Future[R]] = deque()
        it = iter(items)
        for x in it:
            futs.append(pool.submit(fn, x))
            if len(futs) > ahead:
                yield futs.popleft().result()
        while futs:
            yield futs.popleft().result()


# --- feature caches --------------------------------------------------------------------------------------
def cache_text_features(model: MultiTaskTextModel, tokenizer: Any, texts: Sequence[str], max_len: int,
                        device: torch.device, cache_dir: Path, tag: str, batch_size: int = 128,
                        progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """BERT bottom hidden states ``[N, T, H]`` (fp16) + masks, computed once and kept on disk."""
    key = _key("text", tag, model.cut, max_len, list(texts))
    fh, fm = cache_dir / f"text-{key}.npy", cache_dir / f"text-{key}-mask.npy"
    if fh.exists() and fm.exists():
        return np.load(fh), np.load(fm)
    enc = tokenizer(list(texts), truncation=True, max_length=max_len)
    lens = np.array([len(x) for x in enc["input_ids"]], dtype=np.int64)
    t_max = int(lens.max()) if len(lens) else 1
    hdim = int(model.encoder.config.hidden_size)  # type: ignore[attr-defined]
    hidden = np.zeros((len(texts), t_max, hdim), dtype=np.float16)
    mask = np.zeros((len(texts), t_max), dtype=np.uint8)
    order = np.argsort(lens, kind="stable")
    model.eval()
    with torch.inference_mode():
        for s in tqdm(range(0, len(order), batch_size), desc=f"cache text {tag}", disable=not progress):
            idx = order[s : s + batch_size]
            t = int(lens[idx].max())
            ids = torch.zeros((len(idx), t), dtype=torch.long)
            m = torch.zeros((len(idx), t), dtype=torch.long)
            for j, i in enumerate(idx):
                seq = enc["input_ids"][i]
                ids[j, : len(seq)] = torch.tensor(seq)
                m[j, : len(seq)] = 1
            h = model.bottom(ids.to(device), m.to(device)).float().cpu().numpy()
            hidden[idx, :t] = h.astype(np.float16)
            mask[idx, :t] = m.numpy()
    np.save(fh, hidden)
    np.save(fm, mask)
    return hidden, mask


def cache_image_features(model: MultiTaskImageModel, preprocess: ImagePreprocess, paths: Sequence[Path | None],
                         device: torch.device, cache_dir: Path, tag: str, batch_size: int = 16,
                         progress: bool = True, augment: PhotoAugment | PhotoShape | None = None, variant: int = 0,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """CNN bottom outputs for both views of every photo ``[N, V, C, h, w]`` (fp16), an ``ok`` mask, and the
    pixel stats ``[N, V, 3 g^2]`` when the model uses them. Stats are cached apart from the CNN features, so
    turning them on later costs a decode pass, not a CNN pass. With ``augment``, every photo is first
    transformed by its ``variant``-th random draw (``models.augment``); such a cache has its own key."""
    aug_key = () if augment is None else ([augment.to_json(), variant, seed],)  # plain caches keep their keys
    key = _key("image", tag, preprocess.to_json(), [str(p) for p in paths], *aug_key)
    ff, fo = cache_dir / f"image-{key}.npy", cache_dir / f"image-{key}-ok.npy"
    g = model.pixel_stats
    fs = cache_dir / f"image-{key}-stats{g}.npy"
    have_cnn = ff.exists() and fo.exists()
    if have_cnn and (not g or fs.exists()):
        return np.load(ff), np.load(fo), (np.load(fs) if g else None)
    model.eval()
    feats: np.ndarray | None = np.load(ff) if have_cnn else None
    ok = np.load(fo) if have_cnn else np.zeros(len(paths), dtype=bool)
    stats = np.zeros((len(paths), model.n_views, 3 * g * g), dtype=np.float32) if g else None

    def prep(i: int) -> torch.Tensor | None:
        im = load_image(paths[i], preprocess.decode_size)
        if im is not None and augment is not None:
            im = augment.apply(im, augment.rng(seed, variant, str(paths[i])))
        return None if im is None else preprocess.views(im)

    with torch.inference_mode():
        batches = [list(range(s, min(s + batch_size, len(paths)))) for s in range(0, len(paths), batch_size)]
        pending = prefetch(lambda b: [prep(i) for i in b], batches)
        for b, views in tqdm(zip(batches, pending, strict=True), total=len(batches), desc=f"cache images {tag}",
                             disable=not progress):
            good = [(i, v) for i, v in zip(b, views, strict=True) if v is not None]
            if not good:
                continue
            idx = [i for i, _ in good]
            x = torch.stack([v for _, v in good])
            if stats is not None:
                st = model.view_stats(x)
                assert st is not None
                stats[idx] = st.numpy()
            if have_cnn:
                continue
            f = model.bottom_features(x.to(device)).float().cpu().numpy().astype(np.float16)
            if feats is None:
                feats = np.zeros((len(paths), *f.shape[1:]), dtype=np.float16)
            feats[idx] = f
            ok[idx] = True
    if feats is None:
        feats = np.zeros((len(paths), 1), dtype=np.float16)
    if not have_cnn:
        np.save(ff, feats)
        np.save(fo, ok)
    if stats is not None:
        np.save(fs, stats)
    return feats, ok, stats


# --- batches ---------------------------------------------------------------------------------------------
def _text_inputs(model: MultiTaskTextModel, d: TaskData, idx: np.ndarray, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    assert d.mask is not None
    m = d.mask[idx]
    t = max(1, int(m.sum(1).max()))
    h = torch.from_numpy(d.feats[idx, :t].astype(np.float32)).to(device)
    mk = torch.from_numpy(m[:, :t].astype(np.int64)).to(device)
    kw: dict[str, torch.Tensor] = {}
    if model.wide is not None:
        wi, wo = wide_batch([d.texts[i] for i in idx], model.wide_buckets)
        kw = {"wide_ids": wi.to(device), "wide_offsets": wo.to(device)}
    return h, mk, kw


def _image_inputs(d: TaskData, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    feats = d.feats[idx].astype(np.float32)  # fancy indexing copies: safe to overwrite rows below
    stats = None if d.stats is None else d.stats[idx]
    if d.shown is not None:
        v = d.shown[idx]
        for k, (vf, vs) in enumerate(zip(d.variants, d.variant_stats, strict=True), start=1):
            rows = np.nonzero(v == k)[0]
            if len(rows):
                feats[rows] = vf[idx[rows]]
                if stats is not None and vs is not None:
                    stats[rows] = vs[idx[rows]]
    x = torch.from_numpy(feats).to(device)
    st = None if stats is None else torch.from_numpy(stats).to(device)
    return x, st


def _text_logits(model: MultiTaskTextModel, d: TaskData, idx: np.ndarray, device: torch.device
                 ) -> dict[str, torch.Tensor]:
    h, mk, kw = _text_inputs(model, d, idx, device)
    return model.top(h, mk, **kw)


def _image_logits(model: MultiTaskImageModel, d: TaskData, idx: np.ndarray, device: torch.device
                  ) -> dict[str, torch.Tensor]:
    return model.forward_bottom_features(*_image_inputs(d, idx, device))


def embed_dataset(model: torch.nn.Module, d: TaskData, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """The dense layer's output ``[N, hidden]`` (float32, eval mode) for a cached dataset: the features every
    head reads, so a new head on a frozen trunk is a linear model over these (``models.heads``)."""
    model.eval()
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for s in range(0, len(d.ids), batch_size):
            idx = np.arange(s, min(s + batch_size, len(d.ids)))
            if d.kind == "text":
                h, mk, kw = _text_inputs(model, d, idx, device)  # type: ignore[arg-type]
                z = model.embed(h, mk, **kw)  # type: ignore[operator]
            else:
                z = model.embed_bottom_features(*_image_inputs(d, idx, device))  # type: ignore[operator]
            out.append(z.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _targets(d: TaskData, idx: np.ndarray, names: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    lab = torch.from_numpy(d.labels[idx]).to(device)
    return {a: lab[:, j] for j, a in enumerate(names)}


def predict_probs(model: torch.nn.Module, d: TaskData, names: Sequence[str], device: torch.device,
                  batch_size: int = 256) -> dict[str, np.ndarray]:
    """Softmax probabilities ``{attr: [N, K]}`` for a cached dataset, for the ``names`` the model has a head for
    (``enrich add-heads`` gives a modality no head for an attribute its rows do not label)."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {a: [] for a in names if a in model.heads}  # type: ignore[operator]
    with torch.inference_mode():
        for s in range(0, len(d.ids), batch_size):
            idx = np.arange(s, min(s + batch_size, len(d.ids)))
            fn = _text_logits if d.kind == "text" else _image_logits
            lg = fn(model, d, idx, device)  # type: ignore[arg-type]
            for a in out:
                out[a].append(torch.softmax(lg[a].float(), -1).cpu().numpy())
    return {a: np.concatenate(v) if v else np.zeros((0, 0)) for a, v in out.items()}


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


# --- checkpoints (safetensors + JSON; never pickles) -----------------------------------------------------
def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the state that training changes (not the frozen bottom / encoder layers).

    Why: copying and writing the frozen 22M-parameter encoder after every epoch cost more than the epoch.
    """
    if isinstance(model, MultiTaskImageModel):
        keep = lambda k: not k.startswith("bottom.")  # noqa: E731
    elif isinstance(model, MultiTaskTextModel):
        top = tuple(f"encoder.encoder.layer.{i}." for i in range(model.cut, model.cut + model.train_layers))
        keep = lambda k: not k.startswith("encoder.") or k.startswith(top)  # noqa: E731
    else:
        keep = lambda k: True  # noqa: E731
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if keep(k)}


def _save_ckpt(path: Path, models: Mapping[str, torch.nn.Module], opt: torch.optim.Optimizer,
               best: Mapping[str, dict[str, torch.Tensor]], state: Mapping[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, m in models.items():
        tensors.update({f"model.{name}.{k}": v.contiguous() for k, v in trained_state(m).items()})
    for name, sd in best.items():
        tensors.update({f"best.{name}.{k}": v.contiguous().clone() for k, v in sd.items()})
    osd = opt.state_dict()
    for pid, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous().clone()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps({**state, "param_groups": osd["param_groups"]}))


def _load_ckpt(path: Path, models: Mapping[str, torch.nn.Module], opt: torch.optim.Optimizer
               ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    tensors = load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    for name, m in models.items():
        p = f"model.{name}."
        m.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}, strict=False)
    best: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("best."):
            _, name, rest = k.split(".", 2)
            best.setdefault(name, {})[rest] = v
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return best, meta


# --- the command -----------------------------------------------------------------------------------------
def cached_datasets(catalogs: Sequence[Mapping[str, Sequence[Product]]], taxonomy: Taxonomy,
                    text_model: MultiTaskTextModel | None, tokenizer: Any, text_max_len: int, text_source: str,
                    image_model: MultiTaskImageModel | None, preprocess: ImagePreprocess, image_source: str,
                    device: torch.device, cache_dir: Path, progress: bool = True,
                    splits: Sequence[str] = ("train", "val"), image_augment: int = 0,
                    augment: PhotoAugment | None = None, seed: int = 0, shape_views: Sequence[str] = (),
                    shift_folds: Sequence[str] = ()) -> dict[str, list[TaskData]]:
    """Per split, one text and one image :class:`TaskData` per catalog (frozen-bottom features cached on disk).

    The cache tags are ``{catalog index}-{split}-{source}``, and the keys also hash the texts / photo paths and
    preprocessing, so ``enrich add-heads`` with the training run's ``--work-dir`` reuses its caches (a bundle's
    frozen bottoms are the pretrained ones its ``text_source`` / ``image_source`` name). ``image_augment``
    K > 0 also caches K augmented copies of the *training* photos (validation and test stay as served).
    ``shape_views`` (``PhotoShape`` modes) add one more training copy per shape (the photo at 3:4, squashed
    or letterboxed), so a vendor's original photo is not out of distribution; ``shift_folds`` add, for every
    other split, one more image dataset per shape (``TaskData.view``): the shifted folds that model
    selection, the fusion and the thresholds are fitted on next to the photos as they are.
    """
    data: dict[str, list[TaskData]] = {s: [] for s in splits}
    for ci, c in enumerate(catalogs):
        for split in splits:
            prods = c[split]
            with_text = [(p, t) for p in prods if (t := text_input(p.title, p.description, p.brand))]
            if text_model is not None and with_text:
                tp, texts = [p for p, _ in with_text], [t for _, t in with_text]
                h, m = cache_text_features(text_model, tokenizer, texts, text_max_len, device, cache_dir,
                                           f"{ci}-{split}-{text_source}", progress=progress)
                data[split].append(TaskData("text", ci, [p.id for p in tp], encode_labels(tp, taxonomy), h, m,
                                            texts))
            ip = [p for p in prods if p.image is not None]
            if image_model is not None and ip:
                f, ok, st = cache_image_features(image_model, preprocess, [p.image for p in ip], device, cache_dir,
                                                 f"{ci}-{split}-{image_source}", progress=progress)
                keep = np.nonzero(ok)[0]
                if len(keep):
                    ipk = [ip[i] for i in keep]
                    d = TaskData("image", ci, [p.id for p in ipk], encode_labels(ipk, taxonomy), f[keep],
                                 stats=None if st is None else st[keep])
                    tag = f"{ci}-{split}-{image_source}"
                    kp = [ip[i].image for i in keep]
                    if split == "train" and image_augment > 0:
                        _add_variants(d, image_model, preprocess, kp, device, cache_dir, tag, image_augment,
                                      augment or PhotoAugment(), seed, progress)
                    if split == "train":
                        for shape in shape_views:
                            _add_variants(d, image_model, preprocess, kp, device, cache_dir, f"{tag}-{shape}", 1,
                                          PhotoShape(shape), seed, progress)
                    data[split].append(d)
                    for shape in shift_folds if split != "train" else ():
                        fs, oks, sts = cache_image_features(image_model, preprocess, kp, device, cache_dir,
                                                            f"{tag}-{shape}", progress=progress,
                                                            augment=PhotoShape(shape), seed=seed)
                        good = np.nonzero(oks)[0]
                        if len(good):
                            data[split].append(TaskData(
                                "image", ci, [d.ids[i] for i in good], d.labels[good], fs[good],
                                stats=None if sts is None else sts[good], view=shape))
    return data


def _add_variants(d: TaskData, model: MultiTaskImageModel, preprocess: ImagePreprocess, paths: Sequence[Path | None],
                  device: torch.device, cache_dir: Path, tag: str, k: int, augment: PhotoAugment | PhotoShape,
                  seed: int, progress: bool) -> None:
    """Cache and attach ``k`` augmented copies of ``d``'s photos. A photo whose augmented copy failed to
    decode (it decoded a moment ago; a file changed underneath) shows its original features in that copy."""
    for v in range(1, k + 1):
        f, ok, st = cache_image_features(model, preprocess, paths, device, cache_dir, f"{tag}-aug{v}",
                                         progress=progress, augment=augment, variant=v, seed=seed)
        if not ok.any():
            f, st = d.feats, d.stats
        elif not ok.all():
            f[~ok] = d.feats[~ok]
            if st is not None and d.stats is not None:
                st[~ok] = d.stats[~ok]
        d.variants.append(f)
        d.variant_stats.append(st)


def train_command(
    *,
    catalog: Sequence[str],
    out: str,
    name: str = "enrich",
    attributes: Sequence[str] | None = None,
    image_backbone: str = "efficientnet-lite0",
    image_weights: str | None = None,
    image_size: int = 192,
    image_top_blocks: int = 1,
    image_pixel_stats: int = 4,
    image_augment: int = 0,
    image_shape_views: str = "letterbox",
    shift_folds: str = "squash,letterbox",
    split: str = "hash",
    split_years: str = "2013,2016",
    text_encoder: str | None = None,
    text_train_layers: int = 1,
    text_max_len: int = 48,
    wide_buckets: int = 1 << 17,
    epochs: int = 8,
    max_minutes: float | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    trunk_lr: float = 1e-4,
    wide_lr: float = 1e-2,
    linear_text: bool = True,
    linear_c: float = 10.0,
    mention_fusion: str = "color",
    seed: int = 0,
    task_weights: str | None = None,
    dataset_weights: str | None = None,
    min_class_count: int = 20,
    target_precision: float = 0.9,
    select_by: str = "accuracy",
    max_products: int | None = None,
    work_dir: str | None = None,
    resume: bool = True,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a bundle from Kaggle-format catalogs and write it to ``out``. Returns a summary dict.

    CLI (``enrich train``), one flag per keyword argument::

      --catalog PATH (repeatable)  Kaggle-format styles.csv (or its directory); each one is a dataset
      --out DIR                    bundle directory to write
      --name TEXT                  bundle name [enrich]
      --attribute NAME (repeatable) attributes to train [all present: color, article_type, master_category,
                                   sub_category, gender, usage, season, pattern]; a name that is not one of
                                   these is read from the catalog column of that name (e.g. year)
      --image-backbone NAME        efficientnet-lite0 | resnet50 | tiny [efficientnet-lite0]
      --image-weights FILE         ImageNet weights file for resnet50 [$TORCH_HOME]
      --image-size INT             side of both image views [192]
      --image-top-blocks INT       trailing backbone blocks fine-tuned (the rest is frozen, cached) [1]
      --image-pixel-stats INT      also feed each view's GxG average-pooled pixels to the heads, 0 disables [4]
      --image-augment INT          cache this many randomly cropped / rotated / flipped copies of every
                                   training photo; each epoch shows each photo as one of its versions. Costs
                                   one CNN-bottom pass per copy, once. Not part of the resume key: raising it
                                   on a resumed run continues training on the augmented photos [0]
      --text-encoder DIR           local Hugging Face BERT directory [packaged all-MiniLM-L6-v2]
      --text-train-layers INT      top encoder layers fine-tuned (the rest is frozen, cached) [1]
      --text-max-len INT           max tokens of title . brand . description [48]
      --wide-buckets INT           hashed word n-gram buckets of the text model, 0 disables [131072]
      --epochs INT                 max epochs [8]
      --max-minutes FLOAT          wall-clock budget for the whole run; training stops early to meet it
      --batch-size INT             [64]
      --lr FLOAT                   heads / dense / wide learning rate [1e-3]
      --trunk-lr FLOAT             fine-tuned backbone and encoder layers learning rate [1e-4]
      --wide-lr FLOAT              hashed n-gram embedding learning rate (rare n-grams must be learnt from
                                   few rows, fastText-style) [1e-2]
      --linear-text / --no-linear-text  also fit the wide TF-IDF (word 1-2 + char 2-5 grams) + logistic
                                   regression text model on the training texts and pool it with BERT into the
                                   served text probabilities [linear-text]
      --linear-c FLOAT             its inverse L2 strength C [10]
      --mention-fusion TEXT        comma-separated attributes that also get "-unmentioned" fusion modes for
                                   texts naming none of their values (fitted on validation texts with the
                                   value words removed); "" for none [color]
      --seed INT                   split, init and batch order seed [0]
      --task-weights TEXT          e.g. "color=2,season=0.5" (task losses are summed with these weights)
      --dataset-weights TEXT       sampling weights, e.g. "0:text=1,0:image=2" (catalog index:modality)
      --min-class-count INT        values rarer than this in train merge into "other" [20]
      --target-precision FLOAT     per-attribute thresholds reach this validation precision [0.9]
      --select-by accuracy|loss    keep each model's epoch with the best mean validation accuracy, or the
                                   lowest validation loss [accuracy]
      --max-products INT           use at most this many products per catalog (quick runs)
      --work-dir DIR               feature caches and checkpoints [<out>.work]
      --resume / --no-resume       continue from the work dir's checkpoint [resume]
      --device TEXT                auto | cpu | cuda [auto]
      --threads INT                torch CPU threads [all cores]
      --progress / --no-progress   progress bars [progress]
    """
    if image_augment < 0:
        raise ValueError(f"image_augment must be >= 0, got {image_augment}")
    t0 = time.monotonic()
    deadline = t0 + max_minutes * 60 if max_minutes else math.inf
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    dev = resolve_device(device)
    out_dir = Path(out)
    work = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".work")
    cache_dir = work / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)

    # 1. data
    catalogs: list[dict[str, list[Product]]] = []
    extra_labels = [a for a in attributes or () if a not in KAGGLE_COLUMNS]  # e.g. --attribute year
    check_attribute_names(extra_labels)
    val_from, test_from = (int(x) for x in split_years.split(","))
    split_spec = SplitSpec(split, seed, (0.8, 0.1, 0.1), val_from, test_from)
    shapes = [x.strip() for x in image_shape_views.split(",") if x.strip()]
    folds = [x.strip() for x in shift_folds.split(",") if x.strip()]
    for shape in (*shapes, *folds):
        PhotoShape(shape)  # refuses an unknown shape before any work
    for ci, c in enumerate(catalog):
        prods = sample_products(read_catalog(c, extra_labels), max_products, seed, ci)
        catalogs.append(split_spec.split(prods))
    present = {a for c in catalogs for s in c.values() for p in s for a, v in p.labels.items() if v is not None}
    wanted = [a for a in (attributes or DEFAULT_ATTRIBUTES) if a in present]
    train_rows = [p.labels for c in catalogs for p in c["train"]]
    taxonomy = Taxonomy.build(train_rows, wanted, min_count=min_class_count)
    names = taxonomy.names
    ncls = taxonomy.num_classes()
    log.info("taxonomy: %s", ncls)

    # 2. models
    backbone = build_backbone(image_backbone, pretrained=True, top_blocks=image_top_blocks, weights=image_weights)
    image_model = MultiTaskImageModel(backbone, ncls, pixel_stats=image_pixel_stats).to(dev)
    preprocess = ImagePreprocess(size=image_size)
    enc_dir = Path(text_encoder) if text_encoder else default_encoder_dir()
    encoder = load_encoder(enc_dir, pretrained=True)
    text_model = MultiTaskTextModel(encoder, ncls, train_layers=text_train_layers, wide_buckets=wide_buckets).to(dev)
    tokenizer = load_tokenizer(enc_dir)
    for p in image_model.bottom.parameters():
        p.requires_grad_(False)
    for p in text_model.encoder.parameters():
        p.requires_grad_(False)
    for p in text_model.trainable_parameters():
        p.requires_grad_(True)

    # 3. caches
    augment = PhotoAugment()
    data = cached_datasets(catalogs, taxonomy, text_model, tokenizer, text_max_len, str(enc_dir), image_model,
                           preprocess, f"{image_backbone}-{image_top_blocks}", dev, cache_dir, progress,
                           image_augment=image_augment, augment=augment, seed=seed, shape_views=shapes,
                           shift_folds=folds)
    t_cache = time.monotonic() - t0

    # 4. training
    tw = parse_weights(task_weights)
    dw = parse_weights(dataset_weights)
    train_ds = [d for d in data["train"] if len(d.ids)]
    sampler = MultiDatasetSampler([len(d.ids) for d in train_ds], batch_size,
                                  [dw.get(f"{d.catalog}:{d.kind}", 1.0) for d in train_ds], seed=seed)
    head_params = [*image_model.dense.parameters(), *image_model.heads.parameters()]
    text_trunk = [p for layer in text_model.encoder.encoder.layer[text_model.cut:] for p in layer.parameters()]
    text_rest = [p for m in (text_model.dense, text_model.heads) for p in m.parameters()]
    text_wide = list(text_model.wide.parameters()) if text_model.wide is not None else []
    opt = torch.optim.AdamW(
        [
            {"params": list(image_model.top.parameters()), "lr": trunk_lr},
            {"params": head_params, "lr": lr},
            {"params": text_trunk, "lr": trunk_lr},
            {"params": text_rest, "lr": lr},
            {"params": text_wide, "lr": wide_lr, "weight_decay": 0.0},
        ],
        weight_decay=1e-4,
    )
    base_lrs = [g["lr"] for g in opt.param_groups]
    models = {"image": image_model, "text": text_model}
    best: dict[str, dict[str, torch.Tensor]] = {}
    best_loss = {"image": math.inf, "text": math.inf}
    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt = work / "checkpoint.safetensors"
    run_key = _key(list(catalog), split_spec.to_json(), shapes, folds,
                   names, image_backbone, image_size, image_top_blocks, image_pixel_stats, str(enc_dir),
                   text_train_layers, wide_buckets, batch_size, seed, max_products, task_weights, dataset_weights,
                   lr, trunk_lr, wide_lr, select_by)
    if resume and ckpt.exists():
        meta = json.loads(ckpt.with_suffix(".json").read_text())
        if meta.get("run_key") == run_key:
            best, meta = _load_ckpt(ckpt, models, opt)
            start_epoch, best_loss, history = meta["epoch"] + 1, meta["best_loss"], meta["history"]
            log.info("resumed at epoch %d", start_epoch)
    t_train0 = time.monotonic()
    epoch_time = 0.0
    for epoch in range(start_epoch, epochs):
        if time.monotonic() + epoch_time * 1.05 > deadline - 30:
            log.info("budget reached before epoch %d", epoch)
            break
        te = time.monotonic()
        for g, b in zip(opt.param_groups, base_lrs, strict=True):  # cosine decay over the planned epochs
            g["lr"] = b * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
        sampler.set_epoch(epoch)
        torch.manual_seed(seed * 1000 + epoch)
        shown_rng = np.random.default_rng([seed, epoch])
        for d in train_ds:
            d.choose_variants(shown_rng)
        image_model.train()
        text_model.train()
        image_model.bottom.eval()
        bar = tqdm(sampler, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress)
        run = {"image": 0.0, "text": 0.0}
        for di, idx in bar:
            d = train_ds[di]
            m = models[d.kind]
            fn = _text_logits if d.kind == "text" else _image_logits
            logits = fn(m, d, idx, dev)  # type: ignore[arg-type]
            loss, _parts = masked_multitask_loss(logits, _targets(d, idx, names, dev), tw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lv = loss.item()
            run[d.kind] = 0.95 * run[d.kind] + 0.05 * lv if run[d.kind] else lv
            bar.set_postfix(img=f"{run['image']:.3f}", txt=f"{run['text']:.3f}")
            if time.monotonic() > deadline - 20:
                break
        rec: dict[str, Any] = {"epoch": epoch, "train_loss": dict(run), "image_augment": image_augment}
        for kind, m in models.items():
            vds = [d for d in data["val"] if d.kind == kind and len(d.ids)]
            if not vds:
                continue
            vl, vacc = _val_loss(m, vds, names, dev, tw)
            rec[f"val_loss_{kind}"] = vl
            rec[f"val_accuracy_{kind}"] = {a: round(v, 4) for a, v in vacc.items()}
            # lower is better: the loss, or minus the mean task accuracy (a model that keeps getting more
            # right while growing over-confident is still the better classifier; fusion recalibrates it)
            score = vl if select_by == "loss" else -float(np.mean(list(vacc.values())))
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
        if progress:
            tqdm.write(f"epoch {epoch + 1}: " + json.dumps({k: v for k, v in rec.items() if k != 'epoch'}))
        _save_ckpt(ckpt, models, opt, best, {"run_key": run_key, "epoch": epoch, "best_loss": best_loss,
                                             "history": history})
    for kind, m in models.items():
        if kind in best:
            m.load_state_dict(best[kind], strict=False)
    t_train = time.monotonic() - t_train0

    # 5. the wide text model, on the training texts (the neural models' checkpoint does not depend on it)
    t_w = time.monotonic()
    wide: WideTextModel | None = None
    tr_text = [d for d in data["train"] if d.kind == "text" and len(d.ids)]
    if linear_text and tr_text:
        wide = WideTextModel.fit([t for d in tr_text for t in d.texts], np.concatenate([d.labels for d in tr_text]),
                                 names, ncls, c=linear_c)
    t_wide = time.monotonic() - t_w

    # 6. text pool, fusion (with "-unmentioned" modes), thresholds, validation metrics
    t_u = time.monotonic()
    mention_attrs = [a.strip() for a in mention_fusion.split(",") if a.strip() in names]
    unmentioned = unmentioned_text_probs(text_model, tokenizer, text_max_len, data["val"], taxonomy, wide, dev,
                                         mention_attrs, progress=progress)
    t_unmentioned = time.monotonic() - t_u
    ensemble, thresholds, val_metrics, text_fusion, drift = fit_ensemble(
        models, data["val"], taxonomy, dev, target_precision, wide=wide, unmentioned=unmentioned
    )
    version = save_bundle(
        out_dir, name=name, taxonomy=taxonomy, image_model=image_model, image_preprocess=preprocess,
        image_backbone={"name": image_backbone, **backbone.spec}, text_model=text_model, encoder_dir=enc_dir,
        text_max_len=text_max_len, ensemble=ensemble, thresholds=thresholds,
        metrics={"validation": val_metrics}, wide=wide, text_fusion=text_fusion,
        extra={
            "split": split_spec.to_json(),
            "drift": drift,
            "photo_shapes": {"trained": shapes, "shift_folds": folds},
            "mention_words": {a: sorted(u.words) for a, u in unmentioned.items()},
            "training": {
                "catalogs": [str(c) for c in catalog], "epochs_run": len(history), "history": history,
                "seconds": {"cache": round(t_cache, 1), "train": round(t_train, 1), "wide": round(t_wide, 1),
                            "unmentioned": round(t_unmentioned, 1),
                            "total": round(time.monotonic() - t0, 1)},
                "device": str(dev), "seed": seed, "target_precision": target_precision,
                "text_encoder_source": str(enc_dir), "task_weights": tw, "dataset_weights": dw,
                "max_products": max_products, "batch_size": batch_size, "select_by": select_by,
                "lr": {"heads": lr, "trunk": trunk_lr, "wide": wide_lr}, "epochs": epochs,
                "max_minutes": max_minutes, "linear_text": linear_text, "linear_c": linear_c,
                "mention_fusion": mention_fusion,
                "image_augment": {"copies": image_augment, **augment.to_json()} if image_augment else None,
            },
        },
    )
    summary = {"bundle": str(out_dir), "version": version, "attributes": names,
               "seconds": round(time.monotonic() - t0, 1), "epochs_run": len(history),
               "validation": val_metrics}
    return summary


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


def fit_ensemble(models: Mapping[str, torch.nn.Module], val: Sequence[TaskData], taxonomy: Taxonomy,
                 device: torch.device, target_precision: float, wide: WideTextModel | None = None,
                 unmentioned: Mapping[str, Unmentioned] | None = None,
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

    Returns ``(ensemble, thresholds, metrics, text_fusion, drift)``.
    """
    names = taxonomy.names
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
                groups=[v or "as-is" for _, v in rows], fold_keys=[k for k, _ in rows])
        drift[a] = agreement_band(
            [(served[k], iprobs[k][a]) for k in keys_b], thresholds[a].get("text", 0.5),
            {v: [(served[k], shifted[k][v][a]) for k in keys_b if v in shifted.get(k, {}) and a in shifted[k][v]]
             for v in sorted({v for k in keys_b for v in shifted.get(k, {})})})
    return ens, thresholds, metrics, text_fusion, drift


#: The demo bundle's configuration: small enough for ~2-3 minutes on 2 idle CPU cores, same code path as any
#: run. A fixed epoch count (not a time budget) so the demo bundle, and the demo's numbers, are the same on a
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


#: Bump when the training code changes what a demo bundle holds (e.g. revision 2: colour ``-unmentioned``
#: fusion modes), so cached demo bundles are retrained (``consumer.devtools.demo.ensure_demo_bundle``).
DEMO_REVISION = 2


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
    return train_command(catalog=[str(styles)], out=str(out), name="enrich-demo", seed=seed, progress=progress,
                         **DEMO_CONFIG)
