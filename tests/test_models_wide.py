"""The wide TF-IDF text model (pickle-free round trip, served through the bundle) and the cross-validated pool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from models.bundle import Bundle, save_bundle
from models.ensemble import Ensemble, FusionParams, PoolParams, select_pool
from models.image_model import ImagePreprocess, MultiTaskImageModel, build_backbone
from models.taxonomy import Taxonomy
from models.testing import tiny_bert_dir
from models.text_model import MultiTaskTextModel, load_encoder
from models.wide import WIDE_JSON, WIDE_WEIGHTS, WideTextModel

COLORS = ("black", "blue", "red")
GENDERS = ("men", "women")


def _corpus(n: int, seed: int) -> tuple[list[str], list[dict[str, str]]]:
    rng = np.random.default_rng(seed)
    kinds = ("shirt", "tshirt", "jeans", "dress", "kurta")
    texts, rows = [], []
    for _ in range(n):
        c, g, k = rng.choice(COLORS), rng.choice(GENDERS), rng.choice(kinds)
        texts.append(f"Brand{rng.integers(0, 9)} {g.title()} {c.title()} {k.title()}")
        rows.append({"color": str(c), "gender": str(g)})
    return texts, rows


@pytest.fixture(scope="module")
def fitted() -> tuple[WideTextModel, Taxonomy, list[str], np.ndarray]:
    texts, rows = _corpus(200, 0)
    tax = Taxonomy.build(rows, ["color", "gender"], min_count=1)
    y = np.array([[tax.attributes[a].encode(r[a]) for a in tax.names] for r in rows])
    y[:5, 0] = -1  # missing labels are left out of that attribute's fit
    return WideTextModel.fit(texts, y, tax.names, tax.num_classes(), c=10.0), tax, texts, y


def test_wide_round_trip_without_pickle_gives_identical_probabilities(
    fitted: tuple[WideTextModel, Taxonomy, list[str], np.ndarray], tmp_path: Path,
) -> None:
    wide, tax, texts, y = fitted
    spec = wide.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([WIDE_JSON, WIDE_WEIGHTS])
    assert b"\x80\x04" not in (tmp_path / WIDE_WEIGHTS).read_bytes()[:64]  # safetensors header, not a pickle
    assert set(json.loads((tmp_path / WIDE_JSON).read_text())["vocabulary"]) == {"word", "char"}
    loaded = WideTextModel.load(tmp_path, spec)
    new = ["Women Red Dress", "men black jeans by Brand3", "something unseen entirely"]
    pa, pb = wide.predict_proba(texts + new), loaded.predict_proba(texts + new)
    for a in tax.names:
        np.testing.assert_array_equal(pa[a], pb[a])
        assert pa[a].shape == (len(texts) + 3, len(tax.attributes[a].values))
    # the same model as sklearn's own predict_proba (up to the float16 rounding of the stored coefficients)
    x = wide.features(texts)
    m = y[:, 0] >= 0
    ref = LogisticRegression(C=10.0, max_iter=300).fit(x[np.nonzero(m)[0]], y[m, 0]).predict_proba(x)
    np.testing.assert_allclose(pa["color"][: len(texts)], ref, atol=2e-3)
    assert (pa["color"][: len(texts)].argmax(1)[m] == y[m, 0]).mean() > 0.95


def test_bundle_serves_the_wide_pool(fitted: tuple[WideTextModel, Taxonomy, list[str], np.ndarray],
                                     tmp_path: Path) -> None:
    wide, tax, texts, _ = fitted
    enc = tiny_bert_dir(tmp_path / "bert")
    torch.manual_seed(0)
    image = MultiTaskImageModel(build_backbone("tiny"), tax.num_classes(), hidden=16)
    text = MultiTaskTextModel(load_encoder(enc), tax.num_classes(), train_layers=1, hidden=16, wide_buckets=64,
                              wide_dim=8)
    pools = {a: PoolParams([0.5, 1.5], [0.1] * len(tax.attributes[a].values), kind="weights+bias")
             for a in tax.names}
    save_bundle(tmp_path / "b", name="w", taxonomy=tax, image_model=image, image_preprocess=ImagePreprocess(size=32),
                image_backbone={"name": "tiny", "top_blocks": 1}, text_model=text, encoder_dir=enc, text_max_len=16,
                ensemble=Ensemble({a: {"both": FusionParams()} for a in tax.names}),
                thresholds={a: {"both": 0.2, "text": 0.2, "image": 0.2} for a in tax.names}, metrics={},
                wide=wide, text_fusion=pools)
    files = [p for p in (tmp_path / "b").rglob("*") if p.is_file()]
    assert all(f.suffix in (".json", ".safetensors", ".txt") for f in files), files
    b = Bundle.load(tmp_path / "b", device="cpu")
    assert b.wide is not None and b.text_fusion["color"].weights == [0.5, 1.5]
    parts = b.predict_text_parts([texts[0], ""])
    assert set(parts[0]) == {"bert", "wide"} and parts[1] == {}
    served = b.predict_texts([texts[0], ""])
    assert served[1] == {}
    np.testing.assert_array_equal(parts[0]["wide"]["color"], wide.predict_proba([texts[0]])["color"][0])
    expect = pools["color"].apply([parts[0]["bert"]["color"], parts[0]["wide"]["color"]])
    np.testing.assert_allclose(served[0]["color"], expect, rtol=1e-12)
    assert abs(float(served[0]["color"].sum()) - 1) < 1e-9
    # the consumer's contract is unchanged
    pred = b.combine(served[0], [])
    assert set(pred["color"].to_json()) == {"value", "confidence", "threshold", "evidence"}


def _sources(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    good = rng.dirichlet(np.ones(4), n) * 0.5
    good[np.arange(n), y] += 0.5 * (rng.random(n) < 0.8)  # right 80% of the time, confidently
    good[np.arange(n), rng.integers(0, 4, n)] += 0.5 * (good.sum(1) < 0.75)
    good /= good.sum(1, keepdims=True)
    noise = rng.dirichlet(np.ones(4) * 0.3, n)  # confident noise: the trap for an untrained product of experts
    return y, good, noise


def test_pool_never_worse_than_the_informative_source_when_the_other_is_noise() -> None:
    y, good, noise = _sources(600, 0)
    sel = select_pool([noise, good], y, ["noise", "good"])
    yt, gt, nt = _sources(2000, 1)
    fused = sel.params.apply([nt, gt]).argmax(1)
    acc_good, acc_fused = float((gt.argmax(1) == yt).mean()), float((fused == yt).mean())
    naive = float(((np.log(gt) + np.log(nt)).argmax(1) == yt).mean())
    assert acc_fused >= acc_good - 0.005, (acc_fused, acc_good, sel.params)
    assert naive < acc_good - 0.05  # equal weights would have been hurt by the noise
    assert sel.params.weights[1] > sel.params.weights[0]
    assert set(sel.scores) >= {"only:noise", "only:good", "weights", "weights+bias"}
    assert sel.oof.shape == (600, 4)


def test_pool_beats_each_source_when_they_are_complementary() -> None:
    rng = np.random.default_rng(2)
    n = 1500
    y = rng.integers(0, 4, n)

    def src(ok: np.ndarray) -> np.ndarray:
        # calibrated: confident when right, hesitant when wrong, so the pool can follow the surer source
        p = rng.dirichlet(np.ones(4), n) * 0.4
        p[np.arange(n), np.where(ok, y, rng.integers(0, 4, n))] += np.where(ok, 0.6, 0.15)
        return p / p.sum(1, keepdims=True)

    a, b = src(rng.random(n) < 0.7), src(rng.random(n) < 0.7)
    sel = select_pool([a, b], y[:n], ["a", "b"])
    assert not sel.params.kind.startswith("only:")
    acc = float((sel.oof.argmax(1) == y).mean())
    assert acc > max(float((a.argmax(1) == y).mean()), float((b.argmax(1) == y).mean())) + 0.02


def test_fusion_params_from_pool_round_trip() -> None:
    pool = PoolParams([1.0, 2.0], [0.0, 0.5], [[0.1, 0.0], [0.0, -0.1]], kind="weights+bias+class")
    fp = FusionParams.from_json(FusionParams.from_pool(pool, ["text", "image"]).to_json())
    t, i = np.array([0.3, 0.7]), np.array([0.6, 0.4])
    np.testing.assert_allclose(Ensemble({"c": {"both": fp}}).fuse("c", t, i)[0], pool.apply([t, i]), rtol=1e-12)
    assert fp.kind == "weights+bias+class"
    assert PoolParams.from_json(pool.to_json()) == pool
