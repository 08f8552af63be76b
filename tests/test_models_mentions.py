"""Texts that name none of an attribute's values: detection, the ``-unmentioned`` fusion modes, serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.bundle import Bundle, save_bundle
from models.ensemble import UNMENTIONED, Ensemble, FusionParams, fit_mode
from models.image_model import ImagePreprocess, MultiTaskImageModel, build_backbone
from models.taxonomy import Taxonomy
from models.testing import tiny_bert_dir
from models.text_clean import mentions, remove_words
from models.text_model import MultiTaskTextModel, load_encoder


def _taxonomy() -> Taxonomy:
    rows = [{"color": c, "gender": g} for c in ("Black", "Navy Blue", "Grey") for g in ("Men", "Women")] * 3
    return Taxonomy.build(rows, ["color", "gender"], min_count=1)


def test_value_words_cover_values_and_vendor_synonyms() -> None:
    words = _taxonomy().value_words("color")
    assert {"black", "navy", "blue", "grey", "gray"} <= words  # values, split into words, and synonyms
    assert "other" not in words
    assert {"men", "women", "male", "ladies"} <= _taxonomy().value_words("gender")


def test_mentions_matches_whole_words_case_insensitively() -> None:
    words = _taxonomy().value_words("color")
    assert mentions("Turtle Check Men NAVY Shirt", words)
    assert mentions("Peter England Men Party Grey Jeans . Peter England", words)
    assert not mentions("Nike Air Max 90 Running Shoe", words)
    assert not mentions("Blackberrys Men Shirt", words)  # a brand containing a colour is not a colour word
    assert not mentions("", words) and not mentions("Black shirt", set())
    stripped = remove_words("Men Navy Blue Shirt", words)
    assert stripped == "Men Shirt" and not mentions(stripped, words)


def test_unmentioned_mode_learns_to_trust_the_photo() -> None:
    """Where the title names the colour the text is right 95% of the time; stripped of it, 30% (a guess
    from the product type); the photo is right 65% of the time in both cases. The plain ``both`` fusion learns
    to lean on the text, the ``both-unmentioned`` one on the photo, and each beats the other on its rows."""
    rng = np.random.default_rng(0)
    n, k = 1200, 6

    def source(y: np.ndarray, right: float, sharp: float) -> np.ndarray:
        ok = rng.random(len(y)) < right
        hit = np.where(ok, y, (y + rng.integers(1, k, len(y))) % k)
        p = rng.dirichlet(np.ones(k), len(y))
        p[np.arange(len(y)), hit] += sharp
        return p / p.sum(1, keepdims=True)

    y = rng.integers(0, k, n)
    image = source(y, 0.65, 1.5)
    text_named, text_stripped = source(y, 0.95, 3.0), source(y, 0.30, 3.0)  # stripped: still over-confident
    both, _, m_both = fit_mode({"text": text_named, "image": image}, y, 0.9)
    unm, _, m_unm = fit_mode({"text": text_stripped, "image": image}, y, 0.9)
    assert unm.image_weight / max(unm.text_weight, 1e-6) > both.image_weight / max(both.text_weight, 1e-6)
    assert m_unm["accuracy"] > 0.6 and m_both["accuracy"] > 0.9

    yt = rng.integers(0, k, n)
    img_t, stripped_t = source(yt, 0.65, 1.5), source(yt, 0.30, 3.0)
    ens = Ensemble({"color": {"both": both, "both" + UNMENTIONED: unm}})
    acc = {}
    for mentioned in (True, False):
        pred = [ens.fuse("color", stripped_t[i], img_t[i], mentioned)[0].argmax() for i in range(n)]
        acc[mentioned] = float((np.array(pred) == yt).mean())
    assert acc[False] > acc[True] + 0.1, acc  # on unmentioned texts, the photo-trusting fusion wins
    assert acc[False] > float((img_t.argmax(1) == yt).mean()) - 0.02  # and is no worse than the photo alone


def test_fuse_picks_the_unmentioned_mode_only_when_the_bundle_has_one() -> None:
    t, i = np.array([0.8, 0.2]), np.array([0.3, 0.7])
    ens = Ensemble({"c": {"both": FusionParams(1.0, 0.1), "both" + UNMENTIONED: FusionParams(0.1, 1.0),
                          "text": FusionParams(1.0, 1.0)}})
    assert ens.fuse("c", t, i, mentioned=True)[1] == "both"
    fused, mode = ens.fuse("c", t, i, mentioned=False)
    assert mode == "both-unmentioned" and fused.argmax() == 1
    assert ens.fuse("c", t, None, mentioned=False)[1] == "text"  # no text-unmentioned: the plain mode
    assert ens.fuse("c", None, i, mentioned=False)[1] == "image"  # no text at all: nothing to be unmentioned


def test_bundle_uses_mention_words_from_its_manifest(tmp_path: Path) -> None:
    tax = _taxonomy()
    enc = tiny_bert_dir(tmp_path / "bert")
    torch.manual_seed(0)
    image = MultiTaskImageModel(build_backbone("tiny"), tax.num_classes(), hidden=16)
    text = MultiTaskTextModel(load_encoder(enc), tax.num_classes(), train_layers=1, hidden=16, wide_buckets=64,
                              wide_dim=8)
    ens = Ensemble({"color": {"both": FusionParams(1.0, 0.0), "both" + UNMENTIONED: FusionParams(0.0, 1.0)}})
    thr = {"color": {"both": 0.1, "text": 0.2, "image": 0.3, "both" + UNMENTIONED: 0.4}}
    words = sorted(tax.value_words("color"))
    save_bundle(tmp_path / "b", name="t", taxonomy=tax, image_model=image, image_preprocess=ImagePreprocess(size=32),
                image_backbone={"name": "tiny", "top_blocks": 1}, text_model=text, encoder_dir=enc, text_max_len=16,
                ensemble=ens, thresholds=thr, metrics={}, extra={"mention_words": {"color": words}})
    b = Bundle.load(tmp_path / "b", device="cpu")
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["mention_words"]["color"] == words
    assert b.mentioned("Men Grey Shirt") == {"color": True}
    assert b.mentioned("Men Shirt") == {"color": False}
    k = len(tax.attributes["color"].values)
    tp = {"color": np.eye(k)[0] * 0.9 + 0.1 / k}  # the text says value 0
    ip = [{"color": np.eye(k)[1] * 0.9 + 0.1 / k}]  # the photo says value 1
    named = b.combine(tp, ip, text="Men Grey Shirt")["color"]
    unnamed = b.combine(tp, ip, text="Men Shirt")["color"]
    labels = tax.attributes["color"].values
    assert named.value == labels[0] and named.threshold == 0.1
    assert unnamed.value == labels[1] and unnamed.threshold == 0.4
    assert b.combine(tp, ip)["color"].value == labels[0]  # no text given: treated as mentioned (old callers)
    assert b.threshold("color", "text" + UNMENTIONED) == 0.2  # no threshold of its own: the plain mode's
