"""Bundle save/load round trip (CPU, no pickles) and the ensemble with a missing modality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.bundle import Bundle, save_bundle
from models.ensemble import Ensemble, FusionParams, choose_threshold, fit_pool
from models.image_model import ImagePreprocess, MultiTaskImageModel, build_backbone
from models.taxonomy import Taxonomy
from models.testing import tiny_bert_dir
from models.text_model import MultiTaskTextModel, load_encoder


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bundle")
    enc = tiny_bert_dir(tmp / "bert")
    rows = [{"color": c, "gender": g} for c in ("Black", "Blue", "Red") for g in ("Men", "Women")] * 3
    tax = Taxonomy.build(rows, ["color", "gender"], min_count=1)
    torch.manual_seed(0)
    image = MultiTaskImageModel(build_backbone("tiny"), tax.num_classes(), hidden=16)
    text = MultiTaskTextModel(load_encoder(enc), tax.num_classes(), train_layers=1, hidden=16, wide_buckets=64,
                              wide_dim=8)
    ens = Ensemble({a: {"both": FusionParams(1.0, 2.0, None)} for a in tax.names})
    thr = {a: {"both": 0.2, "text": 0.3, "image": 0.99} for a in tax.names}
    save_bundle(tmp / "b", name="t", taxonomy=tax, image_model=image, image_preprocess=ImagePreprocess(size=32),
                image_backbone={"name": "tiny", "top_blocks": 1}, text_model=text, encoder_dir=enc, text_max_len=16,
                ensemble=ens, thresholds=thr, metrics={})
    image.eval()
    text.eval()
    return tmp / "b"


def _photo(w: int, h: int, rgb: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), rgb)


def test_round_trip_is_pickle_free_and_versioned(bundle_dir: Path) -> None:
    files = sorted(p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file())
    assert all(f.endswith((".json", ".safetensors", ".txt")) for f in files), files
    a, b = Bundle.load(bundle_dir, device="cpu"), Bundle.load(bundle_dir, device="cpu")
    assert a.version == b.version == json.loads((bundle_dir / "manifest.json").read_text())["version"]
    assert a.attributes == ["color", "gender"] and a.name == "t"
    assert a.image_decode_size == (64, 64)
    texts = ["Men Black Shirt", "Red dress for women"]
    ta, tb = a.predict_texts(texts), b.predict_texts(texts)
    for x, y in zip(ta, tb, strict=True):
        for k in x:
            np.testing.assert_allclose(x[k], y[k], rtol=1e-6)
            assert x[k].shape == (len(a.labels[k]),) and abs(float(x[k].sum()) - 1) < 1e-5
    views = [a.image_views(_photo(90, 120)), a.image_views(_photo(640, 480)), a.image_views(_photo(7, 3))]
    assert all(v.shape == (2, 3, 32, 32) for v in views)
    ia, ib = a.predict_images(views), b.predict_images(views)
    np.testing.assert_allclose(ia[0]["color"], ib[0]["color"], rtol=1e-6)


def test_round_trip_matches_the_trained_model(bundle_dir: Path) -> None:
    b = Bundle.load(bundle_dir, device="cpu")
    from safetensors.torch import load_file

    tensors = load_file(str(bundle_dir / "weights.safetensors"))
    assert any(k.startswith("image.heads.color") for k in tensors)
    assert any(k.startswith("text.encoder.") for k in tensors)
    enc = b.tokenizer(["Men Black Shirt"], return_tensors="pt")
    assert b.text_model is not None
    with torch.inference_mode():
        masked = b.text_model(enc["input_ids"], enc["attention_mask"], *_wide(b, ["Men Black Shirt"]))
        padded_ids = torch.cat([enc["input_ids"], torch.zeros(1, 5, dtype=torch.long)], 1)
        padded_mask = torch.cat([enc["attention_mask"], torch.zeros(1, 5, dtype=torch.long)], 1)
        padded = b.text_model(padded_ids, padded_mask, *_wide(b, ["Men Black Shirt"]))
    # the attention mask is honoured: padding does not change the prediction
    torch.testing.assert_close(masked["color"], padded["color"], rtol=1e-4, atol=1e-5)


def _wide(b: Bundle, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from models.text_model import wide_batch

    assert b.text_model is not None
    return wide_batch(texts, b.text_model.wide_buckets)


def test_combine_with_missing_modalities(bundle_dir: Path) -> None:
    b = Bundle.load(bundle_dir, device="cpu")
    tp = b.predict_texts([b.text_input("<b>Men</b> Black Shirt", "", "")])[0]
    ip = b.predict_images([b.image_views(_photo(50, 80)), b.image_views(_photo(80, 50, (0, 0, 0)))])
    both = b.combine(tp, ip)
    text_only = b.combine(tp, [])
    image_only = b.combine(b.predict_texts([""])[0], ip[:1])
    nothing = b.combine(None, [])
    for preds in (both, text_only, image_only, nothing):
        assert set(preds) == {"color", "gender"}
        for p in preds.values():
            j = p.to_json()
            assert set(j) == {"value", "confidence", "threshold", "evidence"}
            assert set(j["evidence"]) == {"image", "text"}
            assert 0.0 <= j["confidence"] <= 1.0
            assert j["value"] is None or j["confidence"] >= j["threshold"]
    assert text_only["color"].to_json()["evidence"]["image"] is None
    assert text_only["color"].threshold == 0.3
    assert image_only["color"].to_json()["evidence"]["text"] is None
    assert image_only["color"].value is None  # image threshold 0.99 is not reached by a random model
    assert nothing["color"].value is None and nothing["color"].to_json()["evidence"] == {"image": None, "text": None}
    # several images: their probabilities are averaged
    avg = (ip[0]["color"] + ip[1]["color"]) / 2
    assert both["color"].image is not None
    assert both["color"].image[1] == pytest.approx(float(avg.max()), rel=1e-6)


def test_fusion_learns_to_trust_the_informative_modality() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.full((300, 3), 0.1)
    good[np.arange(300), y] = 0.8
    noise = rng.dirichlet(np.ones(3), 300)
    p = FusionParams.from_pool(fit_pool([np.log(noise), np.log(good)], y, fit_bias=True, per_class=False,
                                        l2=1e-3), ["text", "image"])
    assert p.image_weight > p.text_weight
    thr = choose_threshold(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1.0, 1.0, 0.0, 0.0]), 0.9, min_support=1)
    assert thr == 0.8


def test_new_head_on_a_trained_trunk(bundle_dir: Path) -> None:
    b = Bundle.load(bundle_dir, device="cpu")
    assert b.image_model is not None and b.text_model is not None
    b.image_model.add_head("pattern", 4)
    b.text_model.add_head("pattern", 4)
    with pytest.raises(ValueError):
        b.image_model.add_head("pattern", 4)
    with torch.inference_mode():
        out = b.image_model(b.image_views(_photo(40, 40)).unsqueeze(0))
    assert out["pattern"].shape == (1, 4) and out["color"].shape == (1, 3)
