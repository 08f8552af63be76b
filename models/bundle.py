"""Model bundle: one directory with safetensors weights and a JSON manifest; the interface the consumer uses.

Layout::

    DIR/manifest.json          taxonomy + label maps, preprocessing, backbones, fusion, thresholds, metrics
    DIR/weights.safetensors    image model ("image.*") and text model ("text.*") tensors
    DIR/text_encoder/          the encoder's config.json and tokenizer files (no weights, no pickles)
    DIR/wide.json              the wide TF-IDF text model's vectorizer settings and vocabularies (optional)
    DIR/wide.safetensors       its idf vectors, coefficients and intercepts (optional)

Why: ShopRunner's checkpoints did not carry their label maps, so a checkpoint could not be read alone; this
manifest carries everything needed to serve. Loading builds the architectures from the manifest and fills
them from safetensors: nothing is ever unpickled, so a bundle from an untrusted place cannot run code.
``version`` is a content hash of the weights, the manifest and the tokenizer files.

Consumer usage (see docs/architecture.md)::

    bundle = Bundle.load(path, device="auto")
    text = bundle.text_input(title, description, brand)
    views = bundle.image_views(pil_rgb)                      # worker thread
    tp = bundle.predict_texts([text])[0]                    # inference thread (BERT + wide, pooled)
    ip = bundle.predict_images([views])[0]
    preds = bundle.combine(tp, [ip], text=text)              # {attr: AttributePrediction}
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from models.drift import DEFAULT_MIN_OBSERVATIONS, DEFAULT_WINDOW, DriftGuard
from models.ensemble import UNMENTIONED, AttributePrediction, Ensemble, PoolParams, average_image_probs
from models.image_model import ImagePreprocess, MultiTaskImageModel, build_backbone
from models.manifest import FORMAT, MANIFEST, Manifest
from models.taxonomy import Taxonomy
from models.text_clean import mentions
from models.text_clean import text_input as _text_input
from models.text_model import MultiTaskTextModel, load_encoder, load_tokenizer, wide_batch
from models.wide import WIDE_JSON, WIDE_WEIGHTS, WideTextModel

WEIGHTS = "weights.safetensors"
ENCODER_DIR = "text_encoder"
#: the text sources, in the order of the ``text_fusion`` pools' weights
TEXT_SOURCES = ("bert", "wide")
_TOKENIZER_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _hash_dir(path: Path, manifest: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    body = {k: v for k, v in manifest.items() if k != "version"}
    h.update(json.dumps(body, sort_keys=True).encode())
    files = [path / WEIGHTS, path / WIDE_JSON, path / WIDE_WEIGHTS, *sorted((path / ENCODER_DIR).glob("*"))]
    for f in files:
        if f.is_file():
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def save_bundle(
    out_dir: str | Path,
    *,
    name: str,
    taxonomy: Taxonomy,
    image_model: MultiTaskImageModel | None,
    image_preprocess: ImagePreprocess | None,
    image_backbone: Mapping[str, Any] | None,
    text_model: MultiTaskTextModel | None,
    encoder_dir: str | Path | None,
    text_max_len: int,
    ensemble: Ensemble,
    thresholds: Mapping[str, Mapping[str, float]],
    metrics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    wide: WideTextModel | None = None,
    text_fusion: Mapping[str, PoolParams] | None = None,
) -> str:
    """Write a bundle directory; returns its version (content hash).

    ``wide`` + ``text_fusion`` (per attribute, a pool over :data:`TEXT_SOURCES`) make the served text
    probabilities a fitted pool of the BERT model and the wide TF-IDF model; without them the text modality is
    the BERT model alone (older bundles).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    if image_model is not None:
        tensors.update({f"image.{k}": v.detach().cpu().contiguous().clone()
                        for k, v in image_model.state_dict().items()})
    if text_model is not None:
        tensors.update({f"text.{k}": v.detach().cpu().contiguous().clone()
                        for k, v in text_model.state_dict().items()})
        enc_out = out / ENCODER_DIR
        enc_out.mkdir(exist_ok=True)
        src = Path(encoder_dir) if encoder_dir else None
        for fn in _TOKENIZER_FILES:
            if src is not None and (src / fn).exists():
                shutil.copyfile(src / fn, enc_out / fn)
        text_model.encoder.config.to_json_file(str(enc_out / "config.json"))  # type: ignore[attr-defined]
    save_file(tensors, str(out / WEIGHTS))
    for stale in (WIDE_JSON, WIDE_WEIGHTS):  # a bundle rewritten without a wide model must not hash old files
        if wide is None and (out / stale).exists():
            (out / stale).unlink()
    wide_spec = None if wide is None else wide.save(out)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "attributes": taxonomy.names,
        "taxonomy": taxonomy.to_json(),
        "image": None if image_model is None else {
            "backbone": dict(image_backbone or {}),
            "hidden": image_model.hidden,
            "n_views": image_model.n_views,
            "pixel_stats": image_model.pixel_stats,
            "num_classes": {a: int(h.out_features) for a, h in image_model.heads.items()},
            "preprocess": (image_preprocess or ImagePreprocess()).to_json(),
        },
        "text": None if text_model is None else {
            "encoder": ENCODER_DIR,
            "max_len": text_max_len,
            "num_classes": {a: int(h.out_features) for a, h in text_model.heads.items()},
            **text_model.spec(),
            "input": "clean(title) . clean(brand) . clean(description)",
        },
        "wide": wide_spec,
        "text_fusion": None if wide is None else {
            "sources": list(TEXT_SOURCES), **{a: p.to_json() for a, p in (text_fusion or {}).items()},
        },
        "fusion": ensemble.to_json(),
        "thresholds": {a: dict(t) for a, t in thresholds.items()},
        "metrics": dict(metrics),
        **dict(extra or {}),
    }
    manifest["version"] = _hash_dir(out, manifest)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False))
    return str(manifest["version"])


