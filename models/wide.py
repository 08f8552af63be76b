"""Wide linear text source: TF-IDF (word 1-2 grams + character n-grams) and one logistic regression per attribute.

Why a second text source next to the BERT model: on short catalogue titles a linear model over n-grams is very
hard to beat (the TF-IDF + logistic-regression baseline of ``models/baseline.py`` beat the fine-tuned
MiniLM + hashed n-gram model on colour and sub-category in the first real run). Its errors differ from
BERT's, so the two are pooled per attribute (``models/ensemble.py``); the served text probabilities
(``Bundle.predict_texts``) include it.

Storage without pickle: the vocabularies go to JSON (``wide.json``), idf vectors, coefficients and
intercepts to safetensors (``wide.safetensors``). Loading rebuilds ``TfidfVectorizer(vocabulary=...)``, sets
its ``idf_`` and computes ``softmax(X W^T + b)`` with numpy, so a loaded bundle gives exactly the fitted
model's probabilities and never unpickles anything. Coefficients are rounded to float16 right after fitting
(halving the bundle's share; the in-memory model uses the rounded values too, so fitted == loaded).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from models.ensemble import softmax

log = logging.getLogger(__name__)

WIDE_JSON = "wide.json"
WIDE_WEIGHTS = "wide.safetensors"
#: intercept of a class never seen in training: its probability is ~exp(-30), i.e. never predicted
_ABSENT = -30.0

#: word n-grams catch brand and product-type names, char n-grams catch spelling variants and compounds
#: ("tshirt" / "t-shirt", "navyblue") that a word vocabulary splits or misses.
DEFAULT_VECTORIZERS: dict[str, dict[str, Any]] = {
    "word": {"analyzer": "word", "ngram_range": [1, 2], "min_df": 2},
    "char": {"analyzer": "char_wb", "ngram_range": [2, 5], "min_df": 3},
}


def _vectorizer(cfg: Mapping[str, Any], vocabulary: Mapping[str, int] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(
        analyzer=cfg["analyzer"], ngram_range=tuple(cfg["ngram_range"]), min_df=1 if vocabulary else cfg["min_df"],
        sublinear_tf=True, lowercase=True, dtype=np.float32, vocabulary=dict(vocabulary) if vocabulary else None,
    )


def class_params(clf: LogisticRegression, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted logistic regression as ``(coef [K, F], intercept [K])`` over all ``n_classes`` of the attribute.

    Classes absent from the fit get a zero row and an intercept of -30 (never predicted); a two-class fit's
    single row is split into a symmetric pair so a softmax over the rows gives the classifier's probabilities.
    """
    n_features = clf.coef_.shape[1]
    coef = np.zeros((n_classes, n_features), dtype=np.float32)
    icpt = np.full(n_classes, _ABSENT, dtype=np.float32)
    cls_idx = clf.classes_.astype(np.int64)
    coef[cls_idx] = clf.coef_ if len(cls_idx) > 2 else np.vstack([-clf.coef_, clf.coef_]) / 2
    icpt[cls_idx] = clf.intercept_ if len(cls_idx) > 2 else np.array([-1, 1]) * clf.intercept_[0] / 2
    return coef, icpt


