"""`enrich add-heads`: a new attribute's heads on a trained bundle's frozen trunks, the old answers unchanged.

The base bundle is trained by the real `enrich train` code path on a synthetic catalog *without* its pattern
column; the new attribute is that column renamed ``motif`` (not a Kaggle column, so it is read as an extra
label column), which the trunks never saw during training.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from consumer.cli import app
from models.bundle import Bundle
from models.catalog.synthetic import generate_catalog
from models.evaluate import evaluate_command
from models.heads import add_heads_command
from models.testing import tiny_bert_dir
from models.train import train_command

OLD = ["color", "article_type", "gender"]


def _with_motif(styles: Path, photos: bool = True) -> Path:
    """The catalog with its ``pattern`` column renamed ``motif`` (written next to it, same photos or none)."""
    out = styles.with_name("styles_motif.csv" if photos else "styles_motif_text_only.csv")
    with styles.open(newline="") as f:
        rows = list(csv.DictReader(f))
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, [("motif" if c == "pattern" else c) for c in rows[0]])
        w.writeheader()
        for r in rows:
            renamed = {("motif" if k == "pattern" else k): v for k, v in r.items()}
            w.writerow(renamed if photos else renamed | {"image": ""})
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("heads")
    styles = generate_catalog(tmp / "cat", n_products=480, seed=5, image_size=64)
    train_command(catalog=[str(styles)], out=str(tmp / "base"), attributes=OLD, image_backbone="tiny",
                  image_size=32, text_encoder=str(tiny_bert_dir(tmp / "bert")), text_train_layers=1, text_max_len=32,
                  wide_buckets=1 << 10, batch_size=16, lr=3e-3, trunk_lr=1e-3, min_class_count=3, epochs=3,
                  progress=False, threads=1, seed=2, work_dir=str(tmp / "work"))
    return _with_motif(styles), tmp / "base", tmp / "work"


@pytest.fixture(scope="module")
def added(base: tuple[Path, Path, Path]) -> tuple[Path, dict]:
    styles, bundle, work = base
    out = bundle.with_name("with-motif")
    cached = sorted((work / "cache").iterdir())
    summary = add_heads_command(bundle=str(bundle), catalog=str(styles), out=str(out), attributes=["motif"],
                                min_class_count=3, work_dir=str(work), progress=False, threads=1)
    assert sorted((work / "cache").iterdir()) == cached  # the training run's frozen-bottom caches were reused
    return out, summary


def test_new_heads_leave_every_old_answer_unchanged(base: tuple[Path, Path, Path], added: tuple[Path, dict]) -> None:
    styles, bundle, _ = base
    out, summary = added
    old_m = json.loads((bundle / "manifest.json").read_text())
    new_m = json.loads((out / "manifest.json").read_text())
    assert new_m["attributes"] == [*old_m["attributes"], "motif"]
    assert {"checked", "solid", "striped"} <= set(new_m["taxonomy"]["attributes"]["motif"]["values"])
    for key in ("fusion", "thresholds"):
        assert {a: new_m[key][a] for a in OLD} == {a: old_m[key][a] for a in OLD}
        assert "motif" in new_m[key]
    assert {a: new_m["text_fusion"][a] for a in OLD} == {a: old_m["text_fusion"][a] for a in OLD}
    assert new_m["mention_words"] == old_m["mention_words"]
    assert new_m["heads_added"][0]["base"]["version"] == old_m["version"] == summary["base_version"]
    assert new_m["version"] != old_m["version"]
    # every tensor of the base bundle is in the new one, bit for bit; the new heads are the only additions
    old_w, new_w = load_file(str(bundle / "weights.safetensors")), load_file(str(out / "weights.safetensors"))
    assert all(torch.equal(old_w[k], new_w[k]) for k in old_w)
    assert sorted(set(new_w) - set(old_w)) == [f"{m}.heads.motif.{p}" for m in ("image", "text")
                                                for p in ("bias", "weight")]
    # served answers for the old attributes are identical, through the whole serving path
    a, b = Bundle.load(bundle, device="cpu"), Bundle.load(out, device="cpu")
    with styles.open(newline="") as f:
        rows = list(csv.DictReader(f))[:12]
    texts = [a.text_input(r["productDisplayName"], r["description"], r["brand"]) for r in rows]
    views = [a.image_views(Image.open(styles.parent / r["image"]).convert("RGB")) for r in rows]
    for t, tp_a, tp_b, ip_a, ip_b in zip(texts, a.predict_texts(texts), b.predict_texts(texts),
                                         a.predict_images(views), b.predict_images(views), strict=True):
        pa, pb = a.combine(tp_a, [ip_a], text=t), b.combine(tp_b, [ip_b], text=t)
        assert set(pb) == {*OLD, "motif"}
        for attr in OLD:
            assert pa[attr].value == pb[attr].value
            assert pa[attr].confidence == pytest.approx(pb[attr].confidence, abs=1e-9)


def test_the_new_attribute_is_learnt_and_evaluated(base: tuple[Path, Path, Path], added: tuple[Path, dict],
                                                   tmp_path: Path) -> None:
    styles, _, _ = base
    out, summary = added
    heads = summary["heads"]["motif"]
    assert set(heads) == {"image", "text"} and heads["text"]["rows"] > 100
    # evaluate reads the extra column too, on the bundle's held-out test split
    report = evaluate_command(bundle=str(out), catalog=str(styles), attributes=["motif"], progress=False,
                              json_out=str(tmp_path / "r.json"))
    assert report["catalog"]["split"] == "test"
    ens = report["attributes"]["motif"]["ensemble"]
    labels = [r["motif"].lower() for r in csv.DictReader(styles.open(newline=""))]
    majority = max(np.unique(labels, return_counts=True)[1]) / len(labels)
    assert ens["n"] > 5 and ens["accuracy"] > majority + 0.2  # the titles and descriptions name the pattern


def test_add_heads_refuses_what_it_cannot_do_cleanly(base: tuple[Path, Path, Path], tmp_path: Path) -> None:
    styles, bundle, work = base
    kw = dict(bundle=str(bundle), catalog=str(styles), min_class_count=3, work_dir=str(work), progress=False)
    with pytest.raises(ValueError, match="already has color; pass --replace"):
        add_heads_command(**kw, out=str(tmp_path / "x"), attributes=["color"])
    with pytest.raises(ValueError, match="sleeve_length: fewer than two values"):
        add_heads_command(**kw, out=str(tmp_path / "x"), attributes=["sleeve_length"])
    with pytest.raises(ValueError, match="lowercase snake_case"):
        add_heads_command(**kw, out=str(tmp_path / "x"), attributes=["Sleeve Length"])
    with pytest.raises(ValueError, match="lowercase snake_case"):  # enrich train checks its extra columns too
        train_command(catalog=[str(styles)], out=str(tmp_path / "t"), attributes=["color", "Sleeve Length"])
    with pytest.raises(ValueError, match="--out must differ from --bundle"):
        add_heads_command(**kw, out=str(bundle), attributes=["motif"])
    # labels only on products with neither a text nor a photo: nothing to train on
    blind = tmp_path / "blind.csv"
    with styles.open(newline="") as f:
        rows = list(csv.DictReader(f))
    with blind.open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        for i, r in enumerate(rows):
            empty = {"productDisplayName": "", "description": "", "brand": "", "image": ""}
            w.writerow(r | empty if i % 2 else r | {"motif": ""})
    with pytest.raises(ValueError, match="motif: no product with a text or a photo"):
        add_heads_command(**{**kw, "catalog": str(blind)}, out=str(tmp_path / "x"), attributes=["motif"])
    result = CliRunner().invoke(app, ["add-heads", "--bundle", str(bundle), "--catalog", str(styles), "--out",
                                      str(tmp_path / "y"), "--attribute", "gender", "--no-progress"])
    assert result.exit_code == 2 and "already has gender" in result.output
    assert not (tmp_path / "y" / "manifest.json").exists()


def test_replace_retrains_one_head_and_keeps_the_others(base: tuple[Path, Path, Path], tmp_path: Path) -> None:
    styles, bundle, work = base
    out = tmp_path / "recoloured"
    summary = add_heads_command(bundle=str(bundle), catalog=str(styles), out=str(out), attributes=["color"],
                                replace=True, mention_fusion="color", min_class_count=3, work_dir=str(work),
                                progress=False, threads=1)
    assert summary["replaced"] == ["color"]
    cli = CliRunner().invoke(app, ["add-heads", "--bundle", str(bundle), "--catalog", str(styles), "--out",
                                   str(tmp_path / "cli"), "--attribute", "gender", "--replace", "--min-class-count",
                                   "3", "--work-dir", str(work), "--no-progress", "--threads", "1"])
    assert cli.exit_code == 0, cli.output
    assert "gender" in cli.output and "validation accuracy" in cli.output and "added gender" in cli.output
    old_m = json.loads((bundle / "manifest.json").read_text())
    new_m = json.loads((out / "manifest.json").read_text())
    assert new_m["attributes"] == old_m["attributes"]  # same order: the head is swapped in place
    assert {a: new_m["fusion"][a] for a in OLD[1:]} == {a: old_m["fusion"][a] for a in OLD[1:]}
    assert "text-unmentioned" in new_m["fusion"]["color"] and new_m["mention_words"]["color"]
    old_w, new_w = load_file(str(bundle / "weights.safetensors")), load_file(str(out / "weights.safetensors"))
    assert set(old_w) == set(new_w)
    assert not torch.equal(old_w["text.heads.color.weight"], new_w["text.heads.color.weight"])
    assert torch.equal(old_w["text.heads.gender.weight"], new_w["text.heads.gender.weight"])


def test_a_catalog_without_photos_adds_no_image_head(base: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """No image head rather than an untrained one: the new attribute is then served from the text alone."""
    styles, bundle, work = base
    text_only = _with_motif(styles.with_name("styles.csv"), photos=False)
    out = tmp_path / "text-only-motif"
    summary = add_heads_command(bundle=str(bundle), catalog=str(text_only), out=str(out), attributes=["motif"],
                                min_class_count=3, work_dir=str(work), progress=False, threads=1)
    assert "no image head" in summary["heads"]["motif"]["image"]["note"]
    m = json.loads((out / "manifest.json").read_text())
    assert "motif" not in m["image"]["num_classes"] and "motif" in m["text"]["num_classes"]
    b = Bundle.load(out, device="cpu")
    row = next(csv.DictReader(styles.open(newline="")))
    text = b.text_input(row["productDisplayName"], row["description"], row["brand"])
    views = b.image_views(Image.open(styles.parent / row["image"]).convert("RGB"))
    pred = b.combine(b.predict_texts([text])[0], b.predict_images([views]), text=text)
    assert pred["motif"].image is None and pred["motif"].text is not None
    assert pred["color"].image is not None  # the old image heads still serve
