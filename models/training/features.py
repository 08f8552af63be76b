"""Cached frozen-bottom features: the datasets training, fusion fitting and ``enrich add-heads`` read.

Each catalog and split gives a text and an image :class:`TaskData` whose frozen-bottom outputs (the CNN bottom
over both views of every photo, the BERT bottom layers over every text) are computed once and kept on disk
under the work dir, keyed by what they were computed from. On 2 CPU cores this is what makes fine-tuning the
tops affordable. Also here: batching those features into the models' tops (``predict_probs``,
``embed_dataset``) and the photo variants (augmented copies, 3:4 shape views, shifted validation folds).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.augment import PhotoAugment, PhotoShape
from models.data import Product
from models.image_model import ImagePreprocess, MultiTaskImageModel
from models.taxonomy import Taxonomy
from models.text_clean import text_input
from models.text_model import MultiTaskTextModel, wide_batch

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


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
            ip = [p for p in prods if p.image_path is not None]
            if image_model is not None and ip:
                f, ok, st = cache_image_features(image_model, preprocess, [p.image_path for p in ip], device, cache_dir,
                                                 f"{ci}-{split}-{image_source}", progress=progress)
                keep = np.nonzero(ok)[0]
                if len(keep):
                    ipk = [ip[i] for i in keep]
                    d = TaskData("image", ci, [p.id for p in ipk], encode_labels(ipk, taxonomy), f[keep],
                                 stats=None if st is None else st[keep])
                    tag = f"{ci}-{split}-{image_source}"
                    kp = [ip[i].image_path for i in keep]
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


