"""A short real training run on tiny data: the loss goes down, the bundle loads, evaluation reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from models.bundle import Bundle
from models.catalog.synthetic import generate_catalog
from models.evaluate import evaluate_command, format_against
from models.testing import tiny_bert_dir
from models.train import train_command
from models.verify import reseal_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("train")
    styles = generate_catalog(tmp / "cat", n_products=120, seed=3, image_size=64)
    enc = tiny_bert_dir(tmp / "bert")
    kw = dict(catalog=[str(styles)], out=str(tmp / "bundle"), image_backbone="tiny", image_size=32,
              text_encoder=str(enc), text_train_layers=1, text_max_len=32, wide_buckets=1 << 10,
              batch_size=16, lr=3e-3, trunk_lr=1e-3, min_class_count=3, progress=False, threads=1, seed=1)
    train_command(**kw, epochs=2)  # then resume from its checkpoint for the remaining epochs, on augmented photos
    summary = train_command(**kw, epochs=5, image_augment=2)
    return styles, tmp / "bundle", summary


def test_training_lowers_the_loss_and_resumes(trained: tuple[Path, Path, dict]) -> None:
    _, bundle, summary = trained
    manifest = json.loads((bundle / "manifest.json").read_text())
    hist = manifest["training"]["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3, 4]  # epochs 0-1 from the first run, 2-4 resumed
    # the resumed epochs saw each training photo as one of 3 versions (2 augmented copies cached once)
    assert [h["image_augment"] for h in hist] == [0, 0, 2, 2, 2]
    assert manifest["training"]["image_augment"]["copies"] == 2
    cache = bundle.parent / "bundle.work" / "cache"
    features = [f for f in cache.iterdir() if re.fullmatch(r"image-[0-9a-f]{16}\.npy", f.name)]
    # train, val, the 2 augmented copies of train, its letterboxed 3:4 copy (--image-shape-views) and the two
    # shifted folds of val (--shift-folds squash,letterbox)
    assert len(features) == 7
    assert manifest["photo_shapes"] == {"trained": ["letterbox"], "shift_folds": ["squash", "letterbox"]}
    # the synthetic catalogue spreads its years over 2011-2018: about half of the validation products are from
    # years outside the common ones of the training photos, and every fusion fit is judged on them as a group
    yf = manifest["year_fold"]
    assert yf["common_years"] and 0 < yf["rare_year_products"] < yf["val_products"]
    # (this catalogue has too few validation photos for fitted image modes; tests/test_models_year_fold.py
    # checks the grouping of photo rows) the text-only fits are not grouped by year: rare is rare among photos
    assert not any("rare-year" in key for mode in manifest["metrics"]["validation"]["article_type"].values()
                   if isinstance(mode, dict) for cv in mode.get("cv", {}).values() for key in cv)
    for kind in ("text", "image"):
        assert hist[-1]["train_loss"][kind] < hist[0]["train_loss"][kind]
        assert min(h[f"val_loss_{kind}"] for h in hist) < hist[0][f"val_loss_{kind}"]
    assert "pattern" in summary["attributes"] and "color" in summary["attributes"]
    # colour words are in most titles: the bundle also has fusion modes for titles that name no colour
    assert "black" in manifest["mention_words"]["color"]
    assert set(manifest["thresholds"]["color"]) == {"both", "text", "image", "both-unmentioned", "text-unmentioned"}
    assert set(manifest["fusion"]["color"]) == set(manifest["thresholds"]["color"])
    assert manifest["fusion"]["color"]["text-unmentioned"] == manifest["fusion"]["color"]["text"]  # own threshold only
    assert set(manifest["mention_words"]) == {"color"}  # the default: colour, a closed vocabulary
    assert manifest["split"]["seed"] == 1
    # the wide TF-IDF text model travels in the bundle (JSON + safetensors) and is pooled into the served text
    assert manifest["wide"]["json"] == "wide.json" and (bundle / "wide.safetensors").is_file()
    assert set(manifest["text_fusion"]) >= {"sources", "color"}
    assert all(p["kind"] for p in manifest["fusion"]["color"].values())  # which pool each mode chose


def test_bundle_serves_and_evaluates(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    styles, bundle, _ = trained
    b = Bundle.load(bundle, device="cpu")
    assert b.attributes == json.loads((bundle / "manifest.json").read_text())["attributes"]
    report = evaluate_command(bundle=str(bundle), catalog=str(styles), json_out=str(tmp_path / "r.json"),
                              progress=False, baseline=True)
    assert report["catalog"]["split"] == "test"
    for attr, mods in report["attributes"].items():
        assert attr in b.attributes
        for m in ("image", "text", "ensemble", "guarded"):
            r = mods[m]
            assert {"n", "accuracy", "macro_f1", "precision", "coverage"} <= set(r)
            assert all(0.0 <= r[k] <= 1.0 for k in ("accuracy", "macro_f1", "precision", "coverage"))
    assert json.loads((tmp_path / "r.json").read_text())["bundle"]["version"] == b.version
    assert b.wide is not None
    assert set(report["components"]["color"]) == {"text_bert", "text_wide"}
    cmp = report["comparisons"]["color"]
    assert set(cmp) == {"ensemble_vs_text", "ensemble_vs_tfidf_logreg", "ensemble_vs_image_with_image",
                        "ensemble_vs_text_with_image", "guarded_vs_text", "guarded_vs_ensemble",
                        "guarded_vs_image_with_image"}
    assert cmp["ensemble_vs_text"]["n"] == report["attributes"]["color"]["ensemble"]["n"]
    assert 0.0 < cmp["ensemble_vs_text"]["p_value"] <= 1.0
    unm = report["subsets"]["unmentioned_with_image"]["attributes"]["color"]["ensemble"]
    assert unm["n"] <= report["subsets"]["with_image"]["attributes"]["color"]["ensemble"]["n"]
    assert (tmp_path / "r_plots" / "color_confusion.png").is_file()
    assert (tmp_path / "r_plots" / "color_precision_coverage.png").is_file()


def test_evaluate_other_catalog_with_missing_and_odd_photos(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    _styles, bundle, _ = trained
    other = generate_catalog(tmp_path / "other", n_products=30, seed=11, image_size=90)  # another shape/size
    imgs = sorted((other.parent / "images").glob("*.jpg"))
    imgs[0].unlink()  # a product whose photo is missing
    imgs[1].write_bytes(b"not a jpeg")  # and one whose photo is broken
    report = evaluate_command(bundle=str(bundle), catalog=str(other), progress=False, baseline=False,
                              strip_color_words=True)
    assert report["catalog"]["split"] == "all" and report["catalog"]["rows"] == 30
    r = report["attributes"]["color"]
    assert r["image"]["n_input"] < r["text"]["n_input"] == r["ensemble"]["n_input"]
    assert r["image"]["coverage"] <= r["image"]["n_input"] / r["image"]["n"] + 1e-9


def test_cli_evaluate_one_attribute_without_colour_words(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    """`enrich evaluate --attribute color --strip-color-words --json F` (the colour check of docs/models.md)."""
    from typer.testing import CliRunner

    from consumer.cli import app

    styles, bundle, _ = trained
    out = tmp_path / "color.json"
    result = CliRunner().invoke(app, ["evaluate", "--bundle", str(bundle), "--catalog", str(styles), "--attribute",
                                      "color", "--strip-color-words", "--no-baseline", "--no-progress", "--json",
                                      str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert list(report["attributes"]) == ["color"]
    assert set(report["attributes"]["color"]) >= {"image", "text", "ensemble"}
    # the terminal gets the tables, not only the JSON file
    ens = report["attributes"]["color"]["ensemble"]["accuracy"]
    assert "| attribute | image acc % | text acc % | ensemble acc % |" in result.output
    assert f"| color | {100 * report['attributes']['color']['image']['accuracy']:.2f} |" in result.output
    assert f"{100 * ens:.2f}" in result.output and "rows with a photo:" in result.output
    assert "drift guard (catalog order, watching " in result.output  # what a guarded consumer would switch
    assert f"report: {out}" in result.output


def _photo_only_copy(bundle: Path, out: Path, split_seed: int | None = None) -> Path:
    """A copy of ``bundle`` whose colour ensemble, given a photo, answers what its image model alone answers
    (text weight 0 on top of the image-only calibration); without a photo it is unchanged."""
    import shutil

    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    fusion = manifest["fusion"]["color"]
    photo_only = {**fusion["image"], "text_weight": 0.0, "text_class_weights": None, "kind": "test:image"}
    photo_only = {k: v for k, v in photo_only.items() if v is not None or k == "bias"}
    for mode in ("both", "both-unmentioned"):
        fusion[mode] = photo_only
    if split_seed is not None:
        manifest["split"]["seed"] = split_seed
    (out / "manifest.json").write_text(json.dumps(manifest))
    reseal_bundle(out)  # a deliberate edit: its own version (Bundle.load refuses a manifest that lies)
    return out


def test_evaluate_against_another_bundle(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    """`--against`: the same rows through a second bundle, and the paired count of who is right where."""
    styles, bundle, _ = trained
    same = evaluate_command(bundle=str(bundle), catalog=str(styles), progress=False, baseline=False,
                            attributes=["color", "gender"], against=str(bundle))
    assert same["against"]["same_split"] is True
    for r in same["against"]["attributes"].values():  # a bundle against itself: the same answers everywhere
        assert (r["a_only_right"], r["b_only_right"], r["p_value"]) == (0, 0, 1.0)
        assert r["accuracy_a"] == r["accuracy_b"]

    other = _photo_only_copy(bundle, tmp_path / "photo-only")
    report = evaluate_command(bundle=str(bundle), catalog=str(styles), progress=False, baseline=False,
                              attributes=["color"], against=str(other))
    got = report["against"]["attributes"]["color"]
    # where the copy answers from the photo alone, the comparison is "ensemble vs image, with a photo"
    expected = report["comparisons"]["color"]["ensemble_vs_image_with_image"]
    assert (got["a_only_right"], got["b_only_right"]) == (expected["a_only_right"], expected["b_only_right"])
    assert got["n"] == report["attributes"]["color"]["ensemble"]["n"]
    assert got["accuracy_a"] == pytest.approx(report["attributes"]["color"]["ensemble"]["accuracy"])
    assert got["with_image"]["n"] == report["subsets"]["with_image"]["attributes"]["color"]["ensemble"]["n"]
    assert got["with_image"]["accuracy_b"] == pytest.approx(
        report["subsets"]["with_image"]["attributes"]["color"]["image"]["accuracy"])
    assert got["a_only_right"] + got["b_only_right"] > 0  # the copy really answers differently

    table = format_against(report)  # what `enrich evaluate --against` prints
    assert all(f"| color | {m} | " in table for m in ("ensemble", "image", "text"))
    # the single models are the same in the copy (only its fusion differs): 0 products apart on each
    for m in ("image", "text"):
        assert got["modalities"][m]["a_only_right"] == got["modalities"][m]["b_only_right"] == 0
    img = report["subsets"]["with_image"]["attributes"]["color"]["image"]
    assert got["modalities"]["image"]["n"] == img["n_input"]
    assert got["modalities"]["image"]["accuracy_a"] == pytest.approx(img["accuracy"])

    biased = _photo_only_copy(bundle, tmp_path / "always-first")  # its image model always answers class 0
    manifest = json.loads((biased / "manifest.json").read_text())
    n_cls = len(manifest["taxonomy"]["attributes"]["color"]["values"])
    manifest["fusion"]["color"]["image"]["bias"] = [1000.0] + [0.0] * (n_cls - 1)
    (biased / "manifest.json").write_text(json.dumps(manifest))
    reseal_bundle(biased)
    vs_biased = evaluate_command(bundle=str(bundle), catalog=str(styles), progress=False, baseline=False,
                                 attributes=["color"], against=str(biased))["against"]["attributes"]["color"]
    alone = evaluate_command(bundle=str(biased), catalog=str(styles), progress=False, baseline=False,
                             attributes=["color"])["subsets"]["with_image"]["attributes"]["color"]["image"]
    assert vs_biased["modalities"]["image"]["accuracy_b"] == pytest.approx(alone["accuracy"])
    assert vs_biased["modalities"]["image"]["accuracy_b"] < vs_biased["modalities"]["image"]["accuracy_a"]
    assert vs_biased["modalities"]["image"]["a_only_right"] > 0
    assert vs_biased["modalities"]["text"]["a_only_right"] == vs_biased["modalities"]["text"]["b_only_right"] == 0

    shifted = _photo_only_copy(bundle, tmp_path / "other-split", split_seed=99)
    warned = evaluate_command(bundle=str(bundle), catalog=str(styles), progress=False, baseline=False,
                              attributes=["color"], against=str(shifted))
    assert warned["against"]["same_split"] is False


def test_the_title_baseline_reads_the_titles_as_they_are(trained: tuple[Path, Path, dict]) -> None:
    """Regression: the per-attribute loop reused the name of the stripped-words set, so the TF-IDF baseline
    was fitted on titles without the *last* attribute's value words (colour words, with --attribute color)
    even without --strip-color-words."""
    import numpy as np

    from models.baseline import fit_predict, score
    from models.data import read_catalog

    styles, bundle, _ = trained
    b = Bundle.load(bundle, device="cpu")
    report = evaluate_command(bundle=str(bundle), catalog=str(styles), progress=False, attributes=["color"])
    products = read_catalog(styles)
    spec, att = b.spec.split, b.taxonomy.attributes["color"]
    train = [p for p in products if spec.of(p.id, p.year) == "train"]
    test = [p for p in products if spec.of(p.id, p.year) == "test"]
    pred = fit_predict([p.title for p in train], np.array([att.encode(p.labels.get("color")) for p in train]),
                       [p.title for p in test])
    want = score(pred, np.array([att.encode(p.labels.get("color")) for p in test]))
    assert report["baselines"]["tfidf_logreg"]["color"]["accuracy"] == pytest.approx(want["accuracy"])
