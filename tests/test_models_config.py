"""TrainConfig: every training option declared once, used by train_command, its docstring and the demo."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from models.train import DEMO_CONFIG, train_command
from models.training.config import TrainConfig, flag_help, options


def test_every_option_has_help_and_appears_in_the_docstring() -> None:
    doc = inspect.getdoc(train_command) or ""
    for o in options():
        assert o.help.strip(), o.name
        assert o.flag in doc, o.flag
    assert "{FLAGS}" not in doc
    assert "--attribute TEXT (repeatable)" in flag_help() and "--linear-text/--no-linear-text" in flag_help()


def test_unknown_and_invalid_options_are_refused() -> None:
    with pytest.raises(TypeError):
        TrainConfig(epochz=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        train_command(catalog=["x"], out="y", epochz=3)
    for bad in ({"image_augment": -1}, {"split": "random"}, {"select_by": "f1"}, {"split_years": "2016,2013"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)  # type: ignore[arg-type]


def test_demo_config_is_a_train_config_and_replace_keeps_the_rest() -> None:
    cfg = TrainConfig(**DEMO_CONFIG)
    assert cfg.image_size == 128 and cfg.epochs == 6
    again = cfg.replace(epochs=2)
    assert again.epochs == 2 and again.image_size == 128 and cfg.epochs == 6
    assert set(cfg.to_json()) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_backbone_registry_builds_by_name_and_refuses_unknown_or_duplicate_names() -> None:
    from models.image_model import BACKBONES, build_backbone, register_backbone

    assert set(BACKBONES) >= {"tiny", "efficientnet-lite0", "resnet50"}
    assert build_backbone("tiny", pretrained=False).name == "tiny"
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg-nope")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny", lambda pretrained, top_blocks, weights: build_backbone("tiny"))


def test_one_set_of_missing_label_values() -> None:
    from models.catalog import kaggle
    from models.taxonomy import MISSING_VALUES, Taxonomy

    assert kaggle.MISSING_VALUES is MISSING_VALUES and {"unknown", "-", "na", ""} <= MISSING_VALUES
    tax = Taxonomy.build([{"color": "Red"}, {"color": "Blue"}] * 3, ["color"], min_count=1)
    assert tax.attributes["color"].encode("Unknown") == -1 and tax.attributes["color"].encode("NA") == -1
