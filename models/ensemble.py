"""Learned fusion of image and text probabilities, per attribute, and confidence thresholds.

Why log-linear pooling of the two models' probabilities (``softmax(a_t log p_t + a_i log p_i + b)``) instead of
octopod's ensemble over concatenated features: it is fitted on validation data in seconds, it has a natural
answer when a modality is missing (the separately fitted text-only / image-only calibrations), and it cannot
crash on CPU because it is three numbers and a bias vector per attribute stored as JSON. The weights tell
which modality each attribute trusts (colour leans on the image, season on neither).

Thresholds: one per attribute and input mode, the lowest confidence at which validation precision reaches a
target, instead of ShopRunner's single 0.5 for everything; downstream search would rather get "unknown" than
a wrong colour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_EPS = 1e-7


@dataclass
class AttributePrediction:
    """One attribute's fused prediction with the evidence from each modality."""

    value: str | None
    confidence: float
    threshold: float
    image: tuple[str, float] | None = None
    text: tuple[str, float] | None = None
    probs: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """``{"value", "confidence", "threshold", "evidence": {"image", "text"}}`` (the event contract)."""

        def ev(x: tuple[str, float] | None) -> dict[str, Any] | None:
            return None if x is None else {"value": x[0], "confidence": float(x[1])}

        return {
            "value": self.value,
            "confidence": float(self.confidence),
            "threshold": float(self.threshold),
            "evidence": {"image": ev(self.image), "text": ev(self.text)},
        }


def _log(p: np.ndarray) -> np.ndarray:
    """Log-probabilities, clipped so a zero probability cannot become -inf."""
    return np.log(np.clip(p, _EPS, 1.0))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits, shifted by the row maximum so large logits cannot overflow."""
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class FusionParams:
    """Per attribute and mode: modality weights, optional per-class weight offsets, and a class bias.

    ``z_k = b_k + (w_t + v_t[k]) log p_t[k] + (w_i + v_i[k]) log p_i[k]``; ``kind`` names the candidate the
    cross-validated selection (:func:`select_pool`) chose, so the manifest says what each attribute trusts.
    """

    text_weight: float = 1.0
    image_weight: float = 1.0
    bias: list[float] | None = None
    text_class_weights: list[float] | None = None
    image_class_weights: list[float] | None = None
    kind: str = ""

    def to_json(self) -> dict[str, Any]:
        """Manifest form (per-class weights and ``kind`` only when set, so old manifests read the same)."""
        d: dict[str, Any] = {"text_weight": self.text_weight, "image_weight": self.image_weight, "bias": self.bias}
        if self.text_class_weights is not None:
            d["text_class_weights"] = self.text_class_weights
        if self.image_class_weights is not None:
            d["image_class_weights"] = self.image_class_weights
        if self.kind:
            d["kind"] = self.kind
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FusionParams:
        """Inverse of :meth:`to_json`."""
        return cls(float(d["text_weight"]), float(d["image_weight"]), d.get("bias"), d.get("text_class_weights"),
                   d.get("image_class_weights"), str(d.get("kind", "")))

    @classmethod
    def from_pool(cls, pool: PoolParams, sources: Sequence[str]) -> FusionParams:
        """A fitted :class:`PoolParams` over ``sources`` (a subset of ``("text", "image")``, in that order)."""
        w = dict(zip(sources, pool.weights, strict=True))
        cw = dict(zip(sources, pool.class_weights, strict=True)) if pool.class_weights is not None else {}
        return cls(w.get("text", 1.0), w.get("image", 1.0), pool.bias, cw.get("text"), cw.get("image"), pool.kind)

    def pool(self, sources: Sequence[str]) -> PoolParams:
        """The same numbers as a :class:`PoolParams` over ``sources`` (a subset of ``("text", "image")``)."""
        w = {"text": self.text_weight, "image": self.image_weight}
        cw = {"text": self.text_class_weights, "image": self.image_class_weights}
        per_class = [cw[s] for s in sources]
        k = next((len(c) for c in per_class if c is not None), 0)
        return PoolParams([w[s] for s in sources], self.bias,
                          None if not k else [c if c is not None else [0.0] * k for c in per_class], self.kind)


#: Suffix of the fusion modes used when the text names none of the attribute's values (``fuse(...,
#: mentioned=False)``): e.g. ``both-unmentioned`` for a title without a colour word next to a photo.
UNMENTIONED = "-unmentioned"


class Ensemble:
    """``params[attr][mode]`` -> fused probabilities; modes ``both`` / ``text`` / ``image``, and optionally
    ``both-unmentioned`` / ``text-unmentioned`` for texts that name none of the attribute's values."""

    def __init__(self, params: Mapping[str, Mapping[str, FusionParams]] | None = None) -> None:
        self.params: dict[str, dict[str, FusionParams]] = {a: dict(m) for a, m in (params or {}).items()}

    def fuse(self, attr: str, text: np.ndarray | None, image: np.ndarray | None, mentioned: bool = True,
             text_only: bool = False) -> tuple[np.ndarray, str]:
        """Fused probabilities and the mode used. Needs at least one modality.

        ``mentioned=False`` (the text names none of the attribute's values) selects the ``-unmentioned``
        variant of the mode when the bundle has one: its text weight was learnt on such texts, so a title
        without a colour word no longer outvotes the photo.

        ``text_only`` (the drift guard switched the attribute) leaves the image out where there is a text that
        names one of the attribute's values; without a text, or with one that names none (the photo-led
        ``-unmentioned`` fusion), the image stays: the text has nothing to fall back to there.
        """
        if text is None and image is None:
            raise ValueError("fuse needs text or image probabilities")
        if text_only and text is not None and mentioned:
            image = None
        mode = "both" if text is not None and image is not None else ("text" if text is not None else "image")
        modes = self.params.get(attr, {})
        if not mentioned and text is not None and mode + UNMENTIONED in modes:
            mode += UNMENTIONED
        sources = [s for s, p in (("text", text), ("image", image)) if p is not None]
        pool = modes.get(mode, FusionParams()).pool(sources)
        return pool.apply([p for p in (text, image) if p is not None]), mode

    def to_json(self) -> dict[str, Any]:
        """Manifest form."""
        return {a: {m: p.to_json() for m, p in ms.items()} for a, ms in self.params.items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Ensemble:
        """Inverse of :meth:`to_json`."""
        return cls({a: {m: FusionParams.from_json(p) for m, p in ms.items()} for a, ms in d.items()})


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target_precision: float,
                     min_support: int = 20) -> float:
    """Lowest confidence ``t`` with precision(conf >= t) >= target, counting only ``t`` with enough support.

    When no such ``t`` exists the highest confidence seen is returned (the attribute then answers rarely):
    an honest "unknown" beats a wrong value.
    """
    if len(confidence) == 0:
        return 0.5
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    cum_prec = np.cumsum(correct[order]) / np.arange(1, len(conf) + 1)
    ok = np.nonzero((cum_prec >= target_precision) & (np.arange(1, len(conf) + 1) >= min(min_support, len(conf))))[0]
    if len(ok) == 0:
        return float(min(conf[0], 0.999))
    return float(conf[ok[-1]])