@dataclass
class WideTextModel:
    """Fitted vectorizers plus ``heads[attr] = (coef [K, F] float32, intercept [K] float32)``."""

    configs: dict[str, dict[str, Any]]
    vectorizers: dict[str, TfidfVectorizer]
    heads: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    c: dict[str, float] = field(default_factory=dict)

    # --- features ----------------------------------------------------------------------------------------
    def features(self, texts: Sequence[str]) -> sp.csr_matrix:
        """``[N, F]`` TF-IDF features: each vectorizer's rows are L2-normalised, then stacked side by side."""
        mats = [self.vectorizers[k].transform(list(texts)) for k in self.configs]
        return sp.hstack(mats, format="csr", dtype=np.float32)

    def predict_proba(self, texts: Sequence[str], x: sp.csr_matrix | None = None) -> dict[str, np.ndarray]:
        """``{attr: [N, K]}`` probabilities (float64); pass ``x`` to reuse computed features."""
        if x is None:
            x = self.features(texts)
        out: dict[str, np.ndarray] = {}
        for a, (coef, icpt) in self.heads.items():
            z = np.asarray(x @ coef.T, dtype=np.float64) + icpt.astype(np.float64)
            out[a] = softmax(z)
        return out

    # --- fitting -----------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, texts: Sequence[str], labels: np.ndarray, names: Sequence[str], num_classes: Mapping[str, int],
            c: float | Mapping[str, float] = 10.0, configs: Mapping[str, Mapping[str, Any]] | None = None,
            max_iter: int = 300) -> WideTextModel:
        """Fit the vectorizers on ``texts`` and one multinomial logistic regression per attribute.

        ``labels`` is ``[N, A]`` in ``names`` order with ``-1`` for a missing label (that row is left out of
        that attribute's fit). An attribute with fewer than two classes present gets no head.
        """
        cfgs = {k: dict(v) for k, v in (configs or DEFAULT_VECTORIZERS).items()}
        vecs: dict[str, TfidfVectorizer] = {}
        for k, cfg in cfgs.items():
            v = _vectorizer(cfg)
            try:
                v.fit(list(texts))
            except ValueError:  # min_df too high for a tiny corpus: keep every n-gram
                v = _vectorizer({**cfg, "min_df": 1}).fit(list(texts))
            vecs[k] = v
        model = cls(cfgs, vecs)
        model.fit_heads(texts, labels, names, num_classes, c=c, max_iter=max_iter)
        return model

    def fit_heads(self, texts: Sequence[str], labels: np.ndarray, names: Sequence[str],
                  num_classes: Mapping[str, int], c: float | Mapping[str, float] = 10.0, max_iter: int = 300) -> None:
        """Fit (or refit) one logistic regression per attribute in ``names`` on the fitted vectorizers' features.

        ``labels`` is ``[N, A]`` in ``names`` order, ``-1`` where missing. ``enrich add-heads`` calls this alone:
        the vocabularies stay those of the bundle's training texts, so the existing heads are unchanged.
        """
        t0 = time.monotonic()
        x = self.features(texts)
        log.info("wide: %d texts, %d features (%.1f s)", x.shape[0], x.shape[1], time.monotonic() - t0)
        for j, a in enumerate(names):
            y = labels[:, j]
            m = y >= 0
            present = np.unique(y[m])
            if len(present) < 2:
                continue
            ca = float(c[a]) if isinstance(c, Mapping) else float(c)
            t1 = time.monotonic()
            clf = LogisticRegression(C=ca, max_iter=max_iter)
            clf.fit(x[np.nonzero(m)[0]], y[m])
            coef, icpt = class_params(clf, int(num_classes[a]))
            # round once to the stored precision so the fitted and the loaded model agree exactly
            self.heads[a] = (coef.astype(np.float16).astype(np.float32), icpt)
            self.c[a] = ca
            log.info("wide %s: %d rows, %d classes, C=%g (%.1f s)", a, int(m.sum()), len(present), ca,
                     time.monotonic() - t1)

    # --- storage (JSON + safetensors, never pickle) ------------------------------------------------------
    def save(self, out_dir: str | Path) -> dict[str, Any]:
        """Write ``wide.json`` + ``wide.safetensors`` into ``out_dir``; returns the manifest entry."""
        out = Path(out_dir)
        tensors: dict[str, torch.Tensor] = {}
        vocab: dict[str, dict[str, int]] = {}
        for k, v in self.vectorizers.items():
            vocab[k] = {t: int(i) for t, i in v.vocabulary_.items()}
            tensors[f"idf.{k}"] = torch.from_numpy(np.ascontiguousarray(v.idf_, dtype=np.float32))
        for a, (coef, icpt) in self.heads.items():
            tensors[f"coef.{a}"] = torch.from_numpy(np.ascontiguousarray(coef, dtype=np.float16))
            tensors[f"intercept.{a}"] = torch.from_numpy(np.ascontiguousarray(icpt, dtype=np.float32))
        save_file(tensors, str(out / WIDE_WEIGHTS))
        (out / WIDE_JSON).write_text(json.dumps({"vectorizers": self.configs, "vocabulary": vocab}))
        return {"json": WIDE_JSON, "weights": WIDE_WEIGHTS, "vectorizers": self.configs,
                "attributes": list(self.heads), "c": self.c,
                "n_features": int(sum(len(v) for v in vocab.values()))}

    @classmethod
    def load(cls, path: str | Path, spec: Mapping[str, Any] | None = None) -> WideTextModel:
        """Rebuild from ``wide.json`` (vocabularies) and ``wide.safetensors`` (idf, coef, intercept)."""
        p = Path(path)
        meta = json.loads((p / (spec or {}).get("json", WIDE_JSON)).read_text())
        tensors = load_file(str(p / (spec or {}).get("weights", WIDE_WEIGHTS)), device="cpu")
        configs = {k: dict(v) for k, v in meta["vectorizers"].items()}
        vecs: dict[str, TfidfVectorizer] = {}
        for k, cfg in configs.items():
            v = _vectorizer(cfg, meta["vocabulary"][k])
            v.idf_ = tensors[f"idf.{k}"].numpy()
            vecs[k] = v
        heads: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key in tensors:
            if key.startswith("coef."):
                a = key[len("coef."):]
                heads[a] = (tensors[key].float().numpy(), tensors[f"intercept.{a}"].numpy())
        c = {str(k): float(v) for k, v in ((spec or {}).get("c") or {}).items()}
        return cls(configs, vecs, heads, c)