class Bundle:
    """A loaded bundle: preprocessing, both models, fusion and thresholds (see module docstring)."""

    def __init__(self, path: Path, manifest: dict[str, Any], device: torch.device,
                 image_model: MultiTaskImageModel | None, text_model: MultiTaskTextModel | None,
                 tokenizer: Any, wide: WideTextModel | None = None) -> None:
        self.path = path
        self.manifest = manifest
        #: the typed manifest (``models.manifest``), the one reader of manifest.json
        self.spec = Manifest.from_json(manifest)
        self.device = device
        self.name: str = self.spec.name
        self.version: str = self.spec.version
        self.taxonomy = Taxonomy.from_json(self.spec.taxonomy)
        self.attributes: list[str] = list(self.spec.attributes)
        self.labels = {a: self.taxonomy.attributes[a].values for a in self.attributes}
        self.image_model = image_model
        self.text_model = text_model
        self.tokenizer = tokenizer
        img = self.spec.image or {}
        self.preprocess = ImagePreprocess.from_json(img["preprocess"]) if img else ImagePreprocess()
        self.image_decode_size: tuple[int, int] = self.preprocess.decode_size
        self.text_max_len = int((self.spec.text or {}).get("max_len", 64))
        self.ensemble = Ensemble.from_json(self.spec.fusion)
        self.thresholds: dict[str, dict[str, float]] = self.spec.thresholds
        self.wide = wide
        self.text_fusion: dict[str, PoolParams] = {a: PoolParams.from_json(d) for a, d in self.spec.text_fusion.items()}
        #: per attribute, the words whose absence from the text selects the ``-unmentioned`` fusion modes
        self.mention_words: dict[str, frozenset[str]] = {a: frozenset(w) for a, w in self.spec.mention_words.items()}
        self._lock = threading.Lock()

    # --- loading ---------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Bundle:
        """Build the architectures from the manifest and fill them from safetensors (never unpickles)."""
        p = Path(path)
        from models.verify import verify_bundle  # here: models.verify imports this module

        verify_bundle(p)  # content hash vs manifest version: a tampered or half-copied bundle never serves
        spec_all = Manifest.read(p)  # validates the format
        manifest = spec_all.raw
        dev = resolve_device(device)
        tensors = load_file(str(p / WEIGHTS), device="cpu")
        image_model = text_model = tokenizer = None
        if spec_all.image:
            spec = spec_all.image
            bb = spec["backbone"]
            backbone = build_backbone(bb["name"], pretrained=False, top_blocks=int(bb.get("top_blocks", 1)))
            image_model = MultiTaskImageModel(backbone, spec["num_classes"], hidden=int(spec["hidden"]),
                                              n_views=int(spec["n_views"]),
                                              pixel_stats=int(spec.get("pixel_stats", 0)))
            _load_prefixed(image_model, tensors, "image.")
            image_model.to(dev).eval()
            if dev.type == "cuda":
                image_model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if spec_all.text:
            spec = spec_all.text
            enc_dir = p / spec["encoder"]
            encoder = load_encoder(enc_dir, pretrained=False)
            text_model = MultiTaskTextModel(
                encoder, spec["num_classes"], train_layers=int(spec["train_layers"]), hidden=int(spec["hidden"]),
                wide_buckets=int(spec["wide_buckets"]), wide_dim=int(spec["wide_dim"]) or 64,
            )
            _load_prefixed(text_model, tensors, "text.")
            text_model.to(dev).eval()
            tokenizer = load_tokenizer(enc_dir)
        wide = WideTextModel.load(p, spec_all.wide) if spec_all.wide else None
        return cls(p, manifest, dev, image_model, text_model, tokenizer, wide)

    # --- preprocessing (any thread) --------------------------------------------------------------------
    def text_input(self, title: str | None, description: str | None = None, brand: str | None = None) -> str:
        """The cleaned model text (ftfy, HTML and boilerplate stripped), identical to training."""
        return _text_input(title, description, brand)

    def image_views(self, pil_rgb: Image.Image) -> torch.Tensor:
        """``[2, 3, S, S]`` CPU tensor from a photo of any size or aspect ratio (worker-thread safe)."""
        return self.preprocess.views(pil_rgb)

    def mentioned(self, text: str | None) -> dict[str, bool]:
        """Per attribute with mention words: does the model text name one of its values?"""
        return {a: mentions(text or "", w) for a, w in self.mention_words.items()}

    # --- inference (one inference thread) --------------------------------------------------------------
    def _probs(self, logits: Mapping[str, torch.Tensor]) -> list[dict[str, np.ndarray]]:
        probs = {a: torch.softmax(lg.float(), dim=-1).cpu().numpy() for a, lg in logits.items()}
        n = len(next(iter(probs.values())))
        return [{a: probs[a][i] for a in self.attributes if a in probs} for i in range(n)]

    def _autocast(self) -> Any:
        # bf16 autocast only on CUDA: on CPU it changed predictions measurably and was not faster here.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def predict_text_parts(self, texts: Sequence[str], batch_size: int = 128
                           ) -> list[dict[str, dict[str, np.ndarray]]]:
        """Per text ``{source: {attr: probs}}`` for each text source (``bert``, ``wide`` when the bundle has
        one) before pooling; an empty text gives ``{}``. Evaluation reports the sources apart from this."""
        out: list[dict[str, dict[str, np.ndarray]]] = [{} for _ in texts]
        if self.text_model is None:
            return out
        todo = [i for i, t in enumerate(texts) if t and t.strip()]
        with self._lock, torch.inference_mode(), self._autocast():
            for s in range(0, len(todo), batch_size):
                idx = todo[s : s + batch_size]
                batch = [texts[i] for i in idx]
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.text_max_len,
                                     return_tensors="pt")
                ids, mask = enc["input_ids"], enc["attention_mask"]
                kw: dict[str, torch.Tensor] = {}
                if self.text_model.wide is not None:
                    wi, wo = wide_batch(batch, self.text_model.wide_buckets)
                    kw = {"wide_ids": wi.to(self.device), "wide_offsets": wo.to(self.device)}
                logits = self.text_model(ids.to(self.device), mask.to(self.device), **kw)
                for i, p in zip(idx, self._probs(logits), strict=True):
                    out[i]["bert"] = p
                if self.wide is not None:
                    wp = self.wide.predict_proba(batch)
                    for r, i in enumerate(idx):
                        out[i]["wide"] = {a: wp[a][r] for a in self.attributes if a in wp}
        return out

    def pool_text(self, parts: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The served text probabilities of one text from its sources (``text_fusion`` per attribute)."""
        bert = parts.get("bert") or {}
        wide = parts.get("wide") or {}
        out: dict[str, np.ndarray] = {}
        for a, pb in bert.items():
            pool = self.text_fusion.get(a)
            if pool is None or a not in wide:
                out[a] = pb
            else:
                out[a] = pool.apply([pb, wide[a]])
        return out

    def predict_texts(self, texts: Sequence[str], batch_size: int = 128) -> list[dict[str, np.ndarray]]:
        """Per text ``{attr: probs}``: the BERT model pooled with the wide TF-IDF model (when the bundle has
        one); an empty text gives ``{}`` (no text evidence, so fusion uses the image)."""
        return [self.pool_text(p) if p else {} for p in self.predict_text_parts(texts, batch_size)]

    def predict_images(self, views: Sequence[torch.Tensor], batch_size: int = 64) -> list[dict[str, np.ndarray]]:
        """Per view stack ``{attr: probs}``."""
        out: list[dict[str, np.ndarray]] = []
        if self.image_model is None:
            return [{} for _ in views]
        cuda = self.device.type == "cuda"
        with self._lock, torch.inference_mode(), self._autocast():
            for s in range(0, len(views), batch_size):
                x = torch.stack(list(views[s : s + batch_size]))
                if cuda:
                    x = x.pin_memory().to(self.device, non_blocking=True)
                    b, v = x.shape[:2]
                    x = x.reshape(b * v, *x.shape[2:]).contiguous(memory_format=torch.channels_last)
                    x = x.reshape(b, v, *x.shape[1:])
                out.extend(self._probs(self.image_model(x)))
        return out

    def combine(self, text_probs: Mapping[str, np.ndarray] | None,
                image_probs: Sequence[Mapping[str, np.ndarray]], text: str | None = None,
                text_only: Collection[str] = ()) -> dict[str, AttributePrediction]:
        """Fuse per attribute: several images are averaged; no image -> text only; no text -> image only.

        ``text`` is the model text the text probabilities came from: when it names none of an attribute's
        values (no colour word in the title, say), the fusion's ``-unmentioned`` mode and threshold are used.
        ``value`` is ``None`` when the fused confidence is below the attribute's threshold for that input mode,
        or when neither modality said anything.

        ``text_only`` names attributes to fuse from the text alone (its ``text`` mode and threshold) even
        when there is a photo: what the drift guard (``models.drift.DriftGuard.text_only_attributes``) asks
        for while an attribute's image-text agreement is below its training-time band. The image's answer
        still appears as evidence. An attribute without text evidence keeps using the image, and so does a
        product whose text names none of the attribute's values (its ``-unmentioned`` fusion: the text has
        nothing to fall back to there).
        """
        mentioned = self.mentioned(text) if text is not None else {}
        out: dict[str, AttributePrediction] = {}
        for a in self.attributes:
            labels = self.labels[a]
            t = None if not text_probs else text_probs.get(a)
            imgs = [p[a] for p in image_probs if p and a in p]
            i = average_image_probs(imgs)
            ev_t = None if t is None else (labels[int(np.argmax(t))], float(np.max(t)))
            ev_i = None if i is None else (labels[int(np.argmax(i))], float(np.max(i)))
            if t is None and i is None:
                out[a] = AttributePrediction(None, 0.0, float(self.thresholds.get(a, {}).get("both", 1.0)))
                continue
            fused, mode = self.ensemble.fuse(a, t, i, mentioned.get(a, True), text_only=a in text_only)
            k = int(np.argmax(fused))
            conf = float(fused[k])
            thr = self.threshold(a, mode)
            out[a] = AttributePrediction(labels[k] if conf >= thr else None, conf, thr, ev_i, ev_t, fused)
        return out

    def drift_guard(self, window: int = DEFAULT_WINDOW, min_observations: int = DEFAULT_MIN_OBSERVATIONS
                    ) -> DriftGuard:
        """A fresh drift guard over this bundle's training-time agreement bands (``drift`` in the manifest;
        a bundle without them guards nothing). One per consumer; see :mod:`models.drift`."""
        return DriftGuard.from_manifest({"drift": self.spec.drift}, window=window, min_observations=min_observations)

    def threshold(self, attr: str, mode: str) -> float:
        """The attribute's confidence threshold for a fusion mode (an ``-unmentioned`` mode without its own
        threshold falls back to its plain mode's)."""
        thr = self.thresholds.get(attr, {})
        return float(thr.get(mode, thr.get(mode.removesuffix(UNMENTIONED), 0.5)))


def _load_prefixed(model: nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
    sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model.load_state_dict(sd, strict=True)