def precision_coverage(confidence: np.ndarray, correct: np.ndarray, threshold: float, n_total: int
                       ) -> tuple[float, float]:
    """Precision among predictions with confidence >= threshold, and their share of ``n_total`` products."""
    m = confidence >= threshold
    covered = int(m.sum())
    prec = float(correct[m].mean()) if covered else 0.0
    return prec, covered / max(1, n_total)


def average_image_probs(probs: Sequence[np.ndarray]) -> np.ndarray | None:
    """Several photos of one product: average their probabilities; none: ``None``."""
    if not probs:
        return None
    return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in probs]), axis=0)


# --- cross-validated pooling of any number of sources -----------------------------------------------------
@dataclass
class PoolParams:
    """Log-linear pool of ``S`` sources: ``z_k = b_k + sum_s (w_s + v_s[k]) log p_s[k]``, ``softmax(z)``.

    Used twice: the served text modality pools the BERT model and the wide TF-IDF model
    (``Bundle.predict_texts``), and :class:`FusionParams` is built from one for image + text.
    """

    weights: list[float]
    bias: list[float] | None = None
    class_weights: list[list[float]] | None = None
    kind: str = ""

    def logits(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        """``[..., K]`` pooled logits of the sources' probabilities (same order as ``weights``)."""
        z: Any = 0.0 if self.bias is None else np.asarray(self.bias, dtype=np.float64)
        for s, p in enumerate(probs):
            w = self.weights[s] + (0.0 if self.class_weights is None else np.asarray(self.class_weights[s]))
            z = z + w * _log(np.asarray(p, dtype=np.float64))
        return np.asarray(z)

    def apply(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        """Pooled probabilities."""
        return softmax(self.logits(probs))

    def to_json(self) -> dict[str, Any]:
        """Manifest form."""
        return {"weights": self.weights, "bias": self.bias, "class_weights": self.class_weights, "kind": self.kind}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PoolParams:
        """Inverse of :meth:`to_json`."""
        return cls([float(w) for w in d["weights"]], d.get("bias"), d.get("class_weights"), str(d.get("kind", "")))


#: Candidate pools tried by :func:`select_pool` (each fits one weight per source): (name, fit a class bias,
#: fit per-class weight offsets, L2 strength on bias and offsets). Regularised much harder than the first fusion (1e-3),
#: whose class bias over ~90 article types fitted on ~1k products with a photo did not transfer to test.
CANDIDATES: tuple[tuple[str, bool, bool, float], ...] = (
    ("weights", False, False, 0.0),
    ("weights+bias", True, False, 1e-2),
    ("weights+bias+class", True, True, 1e-2),
)

#: The bounded-weight candidate: source weights only, every source after the first (the image, in a text +
#: image fusion) capped at this weight, so however well it fitted, it can only tip close calls of the first.
BOUNDED_WEIGHT = 0.5

#: How sure the out-of-fold evidence must be before a fitted pool replaces the best single source (one-sided
#: normal quantile, 1.645: 5%). A pool is kept only where, judged on the products where it and that source
#: disagree, a test set as large as the validation rows would still find it at most one product behind the
#: source with probability ``1 - 5%``: ``(wins - losses + 1) >= PROOF_Z * sqrt(2 (wins + losses))``, the 2 for
#: the noise of the validation estimate and of the test it must hold on. See :func:`select_pool`.
PROOF_Z = 1.645


def fit_pool(logps: Sequence[np.ndarray], y: np.ndarray, *, fit_bias: bool, per_class: bool, l2: float,
             weight_l2: float = 1e-3, steps: int = 100, kind: str = "", bound_rest: float | None = None
             ) -> PoolParams:
    """Minimise the pooled NLL (+ L2 on bias / per-class offsets, a pull of the weights towards 1).

    Analytic gradient + scipy's L-BFGS-B with the weights bounded to [0, 20] (a source never counts
    negatively); ``bound_rest`` caps every source after the first at that weight.
    Why not torch LBFGS (the first fusion's fitter): ``select_pool`` runs ~16 fits per attribute
    and stage, and torch's per-step overhead made that a minute of the demo's 3-minute budget.
    """
    from scipy.optimize import minimize

    lp = np.stack([np.asarray(x, dtype=np.float64) for x in logps])  # [S, N, K]
    s_n, n, k = lp.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0

    def unpack(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = theta[:s_n]
        b = theta[s_n : s_n + k] if fit_bias else np.zeros(k)
        v = theta[s_n + (k if fit_bias else 0):].reshape(s_n, k) if per_class else np.zeros((s_n, k))
        return w, b, v

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b, v = unpack(theta)
        z = b + np.einsum("snk,sk->nk", lp, w[:, None] + v)
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        loss = -float((logp * onehot).sum()) / n + weight_l2 * float(((w - 1) ** 2).sum())
        g = (np.exp(logp) - onehot) / n
        gl = np.einsum("nk,snk->sk", g, lp)  # d loss / d (w_s + v_s[k])
        grads = [gl.sum(1) + 2 * weight_l2 * (w - 1)]
        if fit_bias:
            loss += l2 * float((b**2).sum())
            grads.append(g.sum(0) + 2 * l2 * b)
        if per_class:
            loss += l2 * float((v**2).sum())
            grads.append((gl + 2 * l2 * v).ravel())
        return loss, np.concatenate(grads)

    w0 = np.ones(s_n) if bound_rest is None else np.array([1.0] + [min(1.0, bound_rest)] * (s_n - 1))
    theta0 = np.concatenate([w0, np.zeros(k if fit_bias else 0), np.zeros(s_n * k if per_class else 0)])
    wb = [(0.0, 20.0)] + [(0.0, 20.0 if bound_rest is None else bound_rest)] * (s_n - 1)
    bounds = wb + [(None, None)] * (len(theta0) - s_n)
    theta = minimize(f, theta0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": steps}).x if n \
        else theta0
    w, b, v = unpack(theta)
    return PoolParams([float(x) for x in w], [float(x) for x in b] if fit_bias else None,
                      [[float(x) for x in row] for row in v] if per_class else None, kind)


@dataclass
class PoolSelection:
    """What :func:`select_pool` chose, its out-of-fold probabilities, and every candidate's CV scores."""

    params: PoolParams
    oof: np.ndarray
    scores: dict[str, dict[str, float]]


def select_pool(probs: Sequence[np.ndarray], labels: np.ndarray, names: Sequence[str] | None = None,
                folds: int = 5, seed: int = 0, groups: Sequence[str] | None = None,
                fold_keys: Sequence[Any] | None = None) -> PoolSelection:
    """Choose how to pool ``probs`` (each ``[N, K]``) by ``folds``-fold cross-validation on these rows.

    Candidates: each source alone, untouched (the first source alone, the text in a text + image fusion, is
    always one), the fitted pools of :data:`CANDIDATES`, and the bounded-weight pool (:data:`BOUNDED_WEIGHT`).

    ``groups`` names each row's condition (e.g. the photo as it is, the photo at 3:4 letterboxed: the same
    product's text next to each version of its photo) and ``fold_keys`` the product, so every version of a
    product is in the same fold. The rule, so a pool cannot be dragged below its best single source by a
    shift one of the groups contains: per group, a candidate's out-of-fold hits minus the best single
    source's hits in that group; a candidate whose worst group is more than one product behind is ranked
    below every candidate within one product in all groups, and among those by how far behind its worst
    group is. Then the highest out-of-fold accuracy over all rows, then lower NLL, then the simpler
    candidate. With one group this is "the highest out-of-fold accuracy" (the best single source is a
    candidate). The winner is refitted on all rows. ``oof`` holds its out-of-fold probabilities: a later
    stage (the image + text fusion stacked on the served text) is fitted on them.

    A fitted pool must also *prove* its gain over the best single source (the source first by the rule
    above): out of fold, on the products where the two disagree, it must win often enough that the gain
    would survive a fresh test set of the same size (:data:`PROOF_Z`, :func:`pool_is_proven`); an unproven
    pool ranks below that source. Why: the gains that the rule above accepts by a handful of products are
    noise as often as not, and on a test set of the same size they turned into losses of 3-8 products
    (gender and usage on the time split, season on the rare years); the one-product tolerance is a tie
    rule, not a margin for noise. A pool that wins by a clear margin (master category's photo on later
    years) passes easily, so the proof costs only gains too small to tell from chance.
    """
    names = list(names or [f"s{i}" for i in range(len(probs))])
    y = np.asarray(labels, dtype=np.int64)
    n, k = len(y), int(probs[0].shape[1])
    lps = [_log(np.asarray(p, dtype=np.float64)) for p in probs]
    rng = np.random.default_rng(seed)
    nf = max(2, min(folds, n))
    if fold_keys is not None and n:
        uniq = {key: i for i, key in enumerate(dict.fromkeys(fold_keys))}
        perm = rng.permutation(len(uniq)) % nf
        fold_of = np.array([perm[uniq[key]] for key in fold_keys], dtype=np.int64)
    else:
        fold_of = rng.permutation(n) % nf if n else np.zeros(0, dtype=np.int64)
    grp = np.asarray(list(groups) if groups is not None else [""] * n)
    cands: list[tuple[str, Any]] = []
    for s, nm in enumerate(names):
        onehot = [1.0 if t == s else 0.0 for t in range(len(probs))]
        cands.append((f"only:{nm}" if len(probs) > 1 else "identity", PoolParams(onehot, kind=f"only:{nm}"
                                                                                   if len(probs) > 1 else "identity")))
    n_single = len(cands)
    for spec in CANDIDATES:
        cands.append((spec[0], (*spec, None)))
    if len(probs) > 1:
        cands.append(("weights-bounded", ("weights-bounded", False, False, 0.0, BOUNDED_WEIGHT)))
    scores: dict[str, dict[str, float]] = {}
    oofs: dict[str, np.ndarray] = {}
    hits: dict[str, dict[str, int]] = {}
    for cname, c in cands:
        oof = np.zeros((n, k), dtype=np.float64)
        if isinstance(c, PoolParams):
            oof = c.apply(probs) if n else oof
        else:
            _, fb, pc, l2, bound = c
            for f in np.unique(fold_of):
                tr, te = np.nonzero(fold_of != f)[0], np.nonzero(fold_of == f)[0]
                pp = fit_pool([lp[tr] for lp in lps], y[tr], fit_bias=fb, per_class=pc, l2=l2, kind=cname,
                              bound_rest=bound)
                oof[te] = pp.apply([np.asarray(p)[te] for p in probs])
        oofs[cname] = oof
        right = oof.argmax(1) == y if n else np.zeros(0, dtype=bool)
        hits[cname] = {str(g): int(right[grp == g].sum()) for g in np.unique(grp)}
        acc = float(right.mean()) if n else 0.0
        nll = float(-np.log(np.clip(oof[np.arange(n), y], _EPS, 1.0)).mean()) if n else 0.0
        scores[cname] = {"accuracy": acc, "nll": nll}
        if len(hits[cname]) > 1:
            scores[cname].update({f"hits:{g}": float(h) for g, h in hits[cname].items()})
    best_single = {g: max(hits[cands[i][0]][g] for i in range(n_single)) for g in hits[cands[0][0]]}

    def behind(cname: str) -> int:
        """How many products the candidate's worst group is behind the best single source there (0: within
        one product in every group)."""
        worst = min((hits[cname][g] - best_single[g] for g in best_single), default=0)
        return min(0, worst + 1)

    ref = min(range(n_single), key=lambda i: (-behind(cands[i][0]), -scores[cands[i][0]]["accuracy"],
                                              scores[cands[i][0]]["nll"], i))
    ref_right = oofs[cands[ref][0]].argmax(1) == y if n else np.zeros(0, dtype=bool)
    copies = n / max(1, len(set(fold_keys))) if fold_keys is not None and n else 1.0
    unproven: dict[str, bool] = {}
    for i, (cname, _) in enumerate(cands):
        right = oofs[cname].argmax(1) == y if n else np.zeros(0, dtype=bool)
        wins, losses = int((right & ~ref_right).sum()), int((ref_right & ~right).sum())
        unproven[cname] = i >= n_single and not pool_is_proven(wins / copies, losses / copies)
        if i >= n_single:
            scores[cname].update({"wins_vs_best_single": float(wins), "losses_vs_best_single": float(losses)})

    order = sorted(range(len(cands)), key=lambda i: (-behind(cands[i][0]), unproven[cands[i][0]],
                                                     -scores[cands[i][0]]["accuracy"], scores[cands[i][0]]["nll"], i))
    best_name, best = cands[order[0]]
    if isinstance(best, PoolParams):
        params = best
    else:
        _, fb, pc, l2, bound = best
        params = fit_pool(lps, y, fit_bias=fb, per_class=pc, l2=l2, kind=best_name, bound_rest=bound)
    return PoolSelection(params, oofs[best_name], scores)


def pool_is_proven(wins: float, losses: float, z: float | None = None) -> bool:
    """Whether a pool that beats a source on ``wins`` products and loses on ``losses`` (out of fold, per
    product) would, with probability ``Phi(z)``, be no more than one product behind it on a test set of the
    same size: the gain's estimate and the test's own draw each have variance ``wins + losses``. ``z``
    defaults to :data:`PROOF_Z`.

    A pool that is right no more often than the source is never proven, however it scores on NLL: its
    out-of-fold answers are the source's, and refitted on all rows it only moves answers by chance.
    """
    z = PROOF_Z if z is None else z
    return wins > losses and wins - losses + 1.0 >= z * float(np.sqrt(2.0 * (wins + losses)))


def fit_mode(probs: Mapping[str, np.ndarray], labels: np.ndarray, target_precision: float,
             fixed: FusionParams | None = None, groups: Sequence[str] | None = None,
             fold_keys: Sequence[Any] | None = None) -> tuple[FusionParams, float, dict[str, Any]]:
    """One attribute's fusion for one input mode: ``probs`` maps ``"text"`` and/or ``"image"`` to ``[N, K]``.

    The pool is chosen by :func:`select_pool`; the threshold and the reported validation metrics come from
    its *out-of-fold* probabilities. With ``fixed``, that pool is kept and only the threshold is fitted.
    ``groups`` / ``fold_keys``: see :func:`select_pool` (rows of shifted photos next to the photos as they are).
    Returns ``(params, threshold, metrics)``.
    """
    srcs = [s for s in ("text", "image") if s in probs]
    y = np.asarray(labels, dtype=np.int64)
    if fixed is not None:
        params, scores = fixed, {}
        oof = fixed.pool(srcs).apply([probs[s] for s in srcs])
    else:
        sel = select_pool([probs[s] for s in srcs], y, srcs, groups=groups, fold_keys=fold_keys)
        params, scores, oof = FusionParams.from_pool(sel.params, srcs), sel.scores, sel.oof
    conf, pred = oof.max(1), oof.argmax(1)
    correct = (pred == y).astype(np.float64)
    thr = choose_threshold(conf, correct, target_precision)
    prec, cov = precision_coverage(conf, correct, thr, len(y))
    metrics = {"n": len(y), "accuracy": float(correct.mean()), "precision": prec, "coverage": cov,
               "kind": params.kind, "text_weight": params.text_weight, "image_weight": params.image_weight,
               "cv": {c: {m: round(v, 5) for m, v in sc.items()} for c, sc in scores.items()}}
    return params, thr, metrics
